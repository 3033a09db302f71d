"""grads.py: hand-computed norms, planted defects caught by name, clean controls quiet, no side effects."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from model_expert import cli, grads  # noqa: E402
from model_expert.errors import UserError  # noqa: E402
from model_expert.inputs import ModelInputs  # noqa: E402

DEFECTS = os.path.join("tests", "defects")


def run_json(argv: list[str], capsys) -> dict:
    torch.manual_seed(0)  # the models are built with the global RNG: same init whatever ran before
    code = cli.main(grads.CAPABILITY, argv + ["--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def kinds(data: dict, severity: str | None = None) -> set[tuple[str, str]]:
    return {(f["kind"], f["where"]) for f in data["findings"] if severity is None or f["severity"] == severity}


def alarms(data: dict) -> list[dict]:
    return [f for f in data["findings"] if f["severity"] in ("RISK", "CAUTION")]


# --- hand computation ---------------------------------------------------------------------------

def test_norms_match_hand_computation():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0]]))
        model.bias.fill_(0.5)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    data = grads.analyse_model(model, lambda seed: ModelInputs(args=(x,)), batches=2)
    rows = {r["name"]: r for r in data["parameters"]}
    # loss = mean_b (w.x_b + b)  ->  dL/dw = mean_b x_b = [(1+3)/2, (2+4)/2] = [2, 3];  dL/db = 1
    assert rows["weight"]["grad_norm_mean"] == pytest.approx(math.sqrt(2**2 + 3**2))        # sqrt(13) = 3.6056
    assert rows["bias"]["grad_norm_mean"] == pytest.approx(1.0)
    assert rows["weight"]["param_norm"] == pytest.approx(5.0)                                # |[3, 4]| = 5
    assert rows["weight"]["grad_to_param"] == pytest.approx(math.sqrt(13) / 5)               # 0.7211
    assert data["global_grad_norms"] == pytest.approx([math.sqrt(14)] * 2)                   # sqrt(13 + 1)
    # rule: 90th percentile of the global norms (both sqrt(14) = 3.7417) to 2 significant digits -> 3.7
    assert data["suggested_clip_norm"] == 3.7 and data["clip_withheld_reason"] is None
    # AdamW at lr 1e-3, the same gradient g twice: m = 0.1g + 0.9*0.1g = 0.19g, m_hat = 0.19g / (1 - 0.9^2) = g;
    # v = 0.001g^2 + 0.999*0.001g^2 = 0.001999g^2, v_hat = v / (1 - 0.999^2) = g^2: update = lr g / (|g| + 1e-8),
    # lr per element: |dw| = 1e-3 x sqrt(2) for the weight, 1e-3 for the bias
    assert rows["weight"]["update_norm"] == pytest.approx(1e-3 * math.sqrt(2), rel=1e-5)
    assert rows["weight"]["update_to_param"] == pytest.approx(1e-3 * math.sqrt(2) / 5, rel=1e-5)     # 2.8e-4
    assert rows["bias"]["update_to_param"] == pytest.approx(1e-3 / 0.5, rel=1e-5)
    sgd = grads.analyse_model(model, lambda seed: ModelInputs(args=(x,)), batches=2, optimizer="sgd", lr=0.1)
    assert {r["name"]: r for r in sgd["parameters"]}["weight"]["update_norm"] == pytest.approx(0.1 * math.sqrt(13))
    assert data["batches_clipped_at_transformer_rule"] == 2                                      # 3.74 > 1.0 twice
    assert data["losses"] == pytest.approx([(3 * 1 + 4 * 2 + 0.5 + 3 * 3 + 4 * 4 + 0.5) / 2] * 2)  # (11.5 + 25.5) / 2


def test_pure_rules():
    # p90 of (1, 2, 30): position 0.9 x 2 = 1.8 -> 2 + 0.8 x (30 - 2) = 24.4 -> 24
    assert grads.suggested_clip_norm([1.0, 2.0, 30.0]) == 24.0
    assert grads.percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0], 90) == 10.0
    assert grads.suggested_clip_norm([1.0, float("nan")]) is None          # not a stable run: no percentile of it
    assert grads.suggested_clip_norm([float("inf")]) is None
    assert grads.two_significant(0.01234) == 0.012
    assert grads.decades(100.0, 0.01) == pytest.approx(4.0)
    assert grads.stability([]) == "STABLE"
    assert grads.stability([{"severity": "INFO"}]) == "STABLE"
    assert grads.stability([{"severity": "INFO"}, {"severity": "CAUTION"}]) == "CAUTION"
    assert grads.stability([{"severity": "CAUTION"}, {"severity": "RISK"}]) == "RISK"


# --- planted defects ----------------------------------------------------------------------------

PLANTED = [
    # file, finding kind, where, severity
    ("dead_relu", "dead_units", "relu1", "RISK"),
    ("detached_branch", "detached", "branch", "RISK"),
    ("unused_layer", "unused", "extra", "CAUTION"),
    ("exploding_stack", "exploding_gradient", "(global)", "RISK"),
    ("vanishing_stack", "vanishing_gradient", "layers.0", "RISK"),
    ("nan_forward", "non_finite_activation", "features", "RISK"),
    ("nan_forward", "non_finite_gradient", "head.weight", "RISK"),
    ("frozen_layer", "frozen", "encoder", "INFO"),
]


@pytest.mark.parametrize("defect, kind, where, severity", PLANTED)
def test_planted_defect_is_named(defect, kind, where, severity, capsys):
    data = run_json([f"{DEFECTS}/{defect}.py:Model"], capsys)
    assert (kind, where) in kinds(data, severity), data["findings"]
    assert data["stability"] == {"INFO": "STABLE", "CAUTION": "CAUTION", "RISK": "RISK"}[severity]


def test_dead_relu_per_layer_fraction(capsys):
    data = run_json([f"{DEFECTS}/dead_relu.py:Model", "--batches", "2"], capsys)
    relu1 = next(d for d in data["dead_units"] if d["layer"] == "relu1")
    assert (relu1["units"], relu1["dead_units"], relu1["dead_fraction"]) == (32, 32, 1.0)
    assert relu1["observations_per_unit"] == 2 * 16  # 2 batches x 16 samples


def test_detached_and_unused_are_told_apart(capsys):
    detached = run_json([f"{DEFECTS}/detached_branch.py:Model"], capsys)
    unused = run_json([f"{DEFECTS}/unused_layer.py:Model"], capsys)
    status = {r["name"]: r["status"] for r in detached["parameters"]}
    assert status == {"trunk.weight": "ok", "trunk.bias": "ok", "branch.weight": "detached", "branch.bias": "detached",
                      "head.weight": "ok", "head.bias": "ok"}
    assert {r["name"]: r["status"] for r in unused["parameters"]}["extra.weight"] == "unused"
    assert not any(k == "detached" for k, _ in kinds(unused))


def test_frozen_is_not_an_alarm(capsys):
    data = run_json([f"{DEFECTS}/frozen_layer.py:Model"], capsys)
    assert alarms(data) == []
    assert {r["name"]: r["status"] for r in data["parameters"]}["encoder.weight"] == "frozen"


def test_vanishing_depth_profile_falls_toward_input(capsys):
    data = run_json([f"{DEFECTS}/vanishing_stack.py:Model", "--batches", "1"], capsys)
    profile = [p for p in data["depth_profile"]]
    assert [p["layer"] for p in profile] == [f"layers.{2 * i}" for i in range(20)]  # Linear layers, forward order
    # each Linear+Sigmoid passes back ~0.07x (file docstring): the last layer's gradient is > 1e10 x the first's
    assert profile[-1]["grad_norm_mean"] > 1e10 * max(profile[0]["grad_norm_mean"], 1e-45)
    assert data["depth_decades"] == "inf" or data["depth_decades"] > 4


class _ScaledDown(nn.Module):
    """A healthy layer whose gradient is tiny: the output is scaled by 1e-7 (as after a BatchNorm of a large
    activation), so grad/param ~1e-8, yet Adam moves every element by about lr."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(8, 8)

    def forward(self, x):
        return self.layer(x) * 1e-7


