"""Recall on documented contract bugs and the false-RISK rate on fixed and correct models (bench/contract_corpus/).

Usage: python bench/contract_corpus.py [--only ID ...] [--markdown]
Prints one row per case (kind, verdict, seconds, the RISK texts) and the summary figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench" / "contract_corpus"))
os.chdir(REPO)

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

from cases import CASES, argv, verdict  # noqa: E402
from model_expert import cli  # noqa: E402
from model_expert.contract.cli import CAPABILITY  # noqa: E402


def run(entry: dict) -> dict:
    started = time.perf_counter()
    args = CAPABILITY.parser().parse_args(argv(entry))
    data = json.loads(cli.to_json(CAPABILITY.analyse(args)))
    return {**verdict(entry, data), "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--markdown", action="store_true")
    options = parser.parse_args()
    entries = [e for e in CASES if options.only is None or e["id"] in options.only]
    results = []
    for entry in entries:
        result = run(entry)
        results.append((entry, result))
        risks = "; ".join(f"{f['check']}/{f.get('input') or f.get('dim') or f.get('output')}" for f in result["risks"])
        print(f"{entry['id']:<36} {entry['kind']:<8} {'ok' if result['ok'] else 'MISS':<5} "
              f"{result['seconds']:5.1f} s  {risks}", flush=True)
    bugs = [r for e, r in results if e["kind"] == "bug"]
    clean = [r for e, r in results if e["kind"] != "bug"]
    found = sum(r["ok"] for r in bugs)
    false_risk = sum(bool(r["risks"]) for r in clean)
    wrong_convention = sum((not r["risks"]) and not r["ok"] for r in clean)
    print()
    print("| set | models | result |")
    print("|---|---|---|")
    print(f"| documented bugs | {len(bugs)} | recall {found}/{len(bugs)} = {found / max(len(bugs), 1):.0%} |")
    print(f"| fixed and correct models | {len(clean)} | false RISK {false_risk}/{len(clean)} = "
          f"{false_risk / max(len(clean), 1):.0%}; wrong convention {wrong_convention} |")
    print(f"| time per model | {len(results)} | median {sorted(r['seconds'] for _, r in results)[len(results) // 2]:.1f} s, "
          f"max {max(r['seconds'] for _, r in results):.1f} s |")


if __name__ == "__main__":
    main()
