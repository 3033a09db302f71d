"""probe.py: training dynamics measured on a copy of the model, checked against answers worked out by hand."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_same_state, model_state, run_script
from fixtures import probe_models as fx
from model_expert.probe import charts, lr_range, overfit
from model_expert.probe.cli import CAPABILITY

FX = "tests/fixtures/probe_models.py"
AE = "examples/autoencoder.py:ModelAutoEncoder"
# The bundled autoencoder class at a size a 2-core test run affords (the seed's 4096-d config is the bench's).
AE_SMALL = ["--kwargs", json.dumps({"input_dim": 128, "hidden_dims": [64, 32], "embedding_dim": 16, "dropout": 0.0}),
            "--batch-size", "16", "--dim", "input_dim=128"]


def probe(*argv: str) -> dict:
    args = CAPABILITY.parser().parse_args([*argv, "--time-budget-s", "900"])  # a safety net: never reached
    return CAPABILITY.analyse(args)


@pytest.fixture(scope="module")
def least_squares_sgd():
    return probe(f"{FX}:LeastSquares", "--inputs", f"{FX}:least_squares_inputs", "--loss", f"{FX}:least_squares_loss",
                 "--optimizer", "sgd", "--steps", "50", "--sweep-steps", "40")


def test_sgd_breakdown_lr_brackets_the_curvature_limit(least_squares_sgd):
    # Hessian of mean (Xw - y)^2 = (2/N) X^T X = (2/N) diag(S^2): lambda_max = 2 * 4^2 / 64 = 0.5, limit 2/0.5 = 4.
    # Every batch is the same matrix, so this is gradient descent on a quadratic: it breaks down exactly above 4.
    lambda_max = 2 * max(fx.S) ** 2 / fx.N
    limit = 2 / lambda_max
    assert lambda_max == 0.5 and limit == 4.0
    measured = least_squares_sgd["lr_range"]
    assert measured["curvature"]["lambda_max"] == pytest.approx(lambda_max, rel=1e-3)
    assert measured["curvature"]["quadratic_limit_lr"] == pytest.approx(limit, rel=1e-3)
    # real runs bracket it: the largest LR that trains is at most 4, the breakdown above 4, within 2x of each other
    assert measured["largest_stable_lr"] <= limit < measured["breakdown_lr"] <= 2 * measured["largest_stable_lr"]
    assert measured["suggested_lr"] < measured["breakdown_lr"] and not measured["cut_short"]
    assert "line search" in measured["method"] and measured["steps"]["per_trial"] == 100
    assert measured["steps"]["range_test"] == 40 and measured["steps"]["trials"] == len(measured["line_search"]["lrs"])


def test_sgd_momentum_limit_and_fit_one_batch_on_both_sides_of_it():
    # Heavy-ball momentum 0.9: limit 2 (1 + 0.9) / lambda_max = 3.8 / 0.5 = 7.6.
    common = [f"{FX}:LeastSquares", "--inputs", f"{FX}:least_squares_inputs", "--loss", f"{FX}:least_squares_loss",
              "--steps", "60", "--sweep-steps", "12", "--search-steps", "8"]
    momentum = probe(*common, "--optimizer", "sgd-momentum", "--lr", "1")
    assert momentum["lr_range"]["curvature"]["quadratic_limit_lr"] == pytest.approx(7.6, rel=1e-3)
    # Plain SGD at 1.5x the limit 4: the error grows by |1 - 6 * 0.5| = 2 per step along the top direction.
    above = probe(*common, "--optimizer", "sgd", "--lr", "6")
    assert above["overfit"]["verdict"] == "diverges"
    risk = [f for f in above["findings"] if f["check"] == "fit_one_batch"][0]
    assert risk["severity"] == "RISK" and f"step {above['overfit']['diverged_at_step']}" in risk["text"]
    assert "overfit" not in risk["text"]
    # At 1/lambda_max = 2 the slowest direction (S = 0.5: lambda = 2 * 0.25 / 64) contracts by
    # 1 - 2 * 0.0078125 per step: after 60 steps the loss is at most (1 - 1/64)^120 = 0.15 of the start.
    below = probe(*common, "--optimizer", "sgd", "--lr", "2")
    assert below["overfit"]["final_loss"] <= (1 - 1 / 64) ** 120 * below["initial_loss"]
    assert below["overfit"]["verdict"] in ("fits", "learning")


def test_dead_relus_are_stalled_and_a_risk_naming_the_zero_gradients():
    torch.manual_seed(0)
    model = fx.DeadReluMLP()  # what load_model builds: the class under seed 0
    torch.manual_seed(0)
    x = fx.mlp_inputs()  # what the inputs factory gives for batch 0
    assert (model.hidden(x) < 0).all()  # every ReLU unit is dead for this batch, as designed
    # Only out.bias can learn: the best it can do is the per-output mean of the targets, so the loss can fall at
    # most to mean over outputs of var(y); from the initial loss mean (b0 - y)^2 that is a ratio above 0.9.
    initial = F.mse_loss(model(x), fx.TARGETS).item()
    best = fx.TARGETS.var(dim=0, unbiased=False).mean().item()
    assert best / initial > 1 - overfit.LEARNING_MARGIN
    data = probe(f"{FX}:DeadReluMLP", "--inputs", f"{FX}:mlp_inputs", "--loss", f"{FX}:mse_to_targets",
                 "--lr", "1e-2", "--steps", "100", "--sweep-steps", "12", "--search-steps", "8")
    assert data["initial_loss"] == pytest.approx(initial, rel=1e-5)  # the same batch: torch.randn after seed 0
    # a constant output (what out.bias alone can give) reaches exactly that mean variance
    assert data["overfit"]["constant_loss"] == pytest.approx(best, rel=1e-3)
    assert data["overfit"]["verdict"] == "stalled"
    assert data["overfit"]["final_loss"] >= best - 1e-6
    assert data["zero_gradient_parameters"] == ["hidden.weight", "hidden.bias", "out.weight"]
    risk = [f for f in data["findings"] if f["check"] == "fit_one_batch"][0]
    assert risk["severity"] == "RISK" and "hidden.weight" in risk["text"] and "constant output" in risk["text"]


def test_healthy_mlp_fits_and_the_model_is_left_untouched():
    from model_expert.target import import_location
    # the instance the tool loads (its own import of the file, not this test's `fx`, whose weights differ)
    instance = import_location(FX, "TARGET").healthy_instance
    before = model_state(instance)
    data = probe(f"{FX}:healthy_instance", "--inputs", f"{FX}:mlp_inputs", "--loss", f"{FX}:mse_to_targets",
                 "--lr", "1e-2", "--steps", "150", "--sweep-steps", "30", "--search-steps", "8")
    assert_same_state(before, model_state(instance))
    fit = data["overfit"]
    assert fit["verdict"] == "fits" and fit["ratio"] <= 0.1 and fit["steps"] == 150
    assert fit["losses"][0] == data["initial_loss"] and len(fit["losses"]) == 151
    # Adam's first step moves every element by lr (m / sqrt(v) = sign(g) after bias correction), so
    # |dw| / |w| = lr * sqrt(n) / |w| for a tensor with no zero gradient.
    weight = instance.net[0].weight
    layer = next(l for l in data["update_ratio"]["layers"] if l["name"] == "net.0.weight")
    assert layer["log10_ratio"] == pytest.approx(math.log10(1e-2 * math.sqrt(weight.numel()) / weight.norm().item()), abs=0.02)
    assert set(data) >= {"initial_loss", "expected_initial_loss", "overfit", "lr_range", "update_ratio", "findings"}
    assert set(data["lr_range"]) >= {"method", "lrs", "losses", "suggested_lr", "breakdown_lr", "steps", "cut_short"}
    assert "EMA" in data["lr_range"]["range_test"]["method"] and data["lr_range"]["lrs"][0] == lr_range.LR_MIN


def test_bundled_autoencoder_diverges_at_a_large_lr_and_converges_at_a_small_one():
    sgd = probe(AE, *AE_SMALL, "--optimizer", "sgd", "--steps", "30", "--sweep-steps", "12", "--search-steps", "8")
    limit = sgd["lr_range"]["curvature"]["quadratic_limit_lr"]  # random data: the search's runs barely learn
    high = probe(AE, *AE_SMALL, "--optimizer", "sgd", "--lr", str(4 * limit), "--steps", "30", "--sweep-steps", "12",
                 "--search-steps", "8")
    assert high["overfit"]["verdict"] == "diverges"
    low = probe(AE, *AE_SMALL, "--optimizer", "adamw", "--lr", "1e-3", "--steps", "60", "--sweep-steps", "12",
                "--search-steps", "8")
    assert low["overfit"]["verdict"] in ("fits", "learning")
    assert low["overfit"]["final_loss"] < 0.7 * low["initial_loss"]
    assert low["lr_source"] == "--lr" and low["loss"] == "the model's output.loss"


def test_gpt2_with_labels_fits_one_batch_and_starts_at_ln_vocab():
    data = probe(f"{FX}:gpt2_tiny", "--inputs", f"{FX}:gpt2_batch", "--lr", "1e-2", "--steps", "100", "--sweep-steps", "12",
                 "--search-steps", "4")
    assert data["expected_initial_loss"] == pytest.approx(math.log(fx.VOCAB))  # ln 100 = 4.605
    assert abs(data["initial_loss"] - math.log(fx.VOCAB)) < 0.1  # init std 0.02: near-uniform logits
    assert data["overfit"]["verdict"] == "fits"


def test_two_parameter_loss_reads_labels_from_data_batches():
    data = probe(f"{FX}:HealthyMLP", "--data", f"{FX}:labelled_batches", "--batch-inputs", f"{FX}:pick_x",
                 "--loss", f"{FX}:mse_to_labels", "--lr", "1e-2", "--steps", "20", "--sweep-steps", "12",
                 "--search-steps", "4")
    torch.manual_seed(0)
    model = fx.HealthyMLP()  # what load_model builds: the class under seed 0
    x, y = fx.labelled_batches()[0]
    assert data["initial_loss"] == pytest.approx(F.mse_loss(model(x), y).item(), rel=1e-5)
    assert data["inputs"].startswith("--data")


@pytest.mark.parametrize("capability", ["grads", "memory", "flops"])
def test_every_training_step_capability_takes_data_and_a_two_parameter_loss(capability):
    result = run_script(capability, f"{FX}:HealthyMLP", "--data", f"{FX}:labelled_batches", "--batch-inputs",
                        f"{FX}:pick_x", "--loss", f"{FX}:mse_to_labels", "--json", *(
                            ["--batches", "2"] if capability == "grads" else ["--target-device", "cpu"]))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    if capability == "grads":
        torch.manual_seed(0)
        model = fx.HealthyMLP()
        batches = fx.labelled_batches()
        expected = [F.mse_loss(model(x), y).item() for x, y in batches[:2]]
        assert data["losses"] == pytest.approx(expected, rel=1e-5)
    if capability == "flops":
        # Linear layers: 2 x (16*64 + 64*4) x batch 8 forward FLOPs
        assert data["forward_flops"] == 2 * (16 * 64 + 64 * 4) * 8


@pytest.mark.parametrize("argv, says", [
    (["--lr", "0"], "--lr must be a positive number"),
    (["--lr=-1e-3"], "--lr must be a positive number"),
    (["--steps", "0"], "--steps must be a positive whole number"),
    (["--data", f"{FX}:no_batches"], "yielded no batch"),
    (["--data", f"{FX}:wrong_width_batches", "--batch-inputs", f"{FX}:pick_x"], "forward failed in module"),
])
def test_bad_input_is_one_line_and_exit_2(argv, says):
    loss = [] if "--data" in argv else ["--inputs", f"{FX}:mlp_inputs"]
    result = run_script("probe", f"{FX}:HealthyMLP", *loss, "--loss", f"{FX}:mse_to_labels" if "--data" in argv
                        else f"{FX}:mse_to_targets", *argv)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr


def test_the_default_loss_is_refused():
    result = run_script("probe", f"{FX}:HealthyMLP", "--inputs", f"{FX}:mlp_inputs")
    assert result.returncode == 2 and result.stdout == ""
    assert "default loss (mean of outputs)" in result.stderr and "--loss" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_verdict_rules():
    def curve(*points):  # 20 steps (the fewest judged), ending at the last point
        return [points[0]] + [points[-2] if len(points) > 2 else points[0]] * 19 + [points[-1]]
    assert overfit.verdict(curve(1.0, 0.05)) == ("fits", None)
    assert overfit.verdict(curve(1.0, 0.5)) == ("learning", None)
    assert overfit.verdict(curve(1.0, 0.95)) == ("stalled", None)
    assert overfit.verdict(curve(1.0, 1.8, 0.8)) == ("learning", None)  # Adam's transient spike, then down
    assert overfit.verdict(curve(1.0, 1.8, 1.6)) == ("diverges", 1)  # ends above 1.5 x
    assert overfit.verdict(curve(1.0, 0.9, float("nan"))) == ("diverges", 20)
    assert overfit.verdict(curve(1.0, 20.0, 0.5)) == ("diverges", 1)  # blew up past 10 x
    # against the constant predictor: 2.3 -> 2.0 is a real fall, but a constant output reaches 2.05: stalled
    assert overfit.verdict(curve(2.3, 2.0), constant=2.05) == ("stalled", None)
    assert overfit.verdict(curve(2.3, 1.0), constant=2.05) == ("learning", None)
    assert overfit.verdict(curve(2.3, 0.2), constant=2.05) == ("fits", None)  # <= 0.1 x 2.05
    assert overfit.verdict([1.0, 0.5, 0.4]) == ("too_few_steps", None)  # 2 steps judge nothing but divergence


def test_adam_at_a_small_lr_for_few_steps_is_not_called_stalled():
    # the review's 25 steps of AdamW at recommend's 1e-4 move each weight at most 25 x 1e-4 = 0.0025 < 0.01
    data = probe(f"{FX}:bert_mlm_tiny", "--inputs", f"{FX}:bert_mlm_batch", "--lr", "1e-4", "--steps", "25",
                 "--sweep-steps", "12", "--search-steps", "4")
    assert 25 * 1e-4 < overfit.ADAM_MIN_TRAVEL
    assert data["overfit"]["verdict"] in ("too_few_steps", "learning", "fits")
    assert not [f for f in data["findings"] if f["severity"] in ("RISK", "CAUTION") and f["check"] == "fit_one_batch"]


def test_charts_are_mermaid_line_charts_of_what_was_measured():
    fit = {"losses": [1.0, 0.1, 0.01], "optimizer": "adamw", "lr": 0.001}
    chart = charts.line_chart(charts.overfit_series(fit))
    assert chart.splitlines()[:2] == ["```mermaid", "xychart-beta"]
    assert "    line [0, -1, -2]" in chart  # log10 of 1, 0.1, 0.01
    sweep = {"lrs": [1e-7, 1e-5, 1e-3], "losses": [2.0, 1.5, 9.0]}
    assert 'x-axis "log10(lr)" ["-7", "-5", "-3"]' in charts.line_chart(charts.lr_range_series(sweep))
    assert charts.decimal(1.5e-5) == "0.000015" and "e" not in charts.decimal(187944.2463)


def test_recommend_states_one_starting_lr_with_its_source_and_the_other_beside_it():
    from model_expert.recommend import find, recommend, starting_lr_text
    evidence = {"params": {"total": 1_000_000, "trainable": 1_000_000},
                "architecture": {"architecture": "autoencoder", "loss_kind": None, "evidence": []}}
    seed = recommend(evidence)
    assert find(seed, "learning_rate")["value"]["min"] == 1e-3  # the seed: autoencoders < 50M, 1e-3 to 5e-3
    assert seed["lr"] == 1e-3 and "lr.autoencoder_under_50m" in seed["lr_source"] and seed["lr_alternative"] is None

    def measured(suggested, breakdown, inputs):
        sweep = {"suggested_lr": suggested, "breakdown_lr": breakdown, "cut_short": False, "method": "line search",
                 "steps": {"range_test": 100, "per_trial": 50, "trials": 9}, "line_search": {}}
        return {"lr_range": sweep, "inputs": inputs, "overfit": {"verdict": "fits"}, "lr_source": "--lr"}

    # synthetic inputs: the rule's 1e-3 stays; the measured 0.02 is shown beside it with why not
    synthetic = recommend({**evidence, "probe": measured(0.02, 1.0, "synthetic inputs (test the wiring, not the LR)")})
    assert synthetic["lr"] == 1e-3 and synthetic["lr_alternative"]["lr"] == 0.02
    assert "synthetic inputs" in synthetic["lr_alternative"]["why_not"]
    # ... unless the rule's start breaks training there: then the measured one, with the rule's beside it
    breaking = recommend({**evidence, "probe": measured(8e-5, 8e-4, "synthetic inputs (test the wiring, not the LR)")})
    entry = find(breaking, "learning_rate")
    assert breaking["lr"] == entry["value"]["start"] == 8e-5 and entry["rule"] == "lr.measured"
    assert breaking["lr_alternative"]["lr"] == 1e-3 and "breakdown LR 8e-4" in breaking["lr_alternative"]["why_not"]
    # measured on --data batches: the measurement wins
    real = recommend({**evidence, "probe": measured(3e-3, 0.1, "--data batches")})
    assert real["lr"] == 3e-3 and "--data batches" in real["lr_source"] and real["lr_alternative"]["lr"] == 1e-3
    assert starting_lr_text(real).startswith("3e-3 (measured by probe.py (a line search of 9 training runs of 50 steps)")
    # cut short: no measurement to use
    cut = measured(3e-3, 0.1, "--data batches")
    cut["lr_range"]["cut_short"] = True
    assert recommend({**evidence, "probe": cut})["lr"] == 1e-3
    # a diverging fit is a Priority 1 issue with the measured breakdown in its fix
    diverging = {**measured(8e-5, 8e-4, "--data batches"),
                 "overfit": {"verdict": "diverges", "lr": 1e-3, "optimizer": "adamw", "losses": [1.0, 3.0],
                             "loss_at_divergence": 3.0, "diverged_at_step": 1, "final_loss": 3.0, "steps": 1}}
    [issue] = recommend({**evidence, "probe": diverging})["issues"]
    assert issue["priority"] == 1 and "step 1" in issue["current_state"] and "0.0008" in issue["fix"]


@pytest.fixture(scope="module")
def diverging_review(tmp_path_factory):
    out = tmp_path_factory.mktemp("probe_review")
    result = run_script("report", f"{FX}:LeastSquares", "--inputs", f"{FX}:least_squares_inputs", "--loss",
                        f"{FX}:least_squares_loss", "--optimizer", "sgd", "--lr", "6", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_review_shows_training_dynamics_and_a_priority_1_issue(diverging_review):
    markdown = (diverging_review / "analysis.md").read_text()
    gradient = markdown[markdown.index("### Gradient Flow"):markdown.index("### Training Configuration")]
    training = markdown[markdown.index("### Training Configuration"):markdown.index("### Identified Issues")]
    issues = markdown[markdown.index("### Identified Issues"):markdown.index("### Memory")]
    assert "**Training dynamics (measured)**" in gradient and "**Training dynamics (measured)**" in training
    assert "diverges" in gradient and 'x-axis "step"' in gradient
    # gradient descent on this quadratic breaks down just above 2 / lambda_max = 2 / 0.5 = 4
    breakdown = float(training.split("**Breakdown LR**: ")[1].split(";")[0])
    assert 4 < breakdown <= 8
    assert training.count("**Starting LR**") == 1
    p1 = issues[issues.index("Priority 1"):issues.index("Priority 2")]
    assert "diverges on one batch" in p1 and "at step" in p1
    result = run_script("check_grounding", diverging_review / "analysis.md", diverging_review / "analysis.json")
    assert result.returncode == 0, result.stdout[-2000:]


BLOBS = [f"{FX}:BlobMLP", "--data", f"{FX}:blob_batches", "--batch-inputs", f"{FX}:pick_x",
         "--loss", f"{FX}:cross_entropy_to_labels"]


def blob_final_loss(lr: float, steps: int = 200) -> float:
    """Independent of probe: AdamW from the model load_model builds (seed 0), step i on batch i mod 4, then the
    mean loss over the 4 batches; inf when a loss goes non-finite."""
    batches = fx.blob_batches()
    torch.manual_seed(0)
    model = fx.BlobMLP()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        x, y = batches[step % len(batches)]
        loss = F.cross_entropy(model(x), y)
        if not math.isfinite(loss.item()):
            return math.inf
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return sum(F.cross_entropy(model(x), y).item() for x, y in batches) / len(batches)


@pytest.fixture(scope="module")
def blobs():
    return probe(*BLOBS, "--steps", "20")


def test_suggested_lr_trains_as_well_as_the_best_of_a_grid_and_the_breakdown_is_bracketed(blobs):
    grid = [1e-4 * 10 ** (i / 2) for i in range(11)]  # 1e-4 to 10, half a decade apart
    initial = blob_final_loss(1e-4, steps=0)
    finals = [blob_final_loss(lr) for lr in grid]
    best = min(range(len(grid)), key=lambda i: finals[i])
    sweep = blobs["lr_range"]
    assert sweep["suggested_lr"] is not None and not sweep["cut_short"]
    regret = blob_final_loss(sweep["suggested_lr"]) / finals[best]
    assert regret <= 1.5, (sweep["suggested_lr"], grid[best], regret)
    # the grid's breakdown (non-finite, or under 10% of the best improvement) lies within 2x of probe's
    broken = [i for i in range(best + 1, len(grid))
              if not math.isfinite(finals[i]) or initial - finals[i] < 0.1 * (initial - finals[best])]
    if broken:
        assert grid[broken[0] - 1] / 2 <= sweep["breakdown_lr"] <= grid[broken[0]] * 2
    assert sweep["steps"] == {"range_test": 100, "per_trial": 100, "trials": len(sweep["line_search"]["lrs"])}


def test_the_figures_depend_on_the_options_not_the_clock(blobs):
    again = probe(*BLOBS, "--steps", "20", "--time-budget-s", "1800")  # a later --time-budget-s wins
    for key in ("suggested_lr", "breakdown_lr", "largest_stable_lr", "steps"):
        assert again["lr_range"][key] == blobs["lr_range"][key]
    assert again["lr_range"]["line_search"]["lrs"] == blobs["lr_range"]["line_search"]["lrs"]
    assert blobs["threads"] == len(os.sched_getaffinity(0)) == torch.get_num_threads()


def test_a_run_the_budget_stops_is_cut_short_and_suggests_nothing():
    args = CAPABILITY.parser().parse_args([*BLOBS, "--steps", "20", "--time-budget-s", "1e-6"])
    data = CAPABILITY.analyse(args)
    sweep = data["lr_range"]
    assert sweep["cut_short"] and sweep["suggested_lr"] is None and sweep["breakdown_lr"] is None
    assert sweep["no_suggestion_reason"].startswith("cut short")
    assert data["overfit"]["verdict"] == "cut_short" and data["overfit"]["steps"] == 0
    assert any(f["check"] == "lr_range" and "cut short" in f["text"] for f in data["findings"])


@pytest.mark.parametrize("argv", [
    [f"{FX}:bert_mlm_tiny", "--inputs", f"{FX}:bert_mlm_batch", "--lr", "1e-3"],
    [f"{FX}:GRUSeq2Seq", "--data", f"{FX}:reversal_batches", "--batch-inputs", f"{FX}:pick_source_and_target_in",
     "--loss", f"{FX}:seq2seq_loss", "--lr", "1e-2"],  # its training LR: at torch's 1e-3, 25 steps barely move it
], ids=["bert", "gru_seq2seq"])
def test_healthy_models_raise_no_training_dynamics_issue(argv):
    # the review's workload: 25 steps on one batch, a 20-step range test, runs of 8 steps
    data = probe(*argv, "--steps", "25", "--sweep-steps", "20", "--search-steps", "8")
    assert data["overfit"]["verdict"] in ("fits", "learning")
    assert data["overfit"]["final_loss"] < 0.9 * data["initial_loss"]
    assert not [f for f in data["findings"] if f["severity"] in ("RISK", "CAUTION")
                and f["check"] in ("fit_one_batch", "lr_range", "initial_loss")]
    assert data["lr_range"]["suggested_lr"] is not None


def test_when_no_run_learns_there_is_a_reason_not_a_suggestion():
    # a bench whose loss never moves, at any LR: the search must end with no breakdown and say nothing learned
    from model_expert.probe import line_search

    class Flat:  # a bench whose loss never moves: every trial scores the initial loss
        loss_fn = None

        def reset(self):
            pass

        def loss(self, seed, dropout_seed):
            return torch.tensor(1.0)

        def optimizer(self, name, lr):
            return None

        def train_step(self, optimizer, seed, dropout_seed):
            return 1.0

    result = line_search.search(Flat(), "adamw", 1e-3, 8, 2, math.inf, lambda message: None)
    assert result["learned"] is False and result["breakdown_lr"] is None and result["largest_stable_lr"] is None
    assert len(result["lrs"]) >= 3 and not result["cut_short"]