def test_vanishing_is_judged_by_the_optimizers_update():
    model = _ScaledDown()
    build = lambda seed: ModelInputs(args=(torch.randn(16, 8, generator=torch.Generator().manual_seed(seed)),))  # noqa: E731
    adam = grads.analyse_model(model, build, batches=3, optimizer="adamw", lr=1e-3)
    sgd = grads.analyse_model(model, build, batches=3, optimizer="sgd", lr=1e-3)
    row = {r["layer"]: r for r in adam["depth_profile"]}["layer"]
    assert row["grad_to_param"] < 1e-6                     # what grad/param alone would call vanishing
    # Adam's update: m_hat / sqrt(v_hat) has |.| <= 1 per element, so |dw| <= lr x sqrt(numel of weight + bias) = 1e-3 x sqrt(72)
    assert 1e-4 < row["update_to_param"] <= 1e-3 * math.sqrt(72) / root_sum_square_of(model)
    assert not [f for f in adam["findings"] if f["kind"] == "vanishing_gradient" and f["severity"] != "INFO"]
    # SGD at lr 1e-3 moves it by lr x grad/param < 1e-9: below fp32's resolution, a RISK
    sgd_row = {r["layer"]: r for r in sgd["depth_profile"]}["layer"]
    assert sgd_row["update_to_param"] == pytest.approx(1e-3 * sgd_row["grad_to_param"], rel=1e-6)
    assert ("vanishing_gradient", "layer") in kinds(sgd, "RISK")


