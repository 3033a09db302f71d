"""The healthy/sick corpus database (bench/health_corpus.toml): every entry complete, every target loadable as
written, enough models of each group, and the verdict rule of bench/health_corpus.py checked on hand-made evidence.
The reviews themselves are the benchmark's (minutes per model), not CI's."""

import os
import sys
import tomllib

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import health_corpus  # noqa: E402

ENTRIES = health_corpus.load()


def test_the_corpus_has_enough_of_each_group():
    groups = [e["group"] for e in ENTRIES]
    assert groups.count("healthy") >= 12 and groups.count("sick") >= 8
    assert len({e["name"] for e in ENTRIES}) == len(ENTRIES)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_entry_is_complete_and_names_real_files(entry):
    assert {"name", "group", "target", "options", "source", "why"} <= set(entry)
    assert entry["group"] in ("healthy", "sick")
    assert (entry["group"] == "sick") == ("cause" in entry) and all(entry.get("cause", ["x"]))
    paths = [entry["target"]] + [value for value in entry["options"] if ".py:" in value or ".ini:" in value]
    for reference in paths:
        path, _, name = reference.partition(":")
        assert os.path.isfile(REPO / path), reference
        assert f"def {name}" in (REPO / path).read_text() or f"class {name}" in (REPO / path).read_text() \
            or f"[{name}]" in (REPO / path).read_text(), reference


def test_verdict_rule():
    issue = {"title": "exploding gradient at `(global)`", "current_state": "input `x` is not scaled: its values range 0 to 100"}
    sick = {"group": "sick", "cause": ["not scaled"]}
    evidence = {"grads": {"findings": [{"severity": "RISK", "kind": "exploding_gradient", "where": "(global)",
                                        "message": issue["current_state"]}]}}
    found, ok = health_corpus.judge(sick, evidence)
    assert ok and [p for p, _ in found] == [1]
    assert health_corpus.judge({"group": "sick", "cause": ["dead"]}, evidence)[1] is False     # another cause: missed
    assert health_corpus.judge({"group": "healthy"}, evidence)[1] is False                     # any P1: a false alarm
    assert health_corpus.judge({"group": "healthy"}, {"grads": {"findings": []}})[1] is True
    caution = {"grads": {"findings": [{"severity": "CAUTION", "kind": "dead_units", "where": "relu", "message": "m"}]}}
    found, ok = health_corpus.judge({"group": "healthy"}, caution)
    assert ok and [p for p, _ in found] == [2]              # a P2 is shown with its measurement, not counted


def test_resnet18_written_out_has_torchvisions_parameter_count():
    from conftest import run_script
    result = run_script("params", "bench/health/models.py:ResNet18", "--device", "meta", "--depth", "0", "--json")
    assert result.returncode == 0, result.stderr
    import json
    assert json.loads(result.stdout)["total"] == 11_689_512      # torchvision.models.resnet18().parameters(), published
