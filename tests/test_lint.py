"""lint: planted defects caught with the right rule at the exact line, clean controls quiet, the
model untouched, gradcheck of custom autograd.Functions, and the CLI contract."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.filterwarnings("ignore:To copy construct from a tensor")  # planted torch.tensor(t)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from model_expert import cli, lint  # noqa: E402
from model_expert.inputs import ModelInputs  # noqa: E402

DEFECTS = os.path.join(REPO, "tests", "defects")
MARKER = re.compile(r"#\s*LINT:\s*(?P<rules>[a-z\- ]+)$")


def planted(path: str) -> set[tuple[str, int]]:
    """(rule, line) pairs marked `# LINT: rule [rule]` in a defect file, read independently of lint."""
    expected = set()
    with open(path, encoding="utf-8") as stream:
        for number, text in enumerate(stream, 1):
            match = MARKER.search(text.rstrip())
            if match:
                expected |= {(rule, number) for rule in match["rules"].split()}
    return expected


def run_json(argv: list[str]) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(lint.CAPABILITY, [*argv, "--json"])
    assert code == 0, out.getvalue()
    return json.loads(out.getvalue())


def in_file(data: dict, path: str) -> set[tuple[str, int]]:
    return {(f["rule"], f["line"]) for f in data["findings"] if f["file"] == os.path.abspath(path)}


# file -> (TARGET name, whether its forward is expected to raise)
DEFECT_FILES = {
    "lint_item.py": ("ItemScale", False),
    "lint_float_cast.py": ("FloatCast", False),
    "lint_numpy.py": ("NumpyNorm", False),
    "lint_detach.py": ("DetachedBranch", False),
    "lint_no_grad.py": ("NoGradProjection", False),
    "lint_param_inplace.py": ("SelfNormalising", False),
    "lint_tensor_branch.py": ("ValueBranch", False),
    "lint_bad_function.py": ("SquareNet", False),
    "lint_many_rules.py": ("ManyRules", True),  # the in-place copy_ on a leaf parameter raises in forward
    "lint_failing_forward.py": ("FailsHalfway", True),
    "lint_good_function.py": ("TanhNet", False),
    "lint_clean_mlp.py": ("CleanMLP", False),
    "lint_buffer_ema.py": ("RunningCentre", False),
}


@pytest.mark.parametrize("filename", sorted(DEFECT_FILES))
def test_planted_defects_caught_with_rule_and_exact_line(filename):
    path = os.path.join(DEFECTS, filename)
    name, forward_raises = DEFECT_FILES[filename]
    data = run_json([f"{path}:{name}", *(["--static-only"] if forward_raises else [])])
    assert in_file(data, path) == planted(path)
    for finding in data["findings"]:
        assert finding["severity"] == lint.RULES[finding["rule"]].severity
        if finding["file"]:
            with open(finding["file"], encoding="utf-8") as stream:
                assert finding["code"] == stream.read().splitlines()[finding["line"] - 1].strip()
    forward = next(d for d in data["dynamic"] if d["check"] == "forward")
    assert forward["status"] == ("skipped" if forward_raises else "ok")


@pytest.mark.parametrize("filename", sorted(f for f, (_, raises) in DEFECT_FILES.items() if raises))
def test_failing_forward_is_one_line_exit_2_pointing_at_the_source_findings(filename, capsys):
    path = os.path.join(DEFECTS, filename)
    name, _ = DEFECT_FILES[filename]
    assert cli.main(lint.CAPABILITY, [f"{path}:{name}", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    risks = sum(lint.RULES[rule].severity == "RISK" for rule, _ in planted(path))
    cautions = sum(lint.RULES[rule].severity == "CAUTION" for rule, _ in planted(path))
    assert f"reading the source found {risks} RISK, {cautions} CAUTION" in captured.err
    assert "--static-only" in captured.err


def test_every_planted_rule_file_is_covered():
    """Each static rule has a planted instance somewhere (a rule nobody plants is untested)."""
    rules = set()
    for filename in os.listdir(DEFECTS):
        if filename.startswith("lint_") and filename.endswith(".py"):
            rules |= {rule for rule, _ in planted(os.path.join(DEFECTS, filename))}
    static_rules = {"tensor-to-python", "tensor-to-numpy", "detach", "data-access", "grad-disabled",
                    "parameter-in-place", "tensor-attribute-in-place", "tensor-rewrap", "tensor-branch",
                    "zero-gradient-op", "custom-function-gradcheck"}
    assert static_rules <= rules
    assert rules <= set(lint.RULES)


def test_rule_tables_point_into_the_one_registry():
    referenced = set(lint.METHOD_RULES.values()) | set(lint.TORCH_CALL_RULES.values())
    assert referenced <= set(lint.RULES)
    assert {rule.severity for rule in lint.RULES.values()} <= set(lint.SEVERITIES)
    assert all(rule.why and rule.fix for rule in lint.RULES.values())


def test_wrong_backward_fails_gradcheck_with_the_expected_error():
    path = os.path.join(DEFECTS, "lint_bad_function.py")
    data = run_json([f"{path}:SquareNet"])
    (function,) = data["custom_functions"]
    assert function["name"] == "WrongSquare" and function["gradcheck"] == "failed"
    assert function["shapes"] == [[4, 8]]  # the traced call: Linear(8, 8) of a [4, 8] batch, not shrunk
    # backward returns g*x instead of 2*g*x: the Jacobian is diagonal and off by x_i, so the worst
    # error is max|x_i| over the float64 inputs gradcheck drew (seed 0, shape [4, 8]).
    x = torch.randn((4, 8), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert function["max_abs_error"] == pytest.approx(float(x.abs().max()), rel=1e-6)
    assert function["line"] == 13  # `def backward` in lint_bad_function.py


def test_correct_custom_function_passes_gradcheck_on_shrunk_inputs():
    path = os.path.join(DEFECTS, "lint_good_function.py")
    data = run_json([f"{path}:TanhNet"])
    (function,) = data["custom_functions"]
    assert function["gradcheck"] == "passed"
    assert function["max_abs_error"] < 1e-6
    # traced: x [8, 16] and weight [16, 32] = 128 + 512 = 640 float elements > 512, so every dim is capped at 3
    assert 8 * 16 + 16 * 32 > lint.GRADCHECK_MAX_ELEMENTS
    assert function["shapes"] == [[3, 3], [3, 3]]
    assert "shrunk" in function["reason"]


def test_tiny_shapes_keep_equal_sizes_equal():
    assert lint.tiny_shapes([(8, 16), (16, 32), (2,)]) == [(3, 3), (3, 3), (2,)]


def test_static_apply_without_a_call_is_listed_as_skipped():
    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return 2 * x

        @staticmethod
        def backward(ctx, grad):
            return 2 * grad

    class Sometimes(nn.Module):
        def forward(self, x, use: bool = False):
            return Double.apply(x) if use else x

    data = lint.lint_model(Sometimes(), ModelInputs(args=(torch.randn(2, 3),)))
    (function,) = data["custom_functions"]
    assert function["name"].endswith("Double") and function["gradcheck"] == "skipped"
    assert "not called" in function["reason"]


def _tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=50, max_position_embeddings=32)
    return transformers.BertModel(config)


def _ids():
    return ModelInputs(args=(torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0)),))


@pytest.mark.parametrize("build", [_tiny_gpt2, _tiny_bert], ids=["gpt2", "bert"])
def test_hugging_face_models_are_library_code_and_not_read(build):
    data = lint.lint_model(build(), _ids())
    assert data["counts"]["RISK"] == 0 and data["counts"]["CAUTION"] == 0
    assert data["classes_scanned"] == []  # every class lives in site-packages or torch
    reasons = {c["reason"] for c in data["classes_ignored"]}
    assert reasons == {lint._IGNORE_REASONS["torch"], lint._IGNORE_REASONS["library"]}
    assert next(d for d in data["dynamic"] if d["check"] == "forward")["status"] == "ok"


def test_scan_libraries_reads_hugging_face_without_crashing():
    data = lint.lint_model(_tiny_bert(), _ids(), scan_libraries=True)
    names = {c["name"] for c in data["classes_scanned"] if c["status"] == "scanned"}
    assert {"BertModel", "BertSelfAttention", "BertLayer"} <= names
    assert not any(c["module"].startswith("torch") for c in data["classes_scanned"])


def test_torch_transformer_encoder_is_not_read():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    data = lint.lint_model(model, ModelInputs(args=(torch.randn(2, 5, 16),)))
    assert data["findings"] == [] and data["classes_scanned"] == []
    assert all(c["reason"] == lint._IGNORE_REASONS["torch"] for c in data["classes_ignored"])


@pytest.mark.parametrize("target", ["examples/similarity_transformer.py:SimilarityTransformer",
                                    "examples/autoencoder.py:ModelAutoEncoder"])
def test_seed_examples_are_clean(target):
    if not os.path.exists(os.path.join(REPO, target.partition(":")[0])):
        pytest.skip("examples not merged yet")
    kwargs = ["--kwargs", '{"input_dim": 64, "hidden_dims": [32]}'] if "autoencoder" in target else \
        ["--kwargs", '{"d_model": 32, "num_heads": 2, "num_layers": 1, "dim_feedforward": 64}']
    data = run_json([os.path.join(REPO, target.partition(":")[0]) + ":" + target.partition(":")[2], *kwargs,
                     "--inputs", os.path.join(REPO, target.partition(":")[0]) + ":example_inputs", "--batch-size", "2"]
                    if "autoencoder" not in target else
                    [os.path.join(REPO, target), *kwargs, "--input", "float32[B=2,64]"])
    assert [f for f in data["findings"] if f["severity"] in ("RISK", "CAUTION")] == []
    assert [c["status"] for c in data["classes_scanned"]] == ["scanned"]


def test_class_defined_by_exec_is_skipped_with_reason():
    path = os.path.join(DEFECTS, "lint_exec_source.py")
    data = run_json([f"{path}:Wrapper"])
    by_name = {c["name"]: c for c in data["classes_scanned"]}
    assert by_name["Wrapper"]["status"] == "scanned"
    assert by_name["HiddenLayer"]["status"] == "skipped"
    assert by_name["HiddenLayer"]["reason"].startswith("source unavailable")
    assert data["findings"] == []  # the .item() inside HiddenLayer cannot be read, and is not guessed


def _state(model: nn.Module) -> dict:
    return {
        "values": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()],
        "rng": torch.get_rng_state().clone(),
        "grad_enabled": torch.is_grad_enabled(),
    }


def _assert_same(before: dict, after: dict) -> None:
    assert before["values"].keys() == after["values"].keys()
    for key in before["values"]:
        assert torch.equal(before["values"][key], after["values"][key]), key
    for name, grad in before["grads"].items():
        assert (grad is None) == (after["grads"][name] is None)
        if grad is not None:
            assert torch.equal(grad, after["grads"][name])
    for key in ("requires_grad", "training", "hooks", "grad_enabled"):
        assert before[key] == after[key], key
    assert torch.equal(before["rng"], after["rng"])


@pytest.mark.parametrize("filename,name", [("lint_failing_forward.py", "FailsHalfway"),
                                           ("lint_many_rules.py", "ManyRules"),
                                           ("lint_good_function.py", "TanhNet")])
def test_model_unchanged_after_lint_also_after_a_failing_forward(filename, name):
    loaded = cli.load_model(f"{os.path.join(DEFECTS, filename)}:{name}")
    model = loaded.module
    model.eval()
    first = next(model.parameters())
    first.grad = torch.full_like(first, 0.25)
    model.register_forward_hook(lambda *a: None)
    inputs = cli.default_input_source(loaded).build("cpu")
    before = _state(model)
    if DEFECT_FILES[filename][1]:
        with pytest.raises(cli.UserError, match="forward failed"):
            lint.lint_model(model, inputs, model_name=name)
    else:
        assert lint.lint_model(model, inputs, model_name=name)["custom_functions"]
    _assert_same(before, _state(model))


def test_dynamic_checks_find_dtype_and_device_problems():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    findings = lint.check_dtypes(model, ModelInputs(args=(torch.randn(2, 4, dtype=torch.float64),)))[2]
    assert [(f.rule, f.detail) for f in findings] == [
        ("input-dtype-mismatch", "input args[0] is float64, parameters are float32")]
    with pytest.raises(cli.UserError, match="forward failed in module '0' .*float64"):  # Linear refuses float64
        lint.lint_model(model, ModelInputs(args=(torch.randn(2, 4, dtype=torch.float64),)))

    model[1].to(torch.float64)
    status, _, findings = lint.check_dtypes(model, ModelInputs(args=(torch.randn(2, 4),)))
    assert status == "problem"
    assert [(f.rule, f.detail) for f in findings] == [
        ("mixed-parameter-dtypes", "parameters are float32 (2 tensors), float64 (2 tensors)")]

    model = nn.Linear(4, 2)
    status, detail, findings = lint.check_devices(model, ModelInputs(args=(torch.randn(2, 4, device="meta"),)))
    assert status == "problem"
    assert detail == "cpu: weight, bias (2); meta: input args[0] (1)"
    assert [f.rule for f in findings] == ["device-mismatch"] and lint.RULES["device-mismatch"].severity == "RISK"


def test_follow_depth_zero_reads_only_forward():
    path = os.path.join(DEFECTS, "lint_many_rules.py")
    data = run_json([f"{path}:ManyRules", "--follow-depth", "0", "--static-only"])
    lines = {line for _, line in in_file(data, path)}
    assert 22 not in lines and 9 not in lines and 25 not in lines  # in _normalise, _scale_of, _statistics
    assert 37 in lines  # `.data` in forward itself
    assert all(d["status"] == "skipped" for d in data["dynamic"])


def test_no_inputs_still_reads_the_source():
    class NoInputs(nn.Module):
        def forward(self, x):
            return x.detach()

    data = lint.lint_model(NoInputs(), None, no_inputs_reason="no inputs (pass --input)")
    assert [f["rule"] for f in data["findings"]] == ["detach"]
    assert all(d["status"] == "skipped" and d["detail"] == "no inputs (pass --input)" for d in data["dynamic"])


def test_cli_subprocess_json_and_markdown():
    target = "tests/defects/lint_item.py:ItemScale"
    result = subprocess.run([sys.executable, "scripts/lint.py", target, "--json"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["schema"] == "model-expert/lint/1"
    (finding,) = data["findings"]
    assert set(finding) == {"rule", "severity", "title", "file", "line", "code", "where", "message", "fix"}
    assert (finding["rule"], finding["line"], finding["severity"]) == ("tensor-to-python", 13, "RISK")
    assert {"findings", "classes_scanned", "classes_ignored", "custom_functions", "dynamic", "counts"} <= set(data)

    markdown = subprocess.run([sys.executable, "-m", "model_expert", "lint", target, "--markdown"],
                              cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": os.path.join(REPO, "scripts")})
    assert markdown.returncode == 0, markdown.stderr
    assert "| RISK " in markdown.stdout and "`tensor-to-python`" in markdown.stdout


@pytest.mark.parametrize("argv,expected", [
    (["tests/defects/lint_item.py:ItemScale", "--follow-depth", "-1"], "--follow-depth must be 0 or more, not -1"),
    (["tests/defects/lint_item.py:Missing"], "has no name 'Missing'"),
    (["tests/defects/lint_item.py:ItemScale", "--input", "flaot32[2,8]"], "unknown dtype 'flaot32'"),
])
def test_bad_input_is_one_line_exit_2(argv, expected, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(lint.CAPABILITY, [*argv, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and expected in captured.err


def test_decorated_forward_is_still_the_users_and_the_decorator_is_reported():
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 3)

        @torch.no_grad()
        def forward(self, x):
            return self.linear(x)

    data = lint.lint_model(Frozen(), ModelInputs(args=(torch.randn(2, 3),)))
    assert [c["name"] for c in data["classes_scanned"]] == [Frozen.__qualname__]
    (finding,) = data["findings"]
    assert (finding["rule"], finding["code"]) == ("grad-disabled", "@torch.no_grad()")
