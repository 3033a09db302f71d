"""The contract corpus (bench/contract_corpus/cases.py): every fast case's known truth, one test per entry.

A bug must give the RISK its entry names (the check, and the input or dim it concerns); a fixed or correct
model must give no RISK and honour the convention its entry states. The whole corpus (with the Hugging Face
models) runs in bench/contract_corpus.py, which prints recall and the false-RISK rate.
"""

import json
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench" / "contract_corpus"))

from cases import CASES, argv, verdict  # noqa: E402
from model_expert import cli  # noqa: E402
from model_expert.contract.cli import CAPABILITY  # noqa: E402

FAST = [entry for entry in CASES if entry["fast"]]


def test_the_database_names_every_source_and_truth():
    assert len({e["id"] for e in CASES}) == len(CASES)
    assert sum(e["kind"] == "bug" for e in CASES) >= 10
    for entry in CASES:
        assert entry["source"]
        assert (entry["kind"] == "bug") == bool(entry["risk"]), entry["id"]
    for path in (REPO / "bench" / "contract_corpus").glob("*.py"):
        if path.name not in ("cases.py", "_inputs.py"):
            head = path.read_text().splitlines()[0]
            assert head.startswith(("# Source:", "# Correct third-party")), path.name


@pytest.mark.parametrize("entry", FAST, ids=[e["id"] for e in FAST])
def test_fast_case(entry, monkeypatch):
    monkeypatch.chdir(REPO)
    data = json.loads(cli.to_json(CAPABILITY.analyse(CAPABILITY.parser().parse_args(argv(entry)))))
    result = verdict(entry, data)
    assert result["ok"], (entry["id"], [f["text"] for f in result["risks"]], result.get("conventions"))