def root_sum_square_of(model: nn.Module) -> float:
    return math.sqrt(sum(float(p.detach().norm()) ** 2 for p in model.parameters()))


def test_dead_units_judged_only_when_stable():
    # 8 units = the 8 inputs through an identity layer. Batches 0 and 1: every input negative (all 8 units dead);
    # batch 2: inputs 0..3 positive. 4 of 8 end dead (50 %), but the first half of the run had 8 dead: not stable.
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(8))
        model[0].bias.zero_()

    def build(seed):
        x = -torch.ones(16, 8)
        if seed == 2:
            x[:, :4] = 1.0
        return ModelInputs(args=(x,))
    data = grads.analyse_model(model, build, batches=3)
    row = data["dead_units"][0]
    assert (row["dead_units"], row["dead_units_after_half"], row["samples_at_half"], row["samples"]) == (4, 8, 32, 48)
    assert row["stable"] is False
    assert [(f["severity"], f["kind"]) for f in data["findings"] if f["kind"] == "dead_units"] == [("INFO", "dead_units")]
    # the same 8 dead in every batch: stable, 100 % dead -> RISK
    steady = grads.analyse_model(model, lambda seed: ModelInputs(args=(-torch.ones(16, 8),)), batches=3)
    assert steady["dead_units"][0]["stable"] is True
    assert ("dead_units", "1") in kinds(steady, "RISK")


def test_exploding_names_unscaled_inputs_and_withholds_clipping(capsys):
    data = run_json([f"{DEFECTS}/unscaled_inputs.py:Model", "--loss", f"{DEFECTS}/unscaled_inputs.py:mse_loss"], capsys)
    finding = next(f for f in data["findings"] if (f["kind"], f["where"]) == ("exploding_gradient", "(global)"))
    assert finding["severity"] == "RISK"
    cause = data["explosion_cause"]
    assert (cause["kind"], cause["input"]) == ("unscaled_inputs", "x")
    assert 90 < cause["max"] <= 100 and 0 <= cause["min"] < 10          # torch.rand(...) x 100 over 96 samples
    assert "`x` is not scaled: its values range" in finding["message"] and "standardise `x`" in finding["fix"]
    assert data["suggested_clip_norm"] is None and "explode" in data["clip_withheld_reason"]


def test_unit_dim_of_conv_maps_is_the_channel():
    # Conv2d with 4 output channels; channels 0 and 1 biased to -100 (dead after ReLU), 2 and 3 to +100 (alive).
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 8, 8))  # materialise the lazy layer
        model[0].bias.copy_(torch.tensor([-100.0, -100.0, 100.0, 100.0]))
    data = grads.analyse_model(model, lambda seed: ModelInputs(args=(torch.randn(2, 3, 8, 8),)), batches=1)
    row = data["dead_units"][0]
    assert (row["layer"], row["units"], row["dead_units"]) == ("1", 4, 2)   # 2 of 4 channels, not of 6x6 positions
    assert row["observations_per_unit"] == 2 * 6 * 6                        # batch 2 x 6x6 output map


