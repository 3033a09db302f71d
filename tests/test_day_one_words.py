"""What a new user reads on day one (issue 14, items 10, 11, 13): the loss that was backpropagated, the
command that reproduces a review, the console command's help, one model name, full module paths."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from conftest import REPO
from model_expert import __main__ as console
from model_expert import cli, flops, grads, init, params, registry, trace
from model_expert.memory import cli as memory_cli
from model_expert import render
from model_expert.memory.cli import FULL_SIZE_LABELS

MLP = "tests/fixtures/models.py"


def main_output(capability, argv, capsys) -> tuple[int, str, str]:
    code = cli.main(capability.CAPABILITY, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- item 10: the default loss is named ---------------------------------------------------------

@pytest.mark.parametrize("capability,extra", [(grads, ["--batches", "1"]), (memory_cli, []), (flops, [])])
def test_default_loss_in_json_and_header(capability, extra, capsys):
    code, out, _ = main_output(capability, [f"{MLP}:TinyMLP", "--json", *extra], capsys)
    assert code == 0 and json.loads(out)["loss"] == "default: mean of outputs"
    code, out, _ = main_output(capability, [f"{MLP}:TinyMLP", *extra], capsys)
    assert out.splitlines()[1] == "Loss: default: mean of outputs"


def test_hugging_face_default_loss_is_named_as_such(capsys):
    code, out, _ = main_output(flops, ["tests/defects/clean_gpt2.py:Model", "--json"], capsys)
    assert code == 0 and json.loads(out)["loss"] == "default: output.loss"


def test_a_given_loss_is_named_and_scripts_without_a_loss_say_nothing(tmp_path, capsys):
    loss_file = tmp_path / "loss.py"
    loss_file.write_text("def loss(output):\n    return output.pow(2).sum()\n")
    code, out, _ = main_output(grads, [f"{MLP}:TinyMLP", "--batches", "1", "--loss", f"{loss_file}:loss", "--json"], capsys)
    assert json.loads(out)["loss"] == f"{loss_file}:loss"
    code, out, _ = main_output(trace, [f"{MLP}:TinyMLP", "--json"], capsys)
    assert "loss" not in json.loads(out)


# --- item 11: "Reproduce with" is the command that was typed ------------------------------------

def test_reproduce_line_of_the_installed_command(tmp_path, capsys):
    skips = [a for s in ("lint", "grads", "memory", "flops", "recommend") for a in ("--skip", s)]
    code = console.main(["report", f"{MLP}:TinyMLP", "--out", str(tmp_path), *skips])
    assert code == 0, capsys.readouterr().err
    command = json.loads((tmp_path / "analysis.json").read_text())["command"]
    assert command.startswith(f"model-expert report {MLP}:TinyMLP --out ")
    assert "python scripts" not in command


# --- item 13: words and small things ------------------------------------------------------------

def test_console_help_has_one_line_per_capability():
    lines = console.usage().splitlines()
    for name in registry.CAPABILITIES:
        module = registry.load(name)
        description = module.CAPABILITY.description if hasattr(module, "CAPABILITY") else module.__doc__.strip()
        assert sum(line.split()[:1] == [name] for line in lines) == 1
        assert any(line.split()[:1] == [name] and description.splitlines()[0] in line for line in lines)


def test_init_error_prefix_once(tmp_path, capsys):
    not_a_directory = tmp_path / "file.txt"
    not_a_directory.write_text("")
    assert init.main([str(not_a_directory)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("model-expert init: error: ") and err.count("init:") == 1


def test_one_model_name_in_every_header():
    """A factory's name (make_mlp) is not the model's: every script names the built class."""
    names = set()
    for capability, extra in ((params, []), (trace, []), (flops, []), (memory_cli, [])):
        args = capability.CAPABILITY.parser().parse_args([f"{MLP}:make_mlp", *extra])
        names.add(capability.CAPABILITY.analyse(args)["model"])
    assert names == {"TinyMLP"}


def test_module_tables_keep_the_full_path():
    for capability in (flops, params):
        args = capability.CAPABILITY.parser().parse_args([f"{MLP}:TinyMLP"])
        table = capability.CAPABILITY.render_table({"schema": "", **capability.CAPABILITY.analyse(args)}, args)
        first_cells = {line.split()[0] for line in table.splitlines() if line.strip()}
        assert {"net", "net.0", "net.2"} <= first_cells  # net.0 is a child of net, and reads as one


def test_numpy_is_declared():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("numpy") for d in dependencies)
    assert any(line.startswith("numpy") for line in (REPO / "requirements.txt").read_text().splitlines())


# --- item 6: the card whose rules were used is named; script and report agree ------------------

def test_memory_names_the_card_whose_rules_it_used(capsys):
    code, out, _ = main_output(memory_cli, [f"{MLP}:TinyMLP", "--json"], capsys)
    default = json.loads(out)
    code, out, _ = main_output(memory_cli, [f"{MLP}:TinyMLP", "--json", "--gpu", "rtx3060-12gb"], capsys)
    rtx = json.loads(out)
    assert (default["rules_gpu"], default["rules_gpu_is_default"]) == ("h100-80gb", True)
    assert (rtx["rules_gpu"], rtx["rules_gpu_is_default"]) == ("rtx3060-12gb", False)
    # The only difference is cuBLAS's workspace, one per thread (forward and autograd): 32 MiB on Hopper,
    # 2 x 4 MiB + 8 x 16 KiB = 8.125 MiB elsewhere.
    assert default["peak_bytes"] - rtx["peak_bytes"] == 2 * (32 * 2**20 - (8 * 2**20 + 128 * 2**10))
    code, out, _ = main_output(memory_cli, [f"{MLP}:TinyMLP"], capsys)
    assert "(h100-80gb rules; the default without --gpu)" in out.splitlines()[0]


def test_script_and_report_agree_for_the_same_card(tmp_path):
    from model_expert import report
    skips = [a for s in ("lint", "grads", "flops", "recommend") for a in ("--skip", s)]
    args = report.CAPABILITY.parser().parse_args([f"{MLP}:TinyMLP", "--out", str(tmp_path), *skips])
    evidence = report.collect(args, on_progress=lambda message: None)
    for key, card in (("memory", args.gpu), ("memory_cluster", args.cluster_gpu)):
        alone = memory_cli.CAPABILITY.analyse(memory_cli.CAPABILITY.parser().parse_args([f"{MLP}:TinyMLP", "--gpu", card]))
        assert evidence[key]["rules_gpu"] == card
        assert evidence[key]["peak_bytes"] == alone["peak_bytes"]


# --- item 7: the breakdown is what is alive at the peak, with the full sizes beside -------------

def test_breakdown_says_alive_at_the_peak_with_full_sizes(capsys):
    code, out, _ = main_output(memory_cli, [f"{MLP}:TinyMLP", "--json"], capsys)
    data = json.loads(out)
    assert data["full_bytes"]["grads"] == 212 * 4  # every grad once backward is done: 212 fp32 parameters
    assert data["full_bytes"]["params"] == 212 * 4
    assert data["full_bytes"]["activations"] == data["activation_bytes_end_of_forward"]
    code, out, _ = main_output(memory_cli, [f"{MLP}:TinyMLP"], capsys)
    assert "Of which alive at the peak:" in out and "full size 848 B" in out
    from model_expert.report_view import _performance
    line = next(l for l in _performance({"params": {"parameter_bytes": 848}, "memory": data}, {})
                if l.startswith("**Training step peak at the traced batch"))
    assert "alive at that moment" in line and "(full size 0.0 MiB)" in line
    activations = render.mib(data["activation_bytes_end_of_forward"])
    assert f"({FULL_SIZE_LABELS['activations']} {activations})" in line and FULL_SIZE_LABELS["activations"] != "full size"


# --- item 8: the attention-score exponent on its own; one CAUTION per pattern -------------------

def _vary_attention(fused: bool) -> dict:
    args = trace.CAPABILITY.parser().parse_args(["tests/fixtures/dayone.py:TwoAttentionLayers", "--inputs",
                                                 "tests/fixtures/dayone.py:attention_inputs", "--vary", "tokens=8,32",
                                                 "--kwargs", json.dumps({"fused": fused})])
    return trace.CAPABILITY.analyse(args)["vary"]


def test_fused_attention_score_flops_exponent():
    rows = {g["module"]: g for g in _vary_attention(fused=True)["flop_growth"]}
    assert rows["layers.0"]["score_exponent"] == pytest.approx(2.0)  # the fused kernel: 4·B·h·T²·(d/h)


def test_attention_score_flops_exponent_and_one_caution_per_pattern():
    from model_expert.report_view import _scaling
    vary = _vary_attention(fused=False)
    rows = {g["module"]: g for g in vary["flop_growth"]}
    for layer in ("layers.0", "layers.1"):
        # Q·Kᵀ and scores·V: 2·B·heads·T²·(d/heads) each, so they grow exactly as T² (log 16 / log 4 = 2)
        assert rows[layer]["score_exponent"] == pytest.approx(2.0)
        assert 1.0 < rows[layer]["exponent"] < 2.0  # the total mixes in the T-linear projections
        assert rows[layer]["score_flops_large"] == 16 * rows[layer]["score_flops_small"]
    lines = _scaling({"vary": vary})
    cautions = [l for l in lines if l.startswith("**[CAUTION]**")]
    assert len(cautions) == 1 and "2 modules (`layers.0`, `layers.1`)" in cautions[0]
    growth = [l for l in lines if "FLOPs grow as" in l and "layers." in l]
    assert len(growth) == 1 and "attention-score FLOPs inside (Q·Kᵀ and scores·V) grow as tokens^2.0" in growth[0]


# --- item 9: where a seed rule and a measurement disagree, both are shown and the choice explained -

@pytest.fixture(scope="module")
def gpt2_recommendation():
    from model_expert import recommend
    args = recommend.CAPABILITY.parser().parse_args(["tests/defects/clean_gpt2.py:Model"])
    return recommend.CAPABILITY.analyse(args)


def test_seed_clip_that_clips_every_step_is_called_out(gpt2_recommendation):
    clip = next(r for r in gpt2_recommendation["recommendations"] if r["setting"] == "gradient_clipping")
    measured = clip["measured"]
    assert measured["median_global_grad_norm"] > 1.0  # the tiny GPT-2's gradients are larger than the seed's 1.0
    assert clip["value"]["rule_and_measurement_disagree"] is True and clip["value"]["used"] == "rule"
    assert measured["fraction_of_steps_clipped"] == 1.0
    assert "clips 3 of 3 sampled steps" in clip["justification"]
    assert f"max_norm={clip['value']['measured_suggestion']}" in clip["justification"]


def test_global_batch_says_gpus_times_batch(gpt2_recommendation):
    texts = [r["text"] for r in gpt2_recommendation["recommendations"] if r["setting"] == "grad_accum"]
    assert any(" = 4 GPUs x " in t for t in texts) and any(" = 1 GPU x " in t for t in texts)
    for text in texts:
        total, gpus, batch = (int(x) for x in re.search(r"global batch (\d+) = (\d+) GPUs? x (\d+)", text).groups())
        assert total == gpus * batch


def test_a_model_with_its_own_init_keeps_it():
    from model_expert.report_view import _checklist
    args = params.CAPABILITY.parser().parse_args(["tests/defects/clean_gpt2.py:Model"])
    data = params.CAPABILITY.analyse(args)
    assert data["own_initialisers"] == ["GPT2PreTrainedModel._init_weights"]
    evidence = {"params": data, "recommend": {"architecture": {"architecture": "transformer"}}}
    line = next(item for item in _checklist(evidence) if item.startswith("Initialise weights"))
    assert "`GPT2PreTrainedModel._init_weights`" in line and "Xavier-uniform" in line and "kept rather than" in line
    evidence["params"] = {**data, "own_initialisers": []}
    assert next(i for i in _checklist(evidence) if i.startswith("Initialise")).startswith("Initialise weights: Xavier")


# --- item 5: one model, one FLOP count for one target -------------------------------------------

def test_flops_for_a_gpu_target_do_not_depend_on_where_the_model_was_built():
    results = {}
    for device in ("cpu", "meta"):
        args = flops.CAPABILITY.parser().parse_args(["tests/fixtures/dayone.py:TwoAttentionLayers", "--inputs",
                                                     "tests/fixtures/dayone.py:attention_inputs", "--kwargs",
                                                     '{"fused": true}', "--gpu", "rtx3060-12gb", "--device", device])
        results[device] = flops.CAPABILITY.analyse(args)
    for key in ("forward_flops", "backward_flops", "estimated_step_seconds", "attention_kernels"):
        assert results["cpu"][key] == results["meta"][key], key
    assert results["cpu"]["attention_kernels_of"] == "cuda"


def test_epoch_time_names_its_batch_and_the_recommended_one():
    from model_expert.report_view import _performance, derive
    evidence = {"params": {"parameter_bytes": 4}, "samples_per_epoch": 1000,
                "flops": {"batch_size": 8, "estimated_step_seconds": 0.5, "forward_flops": 1, "backward_flops": 2},
                "recommend": {"recommendations": [{"setting": "batch_size", "role": "single_gpu", "value": 8}]}}
    derived = derive(evidence)
    assert derived["steps_per_epoch"] == 125  # ceil(1000 / 8)
    line = next(l for l in _performance(evidence, derived) if l.startswith("**Estimated Training Time"))
    assert line.startswith("**Estimated Training Time at the recommended batch 8**: ") and "(125 steps)" in line
    # recommend says 32 but the step was not measured there: the epoch says why instead of using batch 8's step
    evidence["recommend"]["recommendations"][0]["value"] = 32
    evidence["not_measured"] = {"flops_recommended_batch": "the forward failed at batch 32"}
    derived = derive(evidence)
    assert "epoch_seconds" not in derived
    line = next(l for l in _performance(evidence, derived) if l.startswith("**Estimated training step at the recommended"))
    assert line.endswith("not measured: the forward failed at batch 32")
    # report.py measured the step at the recommended batch: the epoch is counted there
    evidence["flops_recommended_batch"] = {"batch_size": 32, "estimated_step_seconds": 1.5}
    derived = derive(evidence)
    assert derived["steps_per_epoch"] == 32 and derived["epoch_seconds"] == 32 * 1.5  # ceil(1000 / 32) = 32 steps
    line = next(l for l in _performance(evidence, derived) if l.startswith("**Estimated Training Time"))
    assert f"{render.seconds(48.0)} per epoch" in line and line.startswith("**Estimated Training Time at the recommended batch 32**")
    assert "(32 steps)" in line
