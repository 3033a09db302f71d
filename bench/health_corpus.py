"""The healthy/sick corpus (bench/health_corpus.toml) reviewed by report.py: per model its Priority 1 and 2 issues,
each next to the measurement behind it (the issue's measured state), then the false alarms on the healthy models
and the recall on the sick ones. Writes bench/results_health_corpus.md.

    python bench/health_corpus.py [--only NAME ...] [--out DIR]

Each review runs with --skip flops (FLOPs raise no issue) and report.py's own budget; expect minutes per model on
a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
DATABASE = os.path.join(ROOT, "bench", "health_corpus.toml")
RESULTS = os.path.join(ROOT, "bench", "results_health_corpus.md")


def load() -> list[dict]:
    with open(DATABASE, "rb") as stream:
        return tomllib.load(stream)["model"]


def review(entry: dict, out: str) -> tuple[dict | None, str, float]:
    """Run report.py on ENTRY; (evidence or None, error text, seconds)."""
    command = [sys.executable, os.path.join(ROOT, "scripts", "report.py"), entry["target"], *entry["options"],
               "--skip", "flops", "--out", out]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["(no message)"])[-1], seconds
    with open(os.path.join(out, "analysis.json"), encoding="utf-8") as stream:
        return json.load(stream), "", seconds


def judge(entry: dict, evidence: dict) -> tuple[list[tuple[int, dict]], bool]:
    """(the P1/P2 issues, verdict): healthy -> no P1 (each P2 is printed next to its measured state, for a reader to
    judge whether a measurement contradicts it); sick -> a P1/P2 whose title or measured state names a cause word."""
    from model_expert.report_view import _issues
    issues = _issues(evidence)
    found = [(1, i) for i in issues["p1"]] + [(2, i) for i in issues["p2"]]
    if entry["group"] == "healthy":
        return found, not any(p == 1 for p, _ in found)
    words = [w.lower() for w in entry["cause"]]
    return found, any(any(w in (i["title"] + " " + i["current_state"]).lower() for w in words) for _, i in found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="review only these entries (repeatable)")
    parser.add_argument("--out", default=os.path.join(ROOT, ".health_corpus"), help="where the reviews go")
    parser.add_argument("--reuse", action="store_true",
                        help="judge the reviews already in --out (OUT/NAME/analysis.json) instead of running report.py; "
                             "entries without one are listed as not reviewed")
    args = parser.parse_args()
    entries = [e for e in load() if not args.only or e["name"] in args.only]
    lines = ["| model | group | verdict | P1/P2 issues (measured state) | review s |", "|---|---|---|---|---|"]
    counts = {"healthy": [0, 0], "sick": [0, 0]}           # [passed, reviewed]
    for entry in entries:
        out = os.path.join(args.out, entry["name"])
        if args.reuse:
            if not os.path.exists(os.path.join(out, "analysis.json")):
                lines.append(f"| {entry['name']} | {entry['group']} | not reviewed | - | - |")
                continue
            with open(os.path.join(out, "analysis.json"), encoding="utf-8") as stream:
                evidence, error, seconds = json.load(stream), "", float("nan")
        else:
            evidence, error, seconds = review(entry, out)
        if evidence is None:
            verdict, text = "review failed", error
        else:
            found, ok = judge(entry, evidence)
            counts[entry["group"]][1] += 1
            counts[entry["group"]][0] += ok
            p2 = sum(p == 2 for p, _ in found)
            verdict = (("no P1" + (f", {p2} P2" if p2 else "")) if ok else "FALSE ALARM (P1)") \
                if entry["group"] == "healthy" else ("cause named" if ok else "MISSED")
            text = "<br>".join(f"P{p} {i['title']}: {i['current_state']}" for p, i in found) or "-"
        text = text.replace("|", "\\|").replace("\n", " ")
        took = "-" if seconds != seconds else f"{seconds:.0f}"     # nan: a reused review
        print(f"{entry['name']:<28} {entry['group']:<8} {verdict:<16} {took:>5} s  {text[:300]}", flush=True)
        lines.append(f"| {entry['name']} | {entry['group']} | {verdict} | {text} | {took} |")
    healthy_ok, healthy_n = counts["healthy"]
    sick_ok, sick_n = counts["sick"]
    summary = (f"healthy: {healthy_n - healthy_ok} with a Priority 1 false alarm of {healthy_n} reviewed (each P2 "
               f"shown with its measurement); sick: recall {sick_ok}/{sick_n}")
    print(summary)
    load_average = os.getloadavg()[0]
    with open(RESULTS, "w", encoding="utf-8") as stream:
        stream.write(f"# Healthy/sick corpus (bench/health_corpus.py)\n\n{summary}. Load average at the end "
                     f"{load_average:.1f} on {os.cpu_count()} CPUs.\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
