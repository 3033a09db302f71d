"""Every mermaid block the scripts print parses with mermaid's own parser (so GitHub renders it).

The parser is the `mermaid` npm package run in node (tests/mermaid_check.py installs it outside the
repository); without node/npm or the package this test fails, it does not skip.
"""

import pytest

from conftest import run_script
from mermaid_check import blocks, parse

FX = "tests/fixtures/probe_models.py"


@pytest.fixture(scope="module")
def emitted():
    """{script: its Markdown}: grads' per-layer chart, probe's loss curve and LR range charts (the review
    prints the same functions' blocks)."""
    outputs = {
        "grads": run_script("grads", f"{FX}:HealthyMLP", "--inputs", f"{FX}:mlp_inputs", "--loss", f"{FX}:mse_to_targets",
                            "--batches", "2", "--markdown"),
        "probe": run_script("probe", f"{FX}:HealthyMLP", "--inputs", f"{FX}:mlp_inputs", "--loss", f"{FX}:mse_to_targets",
                            "--lr", "1e-2", "--steps", "80", "--sweep-steps", "40", "--search-steps", "8", "--markdown"),
        "probe (diverging, negative log10 values)": run_script(
            "probe", f"{FX}:LeastSquares", "--inputs", f"{FX}:least_squares_inputs", "--loss", f"{FX}:least_squares_loss",
            "--optimizer", "sgd", "--lr", "6", "--steps", "40", "--sweep-steps", "20", "--search-steps", "8",
            "--markdown"),
    }
    for name, result in outputs.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-1500:]}"
    return {name: result.stdout for name, result in outputs.items()}


def test_every_mermaid_block_parses(emitted):
    found = {name: blocks(markdown) for name, markdown in emitted.items()}
    assert len(found["grads"]) == 1 and len(found["probe"]) == 2  # what each script draws
    diagrams = [(name, text) for name, texts in found.items() for text in texts]
    errors = parse([text for _, text in diagrams])
    failures = [f"{name}:\n{text}\n-> {error}" for (name, text), error in zip(diagrams, errors) if error]
    assert not failures, "\n\n".join(failures)


def test_the_parser_rejects_a_broken_chart():
    # The check can fail: a line series cut short is a parse error.
    assert parse(["xychart-beta\n    line [1, 2,"])[0] is not None
