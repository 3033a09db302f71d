"""No script changes the user's model: values, tensors, grads, requires_grad, modes, hooks, RNG — also on failure."""

import importlib

import pytest
import torch

from conftest import REPO, assert_same_state, model_state
from model_expert.registry import CAPABILITIES
from model_expert.cli import main
from model_expert.target import import_location

FIXTURES = "tests/fixtures/models.py"
# Capabilities that take a model TARGET (the others read JSON files).
MODEL_CAPABILITIES = [name for name, module in CAPABILITIES.items()
                      if hasattr(importlib.import_module(module), "CAPABILITY")]
# Extra arguments a capability needs on these fixtures (kept small: this runs every capability).
EXTRA_ARGS = {"memory": ["--target-device", "cpu"], "report": ["--out", "{tmp}"],
              "probe": ["--loss", "tests/fixtures/probe_models.py:squared_outputs", "--steps", "10", "--sweep-steps", "12",
                        "--search-steps", "4"]}
# These may succeed without running the failing forward (recommend reports memory/grads as not measured).
RUN_WITHOUT_FORWARD = {"params", "recommend"}


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


def _argv(capability, target, inputs, extra):
    module = importlib.import_module(CAPABILITIES[capability])
    takes_inputs = "--inputs" in module.CAPABILITY.parser()._option_string_actions
    return module.CAPABILITY, [f"{FIXTURES}:{target}", *(["--inputs", f"{FIXTURES}:{inputs}"] if takes_inputs else []), *extra, "--json"]


def _fixture(name):
    return getattr(import_location(FIXTURES, "TARGET"), name)


# (instance, its inputs factory): frozen parts, existing .grad, a hook, BatchNorm; tied weights; a Hugging Face model in eval mode
CORPUS = [("SIDE_EFFECT_MODEL", "side_effect_inputs"), ("TIED_MODEL", "tied_inputs"), ("GPT2_MODEL", "gpt2_inputs")]


@pytest.mark.parametrize("capability", MODEL_CAPABILITIES)
@pytest.mark.parametrize("target, inputs", CORPUS)
def test_success_leaves_model_untouched(capability, target, inputs, capsys, tmp_path):
    extra = [a.replace("{tmp}", str(tmp_path / "out")) for a in EXTRA_ARGS.get(capability, [])]
    model = _fixture(target)
    before = model_state(model)
    code = main(*_argv(capability, target, inputs, extra))
    assert code == 0, capsys.readouterr().err
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("capability", MODEL_CAPABILITIES)
def test_failing_forward_leaves_model_untouched(capability, capsys, tmp_path):
    extra = [a.replace("{tmp}", str(tmp_path / "out")) for a in EXTRA_ARGS.get(capability, [])]
    model = _fixture("RAISING_MODEL")
    before = model_state(model)
    code = main(*_argv(capability, "RAISING_MODEL", "raising_inputs", extra))
    captured = capsys.readouterr()
    if capability in RUN_WITHOUT_FORWARD:
        assert code == 0, captured.err
    else:
        assert code == 2 and captured.out == "" and "planted failure" in captured.err
    assert_same_state(before, model_state(model))


def test_guard_restores_after_interrupt():
    from model_expert.guard import preserved
    model = _fixture("SIDE_EFFECT_MODEL")
    before = model_state(model)
    with pytest.raises(KeyboardInterrupt):
        with preserved(model):
            model.train()
            model(torch.randn(4, 4)).sum().backward()
            torch.rand(3)
            model.head.weight.data.mul_(2)
            raise KeyboardInterrupt
    assert_same_state(before, model_state(model))
