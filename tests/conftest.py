"""Shared test helpers: repository paths, running the real CLIs, snapshots of a model's whole state."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
# report.py's clock never stops a section in the suite (--budget-s still sizes the checks): on a busy test machine
# the checked figures stay the same (tests/test_review_budget.py checks the clock itself).
os.environ["MODEL_EXPERT_NO_CLOCK"] = "1"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

REGENERATE = os.environ.get("MODEL_EXPERT_REGENERATE") == "1"


def run_script(script: str, *args: str, timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run scripts/<script>.py as a user would, from the repository root."""
    return subprocess.run([sys.executable, str(SCRIPTS / f"{script}.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


_RUNNING: list[pytest.Item] = []  # the test whose body is running (check_expected asks for its marker)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    _RUNNING.append(item)
    try:
        yield
    finally:
        _RUNNING.pop()


def check_expected(name: str, actual: str) -> None:
    """Compare with tests/expected/NAME; MODEL_EXPERT_REGENERATE=1 rewrites the file instead.
    The calling test must be marked expected_output: CI reruns those on other CPU kernels and one thread, so a
    digit that depends on the CPU fails there too."""
    if _RUNNING and _RUNNING[-1].get_closest_marker("expected_output") is None:
        pytest.fail(f"{_RUNNING[-1].nodeid} compares with tests/expected/{name} but is not marked "
                    "@pytest.mark.expected_output (the CI pass on other CPU kernels would miss it)")
    path = REPO / "tests" / "expected" / name
    if REGENERATE:
        path.write_text(actual)
        return
    assert path.exists(), f"{path} missing; regenerate with MODEL_EXPERT_REGENERATE=1"
    assert actual == path.read_text(), f"output differs from {path}; if the change is intended, regenerate"


def model_state(model: torch.nn.Module) -> dict:
    """Everything a script must leave as it found it."""
    hooks = {}
    for name, module in model.named_modules():
        hooks[name] = {attr: list(getattr(module, attr).keys()) for attr in dir(module)
                       if attr.startswith("_") and attr.endswith("hooks") and isinstance(getattr(module, attr, None), dict)}
    return {
        "values": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "tensor_ids": {k: id(v) for k, v in model.state_dict(keep_vars=True).items()},
        "grads": {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()},
        "grad_ids": {n: id(p.grad) for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "devices": {k: v.device for k, v in model.state_dict(keep_vars=True).items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": hooks,
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["values"].keys() == after["values"].keys()
    for key, value in before["values"].items():
        assert torch.equal(value, after["values"][key]), f"{key} changed"
        assert value.dtype == after["values"][key].dtype
    assert before["tensor_ids"] == after["tensor_ids"], "a parameter or buffer was replaced"
    for name, grad in before["grads"].items():
        other = after["grads"][name]
        assert (grad is None) == (other is None), f"{name}.grad appeared or vanished"
        if grad is not None:
            assert torch.equal(grad, other), f"{name}.grad changed"
    assert before["grad_ids"] == after["grad_ids"]
    for key in ("requires_grad", "devices", "training", "hooks"):
        assert before[key] == after[key], f"{key} changed"
    assert torch.equal(before["torch_rng"], after["torch_rng"]), "torch RNG state changed"
    assert before["python_rng"] == after["python_rng"], "python RNG state changed"


@pytest.fixture(scope="session")
def review_cache(tmp_path_factory):
    """report.py's review of (name, args), run once per session and shared by every test module that asks for
    the same arguments: get(name, *args) -> (out dir, analysis.md text, analysis.json data)."""
    made: dict = {}

    def get(name: str, *args):
        key = (name, tuple(map(str, args)))
        if key not in made:
            out = tmp_path_factory.mktemp(f"review-{name}") / name
            result = run_script("report", *args, "--out", out, timeout=900)
            assert result.returncode == 0, result.stderr[-3000:]
            assert "report: [1/" in result.stderr  # progress goes to stderr
            made[key] = (out, (out / "analysis.md").read_text(), json.loads((out / "analysis.json").read_text()))
        return made[key]
    return get


@pytest.fixture
def repo() -> Path:
    return REPO