# --- clean controls -----------------------------------------------------------------------------

@pytest.mark.parametrize("control", ["clean_mlp.py:Model", "clean_transformer.py:Model", "clean_gpt2.py:Model",
                                     "clean_bert.py:Model"])
def test_clean_controls_raise_no_alarm(control, capsys):
    data = run_json([f"{DEFECTS}/{control}"], capsys)
    assert alarms(data) == [], alarms(data)
    assert data["stability"] == "STABLE"
    assert all(r["status"] == "ok" for r in data["parameters"])


def test_bert_pooler_beside_mlm_head_is_info(capsys):
    data = run_json([f"{DEFECTS}/clean_bert.py:ModelWithPooler", "--loss", f"{DEFECTS}/clean_bert.py:mlm_only_loss"],
                    capsys)
    assert alarms(data) == []
    assert ("output_unused", "bert.pooler.dense") in kinds(data, "INFO")
    assert ("output_unused", "cls.seq_relationship") in kinds(data, "INFO")


def test_similarity_transformer_both_paths_reached(capsys):
    data = run_json(["examples/similarity_transformer.py:SimilarityTransformer", "--loss",
                     "examples/ranking_loss.py:ranking_loss", "--batch-size", "4",
                     "--group", "model_path=model_proj", "--group", "dataset_path=dataset_proj"], capsys)
    assert alarms(data) == []
    for name, prefix, count in (("model_path", "model_proj", 4), ("dataset_path", "dataset_proj", 2)):
        group = data["groups"][name]
        assert (group["prefix"], group["parameters"], group["reached"]) == (prefix, count, True)
        assert group["grad_norm"] > 0


def test_group_not_reached(capsys):
    data = run_json([f"{DEFECTS}/detached_branch.py:Model", "--group", "side=branch", "--group", "main=trunk"], capsys)
    assert data["groups"]["side"]["reached"] is False and data["groups"]["side"]["grad_norm"] is None
    assert data["groups"]["main"]["reached"] is True
    assert ("group_not_reached", "branch") in kinds(data, "RISK") and ("group_not_reached", "trunk") not in kinds(data)


def test_group_frozen_by_mistake_is_named(capsys):
    # the user says the encoder trains (--group), but it has requires_grad=False: 2 of 2 tensors frozen
    data = run_json([f"{DEFECTS}/frozen_layer.py:Model", "--group", "encoder=encoder"], capsys)
    finding = next(f for f in data["findings"] if f["kind"] == "group_not_reached")
    assert finding["severity"] == "RISK" and "2 of its 2 parameter tensors are frozen" in finding["message"]
    assert "requires_grad=True" in finding["fix"]


# --- precision ----------------------------------------------------------------------------------

