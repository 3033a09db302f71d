#!/usr/bin/env python3
"""Wall time of `probe.py` on the bundled examples with its default options, as a user runs it.

Prints a Markdown table (and writes bench/results_probe.md): example, wall seconds, one-batch steps done of those
asked, LR range test steps, line-search runs, verdict, breakdown LR, whether the time budget cut a measurement short. Usage: python bench/probe_time.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = {
    "ModelAutoEncoder (config.ini, batch 64, 22M params)": [
        "examples/autoencoder.py:ModelAutoEncoder", "--config", "examples/config.ini:autoencoder"],
    "ModelAutoEncoder (config.ini, batch 8)": [
        "examples/autoencoder.py:ModelAutoEncoder", "--config", "examples/config.ini:autoencoder", "--batch-size", "8"],
    "SimilarityTransformer + ranking_loss (config.ini)": [
        "examples/similarity_transformer.py:SimilarityTransformer", "--config", "examples/config.ini:similarity_transformer",
        "--loss", "examples/ranking_loss.py:ranking_loss"],
}


def run(argv: list[str]) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "scripts/probe.py", *argv, "--json"], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        return {"seconds": seconds, "error": result.stderr.strip()}
    data = json.loads(result.stdout)
    fit, sweep = data["overfit"], data["lr_range"]
    return {"seconds": seconds, "steps": f"{fit['steps']}/{fit['steps_asked']}",
            "sweep_steps": f"{len(sweep['lrs'])}, {sweep['steps']['trials']} runs of {sweep['steps']['per_trial']}",
            "verdict": fit["verdict"], "divergence_lr": sweep["breakdown_lr"],
            "cut_short": fit["cut_short"] or sweep["cut_short"]}


def main() -> None:
    rows = ["| example | wall s | one-batch steps | LR range test steps, line search | verdict | breakdown LR | budget cut it short |",
            "|---|---|---|---|---|---|---|"]
    for name, argv in EXAMPLES.items():
        row = run(argv)
        if "error" in row:
            rows.append(f"| {name} | {row['seconds']:.1f} | error: {row['error']} | | | | |")
        else:
            divergence = f"{row['divergence_lr']:.3g}" if row["divergence_lr"] is not None else "none"
            rows.append(f"| {name} | {row['seconds']:.1f} | {row['steps']} | {row['sweep_steps']} | {row['verdict']} | "
                        f"{divergence} | {'yes' if row['cut_short'] else 'no'} |")
        print(rows[-1], flush=True)
    header = (f"probe.py, default options, {os.cpu_count()} CPU cores, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load average at the end "
              f"{os.getloadavg()[0]:.1f}")
    text = "\n".join([header, "", *rows]) + "\n"
    (REPO / "bench" / "results_probe.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
