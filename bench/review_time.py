#!/usr/bin/env python3
"""How long a full review takes: wall time, peak RSS and each section's share, idle and beside two CPU-bound processes.

    python bench/review_time.py                 # every case, idle then loaded
    python bench/review_time.py --quick         # the Quickstart and the tiny BERT only
    python bench/review_time.py --only unet --conditions idle --out bench/results_review_time.md

Each review is `python scripts/report.py ...` in a fresh process (as the agent runs it), at the default --budget-s.
Peak RSS is the child's own (os.wait4). "Same review" compares the loaded run's analysis.md with the idle run's:
the figures must not depend on the machine's speed or load. The load average (uptime) is printed with the figures:
on a shared machine the idle column is not idle, and the table says so.
Targets (issue 22): the Quickstart <= 15 s idle, every other case <= 60 s idle, <= 2.5x idle under the two
competing processes, peak RSS <= 1.5 GB, the same review idle and loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES_ST = "examples/similarity_transformer.py:SimilarityTransformer"
CASES: dict[str, list[str]] = {
    # The README's Quickstart command, as written there.
    "quickstart": [EXAMPLES_ST, "--config", "examples/config.ini:similarity_transformer", "--loss",
                   "examples/ranking_loss.py:ranking_loss", "--group", "model_path=model_proj", "--group",
                   "dataset_path=dataset_proj", "--set", "max_images", "--set", "num_models", "--vary",
                   "max_images=32,64", "--steps", "20000", "--samples-per-epoch", "50000"],
    "bert_tiny": ["bench/review_models.py:bert_tiny", "--inputs", "bench/review_models.py:bert_inputs"],
    "unet": ["bench/review_models.py:UNet", "--inputs", "bench/review_models.py:unet_inputs", "--loss",
             "bench/review_models.py:unet_loss"],
    "gru_seq2seq": ["bench/review_models.py:GRUSeq2Seq", "--inputs", "bench/review_models.py:seq2seq_inputs"],
    # The size the bundled project trains: 256 candidate models, d_model 512, 4 layers, ff 2048, 32 x 200 images.
    "similarity_project": [EXAMPLES_ST, "--kwargs", '{"d_model": 512, "num_layers": 4, "dim_feedforward": 2048}',
                           "--inputs", "examples/similarity_transformer.py:example_inputs", "--batch-size", "32",
                           "--dim", "max_images=200", "--dim", "num_models=256", "--loss",
                           "examples/ranking_loss.py:ranking_loss", "--set", "max_images", "--set", "num_models"],
}
QUICK = ("quickstart", "bert_tiny")
TARGET_S = {"quickstart": 15.0}
OTHER_TARGET_S, LOADED_RATIO, RSS_TARGET_BYTES = 60.0, 2.5, 1.5e9
COMPETITORS = 2
SPIN = "while True: pass"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def measured(name: str, out: Path, extra: list[str]) -> dict:
    """review() in a helper process that reports the child's own peak RSS (os.wait4 on that one child)."""
    helper = [sys.executable, __file__, "--one", name, "--one-out", str(out), "--extra", json.dumps(extra)]
    result = subprocess.run(helper, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        return {"case": name, "error": (result.stderr.strip().splitlines() or ["helper failed"])[-1]}
    return json.loads(result.stdout)


def run_one(name: str, out: str, extra: list[str]) -> None:
    command = [sys.executable, str(REPO / "scripts" / "report.py"), *CASES[name], *extra, "--out", out]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    row = {"case": name, "wall_s": wall, "returncode": code, "peak_rss_bytes": usage.ru_maxrss * 1024,
           "cpu_s": usage.ru_utime + usage.ru_stime, "load_after": load_average()}
    if code != 0:
        row["error"] = (stderr.strip().splitlines() or ["(no stderr)"])[-1]
    else:
        evidence = json.loads((Path(out) / "analysis.json").read_text())
        row["section_seconds"] = evidence.get("run", {}).get("section_seconds", {})
        row["section_cpu_seconds"] = evidence.get("run", {}).get("section_cpu_seconds", {})
        row["threads"] = evidence.get("run", {}).get("threads")
        row["budget"] = {k: evidence.get("review_budget", {}).get(k)
                         for k in ("batch_size", "traced_batch_size", "probe_steps", "probe_sweep_steps",
                                   "grads_batches", "cut_by_clock")}
        row["markdown"] = (Path(out) / "analysis.md").read_text().replace(out, "OUT")
    print(json.dumps(row))


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def shares(sections: dict[str, float]) -> str:
    total = sum(sections.values()) or 1.0
    ranked = sorted(sections.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {seconds / total:.0%}" for name, seconds in ranked[:4])


def verdict(row: dict, idle: dict | None) -> str:
    if "error" in row:
        return "failed"
    target = TARGET_S.get(row["case"], OTHER_TARGET_S)
    checks = [row["peak_rss_bytes"] <= RSS_TARGET_BYTES, not (row.get("budget") or {}).get("cut_by_clock")]
    if row["condition"] == "idle":
        checks.append(row["wall_s"] <= target)
    elif idle and "error" not in idle:
        checks.append(row["wall_s"] <= LOADED_RATIO * idle["wall_s"])
    return "meets" if all(checks) else "misses"


def table(rows: list[dict], header: str) -> str:
    by_case = {(r["case"], r["condition"]): r for r in rows}
    lines = [header, "", "| case | condition | wall s | x idle | CPU s | peak RSS MiB | threads | behavioural batch / probe steps "
             "| cut by the clock | same review as idle | sections (share of the CPU time) | load after | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        idle = by_case.get((row["case"], "idle"))
        if "error" in row:
            lines.append(f"| {row['case']} | {row['condition']} | failed: {row['error'][:120]} |  |  |  |  |  |  |  |  |  |  |")
            continue
        ratio = (f"{row['wall_s'] / idle['wall_s']:.2f}" if row["condition"] != "idle" and idle and "error" not in idle
                 else "")
        same = ("" if row["condition"] == "idle" or not idle or "error" in idle
                else ("yes" if row["markdown"] == idle["markdown"] else "NO"))
        budget = row.get("budget") or {}
        sized = (f"{budget.get('batch_size')} of {budget.get('traced_batch_size')} / "
                 f"{budget.get('probe_steps')}+{budget.get('probe_sweep_steps')}")
        cuts = budget.get("cut_by_clock") or []
        lines.append(f"| {row['case']} | {row['condition']} | {row['wall_s']:.1f} | {ratio} | {_number(row.get('cpu_s'))} | "
                     f"{row['peak_rss_bytes'] / 2**20:,.0f} | {row.get('threads')} | {sized} | "
                     f"{'; '.join(c.split(':')[0] for c in cuts) or 'nothing'} | {same} | "
                     f"{shares(row.get('section_cpu_seconds') or row['section_seconds'])} | {row['load_after']} | {verdict(row, idle)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--only", action="append", choices=tuple(CASES), help="one case (repeatable)")
    parser.add_argument("--conditions", default="idle,loaded", help="idle, loaded or both (default: idle,loaded)")
    parser.add_argument("--out", metavar="FILE.md", help="also write the table here (and FILE.json the rows)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--one-out", help=argparse.SUPPRESS)
    parser.add_argument("--extra", default="[]", help="more report.py options as a JSON list, e.g. '[\"--budget-s\", \"30\"]'")
    args = parser.parse_args()
    extra = json.loads(args.extra)
    if args.one:
        run_one(args.one, args.one_out, extra)
        return 0
    names = args.only or (list(QUICK) if args.quick else list(CASES))
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    header = (f"report.py review time ({platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} "
              f"usable CPUs, python {platform.python_version()}, torch {torch_version()}); "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average before: {load_average()}"
              + (f"; extra options {' '.join(extra)}" if extra else "")
              + f"; loaded = beside {COMPETITORS} CPU-bound python processes")
    print(header, file=sys.stderr)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="review-time-") as scratch:
        for condition in conditions:
            spinners = ([subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(COMPETITORS)]
                        if condition == "loaded" else [])
            try:
                for name in names:
                    row = measured(name, Path(scratch) / f"{name}-{condition}", extra)
                    row["condition"] = condition
                    rows.append(row)
                    if args.out:  # after every review, so a run cut short keeps the rows it finished
                        write(args.out, rows, header)
                    print(f"{name} {condition}: " + (f"{row['wall_s']:.1f} s, peak RSS "
                          f"{row['peak_rss_bytes'] / 2**20:,.0f} MiB, load {row['load_after']}" if "error" not in row
                          else f"failed: {row['error']}"), file=sys.stderr, flush=True)
            finally:
                for spinner in spinners:
                    spinner.kill()
                    spinner.wait()
    text = table(rows, header)
    print(text)
    if args.out:
        write(args.out, rows, header)
    return 0


def write(out: str, rows: list[dict], header: str) -> None:
    Path(out).write_text(table(rows, header) + "\n")
    Path(out).with_suffix(".json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "markdown"} for r in rows], indent=1) + "\n")


def torch_version() -> str:
    try:
        from importlib.metadata import version
        return version("torch")
    except Exception:  # noqa: BLE001 - only for the header
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
