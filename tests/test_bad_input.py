"""Bad input never crashes: one or two lines on stderr naming the problem and the fix, exit 2, nothing on
stdout, no traceback without --debug, the working tree untouched. Plus fuzzing, Ctrl-C and JSON validity."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import REPO, SCRIPTS, assert_same_state, model_state, run_script
from model_expert.registry import CAPABILITIES
from model_expert.cli import main
from model_expert.errors import UserError
from model_expert.inputs import SpecInputs, parse_input_spec

M = "tests/fixtures/models.py"
B = "tests/fixtures/bad"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    (folder / "garbage.pt").write_bytes(os.urandom(256))
    torch.save({"wrong.weight": torch.zeros(2)}, folder / "wrong_keys.pt")
    return folder


# (capability, argv, what stderr must say). Each is a different way for a user to get it wrong.
CASES = [
    ("params", ["nope/missing.py:Model"], "does not exist"),
    ("params", [f"{B}/syntax_error.py:Broken"], "syntax error in"),
    ("params", [f"{B}/import_error.py:Model"], "No module named 'not_a_real_package_xyz'"),
    ("params", [f"{B}/raises_on_import.py:Model"], "raised RuntimeError: module-level failure"),
    ("params", [f"{M}:DoesNotExist"], "has no name 'DoesNotExist'"),
    ("params", [f"{M}:not_a_module"], "returned int, not a torch.nn.Module"),
    ("params", [f"{M}:NUMBER"], "is a int, not an nn.Module class"),
    ("params", [f"{M}:broken_factory"], "raised ValueError: factory exploded"),
    ("params", ["tests/fixtures"], "must look like"),
    ("params", ["tests/fixtures:Model"], "is a directory"),
    ("params", [f"{M}:make_mlp", "--kwargs", "{hidden: 3"], "--kwargs is not valid JSON"),
    ("params", [f"{M}:make_mlp", "--kwargs", "[1, 2]"], "must be a JSON object"),
    ("params", [f"{M}:make_mlp", "--kwargs", '{"hiden": 3}'], "it accepts hidden, frozen_first"),
    ("params", [f"{M}:INSTANCE", "--kwargs", '{"hidden": 3}'], "is a module instance"),
    ("params", [f"{M}:TinyMLP", "--config", "missing.ini:model"], "--config file 'missing.ini' does not exist"),
    ("params", [f"{M}:TinyMLP", "--config", "examples/config.ini:nosuch"], "has no section [nosuch]"),
    ("params", [f"{M}:TinyMLP", "--config", "examples/config.ini"], "must look like config.ini:SECTION"),
    ("trace", [f"{M}:TinyMLP", "--input", "flaot32[4,8]"], "unknown dtype 'flaot32'"),
    ("trace", [f"{M}:TinyMLP", "--input", "float32[4,8"], "square brackets"),
    ("trace", [f"{M}:TinyMLP", "--input", "float32[-4,8]"], "negative"),
    ("trace", [f"{M}:TinyMLP", "--input", "float32[4.5,8]"], "not a whole number"),
    ("trace", [f"{M}:TinyMLP", "--input", ""], "it is empty"),
    ("trace", [f"{M}:TinyMLP", "--input", "float32[4,9]"], "forward failed in module 'net.0' (Linear)"),
    ("trace", [f"{M}:TinyMLP", "--input", "float32[4,8]", "--input", "float32[4,8]"], "takes 2 positional arguments but 3 were given"),
    ("trace", [f"{M}:TinyMLP", "--input", "y=float32[4,8]"], "unexpected keyword argument 'y'"),
    ("trace", [f"{M}:TinyMLP", "--inputs", f"{B}/models.py:inputs_that_raise"], "raised OSError: dataset not mounted"),
    ("trace", [f"{M}:TinyMLP", "--inputs", f"{B}/models.py:no_such_factory"], "has no name 'no_such_factory'"),
    ("trace", [f"{M}:TinyMLP", "--input", "float32[4,8]", "--inputs", f"{M}:example_inputs"], "not both"),
    ("trace", [f"{B}/models.py:NoExampleInputs"], "pass --input for each forward argument"),
    ("trace", [f"{M}:RaisesInForward", "--input", "float32[4,8]"], "RuntimeError: planted failure"),
    ("trace", [f"{M}:TinyMLP", "--device", "cuda"], "no CUDA GPU is visible"),
    ("trace", [f"{M}:TinyMLP", "--device", "gpu"], "invalid choice: 'gpu'"),
    ("trace", [f"{M}:TinyMLP", "--input", "float32[100000,100000,100000]"], "cannot allocate"),
    ("trace", [f"{M}:TinyMLP", "--batch-size", "0"], "--batch-size must be a positive whole number"),
    ("trace", [f"{M}:TinyMLP", "--dim", "T"], "bad --dim 'T'"),
    ("params", [f"{M}:TinyMLP", "--checkpoint", "missing.pt"], "--checkpoint 'missing.pt' does not exist"),
    ("params", [f"{M}:TinyMLP", "--checkpoint", "{ckpt}/garbage.pt"], "is not a PyTorch checkpoint"),
    ("params", [f"{M}:TinyMLP", "--checkpoint", "{ckpt}/wrong_keys.pt"], "missing 4 key(s)"),
    ("memory", [f"{M}:TinyMLP", "--optimizer", "adagrad"], "invalid choice: 'adagrad'"),
    ("memory", [f"{M}:TinyMLP", "--precision", "fp8"], "invalid choice: 'fp8'"),
    ("grads", [f"{M}:TinyMLP", "--loss", f"{B}/models.py:no_such_loss"], "has no name 'no_such_loss'"),
    ("grads", [f"{M}:TinyMLP", "--loss", f"{B}/models.py:loss_that_raises"], "raised ValueError: labels missing"),
    ("grads", [f"{M}:TinyMLP", "--loss", f"{B}/models.py:loss_not_scalar"], "must return a scalar tensor"),
    ("memory", [f"{M}:TinyMLP", "--gpu", "rtx9090"], "unknown --gpu 'rtx9090'"),
    ("memory", [f"{M}:TinyMLP", "--world-size", "2", "--strategy", "fsdp", "--shard-modules", "NoSuchBlock"],
     "has no module of class NoSuchBlock"),
    ("memory", [f"{M}:TinyMLP", "--world-size", "2", "--shard-modules", "Linear"], "use it with --world-size N"),
    ("memory", [f"{M}:TinyMLP", "--device", "meta", "--target-device", "cpu", "--measure"],
     "--measure runs the real step and needs real weights"),
]


def tree_listing():
    listing = {}
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git", "__pycache__", ".pytest_cache", ".node", ".hypothesis")]
        for name in files:
            path = os.path.join(root, name)
            listing[path] = os.stat(path).st_mtime_ns
    return listing


def run_in_process(capability, argv, capsys):
    module = importlib.import_module(CAPABILITIES[capability])
    try:
        code = main(module.CAPABILITY, argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("capability, argv, expected", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_input(capability, argv, expected, capsys, checkpoints, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = [a.replace("{ckpt}", str(checkpoints)) for a in argv]
    before = tree_listing()
    code, out, err = run_in_process(capability, argv, capsys)
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, err
    assert "Traceback" not in err
    assert expected in err, err
    assert tree_listing() == before, "the working tree changed"


@pytest.mark.parametrize("index", [0, 1, 12, 22, 35])
def test_bad_input_through_real_process(index, checkpoints):
    capability, argv, expected = CASES[index]
    result = run_script(capability, *[a.replace("{ckpt}", str(checkpoints)) for a in argv])
    assert result.returncode == 2 and result.stdout == ""
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = run_in_process("params", [f"{M}:broken_factory", "--debug"], capsys)
    assert code == 2 and "Traceback" in err and "factory exploded" in err


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40))
def test_input_grammar_fuzz_only_raises_user_error(text):
    try:
        spec = parse_input_spec(text)
    except UserError:
        return
    assert spec.dtype is not None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.from_regex(r"([a-z]{1,3}=)?(float32|int64|bool|bf16|qq)\[([A-Z]=)?-?\d{0,3}(,[A-Z]?=?\d{0,2}){0,3}\](<-?\d{0,3})?",
                              fullmatch=True), min_size=1, max_size=3))
def test_spec_lists_fuzz_build_on_meta(texts):
    try:
        SpecInputs(texts).build("meta")
    except UserError:
        pass


def test_ctrl_c_in_forward_restores_the_model(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    model = importlib.import_module("model_expert.target").import_location(f"{B}/models.py", "TARGET").INTERRUPTED
    model.calls = 0
    before = model_state(model)
    code, out, err = run_in_process("grads", [f"{B}/models.py:INTERRUPTED", "--inputs", f"{B}/models.py:four_features",
                                              "--batches", "5"], capsys)
    assert code == 130 and out == "" and "interrupted" in err
    model.calls = before_calls = 0  # the counter is the model's own Python state, not what we guard
    assert_same_state(before, model_state(model))
    assert before_calls == 0


def test_sigint_during_report_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "review"
    process = subprocess.Popen([sys.executable, str(SCRIPTS / "report.py"), "examples/autoencoder.py:ModelAutoEncoder",
                                "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    started = False
    while time.time() < deadline and not started:
        line = process.stderr.readline()
        started = "[2/" in line  # past loading, inside the analyses
    assert started, "the report never reached its second section"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stdout == "" and "interrupted" in stderr
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("capability", ["params", "trace", "lint", "grads", "memory", "flops"])
def test_json_output_is_valid_with_schema(capability):
    result = run_script(capability, f"{M}:TinyMLP", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["schema"] == f"model-expert/{capability}/1"