class TinyOutputs(nn.Module):
    """Linear then x 1e-6: every output |x| ~ 1e-6 < fp16's smallest normal 6.1e-5, and nonzero."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) * 1e-6


def test_fp16_underflow_fraction():
    data = grads.analyse_model(TinyOutputs(), lambda seed: ModelInputs(args=(torch.randn(4, 8),)), batches=1,
                               precision="fp16-autocast")
    root = next(m for m in data["modules"] if m["name"] == "(root)")
    assert root["underflow_fraction"] == pytest.approx(1.0)  # all 32 outputs are nonzero and below 6.1e-5
    assert ("fp16_underflow", "(root)") in kinds(data, "CAUTION")


def test_fp16_overflow_on_exploding_stack(capsys):
    data = run_json([f"{DEFECTS}/exploding_stack.py:Model", "--precision", "fp16-autocast", "--batches", "1"], capsys)
    assert any(k == "fp16_overflow" for k, _ in kinds(data, "RISK"))
    fp32 = run_json([f"{DEFECTS}/exploding_stack.py:Model", "--batches", "1"], capsys)
    assert not any(k.startswith("fp16") for k, _ in kinds(fp32))  # range checks only under autocast
    assert all(m["underflow_fraction"] is None for m in fp32["modules"])


def test_bf16_autocast_clean(capsys):
    data = run_json([f"{DEFECTS}/clean_transformer.py:Model", "--precision", "bf16-autocast"], capsys)
    assert alarms(data) == []


# --- output -------------------------------------------------------------------------------------

def test_json_keys_and_markdown_chart(capsys):
    data = run_json([f"{DEFECTS}/clean_mlp.py:Model"], capsys)
    assert data["schema"] == "model-expert/grads/1"
    for key in ("batches", "global_grad_norms", "suggested_clip_norm", "clip_rule", "parameters", "modules",
                "depth_profile", "findings", "groups", "dead_units", "stability"):
        assert key in data
    assert len(data["global_grad_norms"]) == data["batches"] == 3
    torch.manual_seed(0)
    assert cli.main(grads.CAPABILITY, [f"{DEFECTS}/clean_mlp.py:Model", "--markdown"]) == 0
    text = capsys.readouterr().out
    chart = text[text.index("```mermaid"):]
    chart = chart[:chart.index("```", 3) + 3]
    assert "xychart-beta" in chart
    bars = chart[chart.index("bar [") + 5:chart.index("]", chart.index("bar ["))].split(", ")
    assert len(bars) == len(data["depth_profile"]) == 4  # net.0 Linear, net.1 BatchNorm, net.4 Linear, net.6 Linear

def test_table_output(capsys):
    torch.manual_seed(0)
    assert cli.main(grads.CAPABILITY, [f"{DEFECTS}/unused_layer.py:Model"]) == 0
    text = capsys.readouterr().out
    assert "Stability" in text and "CAUTION" in text and "extra" in text


def test_cli_subprocess():
    result = subprocess.run([sys.executable, "scripts/grads.py", f"{DEFECTS}/dead_relu.py:Model", "--json",
                             "--batches", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["schema"] == "model-expert/grads/1" and data["batches"] == 2
    assert ("dead_units", "relu1") in kinds(data, "RISK")


@pytest.mark.parametrize("extra, message", [
    (["--batches", "0"], "--batches must be 1 or more"),
    (["--device", "meta"], "needs real values"),
    (["--group", "nothing"], "bad --group 'nothing'"),
    (["--group", "x=nosuch"], "no parameter name starts with 'nosuch'"),
])
def test_bad_options_one_line(extra, message):
    result = subprocess.run([sys.executable, "scripts/grads.py", f"{DEFECTS}/clean_mlp.py:Model", *extra],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


# --- no side effects ----------------------------------------------------------------------------

class Guarded(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        return self.head(self.frozen(self.drop(torch.relu(self.bn(self.fc(x))))))


def _state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "objects": {k: id(v) for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {n: (None if p.grad is None else (id(p.grad), p.grad.clone())) for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "rng": torch.get_rng_state().clone(),
    }


def _assert_same(before: dict, after: dict) -> None:
    assert before["objects"] == after["objects"]
    for key, value in before["tensors"].items():  # includes bn.running_mean/var/num_batches_tracked
        assert torch.equal(value, after["tensors"][key]), key
    assert before["requires_grad"] == after["requires_grad"]
    assert before["training"] == after["training"]
    assert torch.equal(before["rng"], after["rng"])
    for name, grad in before["grads"].items():
        if grad is None:
            assert after["grads"][name] is None, name
        else:
            assert after["grads"][name][0] == grad[0] and torch.equal(after["grads"][name][1], grad[1]), name


def _guarded_model() -> nn.Module:
    torch.manual_seed(0)
    model = Guarded().eval()
    model.head.weight.grad = torch.full_like(model.head.weight, 7.0)  # a pre-existing .grad that must survive
    return model


def test_model_unchanged_after_run():
    model = _guarded_model()
    before = _state(model)
    data = grads.analyse_model(model, lambda seed: ModelInputs(args=(torch.randn(8, 16),)), batches=3)
    _assert_same(before, _state(model))
    assert data["parameters"][0]["grad_norm_mean"] > 0  # it did run backward


def test_model_unchanged_after_failing_forward():
    model = _guarded_model()
    before = _state(model)
    # batch 0 runs (BatchNorm updates its running stats in train mode), batch 1 has the wrong width and fails
    with pytest.raises(UserError, match="forward failed in module 'fc'"):
        grads.analyse_model(model, lambda seed: ModelInputs(args=(torch.randn(8, 16 if seed == 0 else 7),)), batches=2)
    _assert_same(before, _state(model))
