"""The truth of the LR corpus: for every task, train STEPS steps at each LR of a 24-point grid (1e-5 to 1e2, a factor
2.02 apart) from the same initial weights on the same batches (train.py: the final loss is the mean training loss of
the last quarter of the steps), and record
  best_lr        the grid LR with the lowest final loss
  breakdown_lr   the first grid LR above best_lr where training breaks: the loss goes non-finite or the run keeps
                 less than BROKEN_SHARE of the best run's improvement (initial - final): it diverged or stopped
                 making progress
Writes bench/lr_corpus/truth.json (committed: the bench reads it). Usage: python bench/lr_corpus/truth.py [NAME...]
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.lr_corpus import tasks, train  # noqa: E402

TRUTH = Path(__file__).with_name("truth.json")
BROKEN_SHARE = 0.1


def broken(initial: float, final: float, best_final: float) -> bool:
    """Non-finite, or less than BROKEN_SHARE of the best run's improvement."""
    return not math.isfinite(final) or (initial - final) < BROKEN_SHARE * (initial - best_final)


def truth_of(task: dict) -> dict:
    run = train.Task(task)
    try:
        initial = run.initial_loss()
        lrs = tasks.grid()
        finals = [run.final_loss(lr) for lr in lrs]
    finally:
        run.close()
    best = min(range(len(lrs)), key=lambda i: finals[i])
    breakdown = next((lrs[i] for i in range(best + 1, len(lrs)) if broken(initial, finals[i], finals[best])), None)
    return {"name": task["name"], "steps": train.STEPS, "initial_loss": initial, "lrs": lrs,
            "final_losses": [f if math.isfinite(f) else None for f in finals], "best_lr": lrs[best],
            "best_loss": finals[best], "breakdown_lr": breakdown}


def main(names: list[str]) -> None:
    torch.set_num_threads(1)  # tiny models: one thread is fastest and the figures do not depend on the machine
    known = json.loads(TRUTH.read_text()) if TRUTH.exists() else {}
    for task in tasks.TASKS:
        if names and task["name"] not in names:
            continue
        started = time.perf_counter()
        known[task["name"]] = truth_of(task)
        entry = known[task["name"]]
        breakdown = "none" if entry["breakdown_lr"] is None else f"{entry['breakdown_lr']:.3g}"
        print(f"{task['name']:50s} best lr {entry['best_lr']:.3g} (loss {entry['best_loss']:.4g}, initial "
              f"{entry['initial_loss']:.4g}), breakdown {breakdown} [{time.perf_counter() - started:.0f} s]", flush=True)
    order = [t["name"] for t in tasks.TASKS if t["name"] in known]
    TRUTH.write_text(json.dumps({name: known[name] for name in order}, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
