"""LR finders scored on the LR corpus (bench/lr_corpus): regret = the final loss after 200 steps at a tool's suggested
LR / the final loss at the best LR of the truth's 24-point grid (bench/lr_corpus/truth.json, from truth.py), each run
from the same initial weights on the same batches (bench/lr_corpus/train.py).

Tools, each given the task's model, batches, loss and optimizer:
  probe            probe.py with its default LR options (--sweep-steps, --search-steps); --steps 20 for the
                   fit-one-batch check, which does not touch the LR; --time-budget-s 3600
  torch-lr-finder  torch_lr_finder.LRFinder.range_test(start 1e-7, end 10, 100 steps, exponential), suggestion =
                   the steepest gradient of its smoothed loss (skip_start 10, skip_end 5: its plot(suggest_lr=True))
  lightning        lightning's Tuner.lr_find (its defaults: 1e-8 to 1, 100 steps, exponential), .suggestion()
  naive default    Adam/AdamW 1e-3, SGD 1e-2
A suggestion "diverges" when its run goes non-finite, "stalls" when it keeps less than 10% of the best run's
improvement (truth.py's breakdown rule); "missing" when the tool gave none.

Benchmark dependencies (not runtime ones): pip install torch-lr-finder==0.2.2 lightning==2.6.6 torch==2.13.0
Usage: python bench/lr_bench.py [--tools probe,torch-lr-finder,lightning,naive] [--tasks NAME,...]
Writes bench/results_lr.md and bench/results_lr.json. On a shared machine, subsets in parallel, one core each:
  taskset -c 0 python bench/lr_bench.py --tasks A,B --rows-out /tmp/a.json  (...), then --merge /tmp/a.json ...
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.lr_corpus import tasks, train, truth  # noqa: E402
from model_expert.probe.cli import CAPABILITY as PROBE  # noqa: E402
from model_expert.probe.workbench import OPTIMIZERS  # noqa: E402
from model_expert.runner import call_model, compute_loss  # noqa: E402

TOOLS = ("probe", "torch-lr-finder", "lightning", "naive")
NAIVE = {"adam": 1e-3, "adamw": 1e-3, "sgd": 1e-2, "sgd-momentum": 1e-2}
RESULTS = Path(__file__).with_name("results_lr")


class Called(nn.Module):
    """The task's model called the way probe calls it (positional or keyword inputs) on a whole batch."""

    def __init__(self, run: train.Task):
        super().__init__()
        self.model, self.run = run.bench.model, run

    def forward(self, batch):
        inputs = self.run.session.input_source.pick(batch)
        from model_expert.inputs import as_model_inputs
        return call_model(self.model, as_model_inputs(inputs, "bench"), self.run.session.loaded.name)


def task_batches(run: train.Task) -> list:
    return run.session.input_source.batches()


def probe_lr(run: train.Task, task: dict) -> tuple[float | None, dict]:
    # a budget no task reaches: it only stops a run, and a stopped one would be "missing" here
    args = PROBE.parser().parse_args([*tasks.probe_argv(task), "--steps", "20", "--time-budget-s", "3600"])
    data = _quiet_probe(args)
    sweep = data["lr_range"]
    return sweep["suggested_lr"], {"breakdown_lr": sweep["breakdown_lr"], "steps": sweep["steps"],
                                   "no_suggestion_reason": sweep.get("no_suggestion_reason")}


def _quiet_probe(args):
    from model_expert.probe import cli as probe_cli
    return probe_cli.run_probe(args, on_progress=lambda message: None)


def torch_lr_finder_lr(run: train.Task, task: dict) -> tuple[float | None, dict]:
    from torch_lr_finder import LRFinder, TrainDataLoaderIter

    class Batches(TrainDataLoaderIter):
        def inputs_labels_from_batch(self, batch):
            return batch, batch  # the model picks its inputs; the loss reads the labels

    loader = torch.utils.data.DataLoader(task_batches(run), batch_size=None, shuffle=False)
    run.bench.reset()
    model = Called(run)
    cls, extra = OPTIMIZERS[task["optimizer"]]
    optimizer = cls(run.bench.parameters, lr=1e-7, **extra)
    finder = LRFinder(model, optimizer, lambda output, batch: compute_loss(run.session.loss_fn, output, batch=batch),
                      device="cpu")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        finder.range_test(Batches(loader), end_lr=10, num_iter=100, step_mode="exp")
    lrs, losses = finder.history["lr"][10:-5], finder.history["loss"][10:-5]  # plot()'s skip_start, skip_end
    finder.reset()
    if len(losses) < 2:
        return None, {"why": "too few points"}
    import numpy as np
    return float(lrs[int(np.gradient(np.array(losses)).argmin())]), {}


def lightning_lr(run: train.Task, task: dict) -> tuple[float | None, dict]:
    import lightning as L
    from lightning.pytorch.tuner import Tuner

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Called(run)
            self.lr = 1e-3

        def training_step(self, batch, index):
            return compute_loss(run.session.loss_fn, self.net(batch), batch=batch)

        def configure_optimizers(self):
            cls, extra = OPTIMIZERS[task["optimizer"]]
            return cls(run.bench.parameters, lr=self.lr, **extra)

    run.bench.reset()
    loader = torch.utils.data.DataLoader(task_batches(run), batch_size=None, shuffle=False)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            tempfile.TemporaryDirectory() as scratch:  # lr_find's checkpoint goes there, not into the checkout
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, max_epochs=100,
                            default_root_dir=scratch)
        finder = Tuner(trainer).lr_find(Module(), train_dataloaders=loader)
    run.bench.reset()
    suggestion = finder.suggestion() if finder is not None else None
    return (float(suggestion) if suggestion else None), {}


def naive_lr(run: train.Task, task: dict) -> tuple[float | None, dict]:
    return NAIVE[task["optimizer"]], {}


FINDERS = {"probe": probe_lr, "torch-lr-finder": torch_lr_finder_lr, "lightning": lightning_lr, "naive": naive_lr}


def score(run: train.Task, known: dict, lr: float | None) -> dict:
    if lr is None:
        return {"lr": None, "regret": None, "state": "missing"}
    final = run.final_loss(lr)
    state = ("diverges" if not math.isfinite(final) else
             "stalls" if truth.broken(known["initial_loss"], final, known["best_loss"]) else "ok")
    return {"lr": lr, "final_loss": final if math.isfinite(final) else None,
            "regret": final / known["best_loss"] if math.isfinite(final) else math.inf, "state": state}


def summary(rows: list[dict], tool: str) -> dict:
    regrets = [r[tool]["regret"] for r in rows if r[tool]["regret"] is not None]
    return {"median": statistics.median(regrets) if regrets else None, "worst": max(regrets) if regrets else None,
            "missing": sum(r[tool]["state"] == "missing" for r in rows),
            "diverges": sum(r[tool]["state"] == "diverges" for r in rows),
            "stalls": sum(r[tool]["state"] == "stalls" for r in rows), "tasks": len(rows)}


def fmt(value) -> str:
    if value is None:
        return "—"
    return "∞" if value == math.inf else f"{value:.3g}"


def markdown(rows: list[dict], tools: list[str], header: str) -> str:
    lines = [header, "", "| tool | median regret | worst | missing | diverges | stalls |", "|---|---|---|---|---|---|"]
    for tool in tools:
        s = summary(rows, tool)
        lines.append(f"| {tool} | {fmt(s['median'])} | {fmt(s['worst'])} | {s['missing']} of {s['tasks']} | "
                     f"{s['diverges']} | {s['stalls']} |")
    pairs = [(r["probe_breakdown_lr"], r["breakdown_lr"]) for r in rows if "probe_breakdown_lr" in r]
    both = [(mine, true) for mine, true in pairs if mine is not None and true is not None]
    if pairs:
        lines += ["", f"probe's breakdown LR within 2x of the truth's: {sum(1 / 2 <= m / t <= 2 for m, t in both)} of "
                      f"{len(both)} tasks where both have one; {sum(m is None and t is None for m, t in pairs)} where "
                      f"neither does; {sum((m is None) != (t is None) for m, t in pairs)} where one does (the truth's "
                      f"grid ends at 100)"]
    lines += ["", "| task | optimizer | best LR | breakdown LR | probe breakdown | "
              + " | ".join(f"{t} LR (regret)" for t in tools) + " |", "|---" * (5 + len(tools)) + "|"]
    for r in rows:
        cells = [f"{fmt(r[t]['lr'])} ({fmt(r[t]['regret'])}{'' if r[t]['state'] == 'ok' else ', ' + r[t]['state']})"
                 for t in tools]
        lines.append(f"| {r['task']} | {r['optimizer']} | {fmt(r['best_lr'])} | {fmt(r['breakdown_lr'])} | "
                     f"{fmt(r.get('probe_breakdown_lr'))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    parser.add_argument("--rows-out", metavar="FILE.json", help="write this run's rows there (to run subsets in parallel)")
    parser.add_argument("--merge", nargs="+", metavar="FILE.json", help="print and write the tables of these rows files")
    options = parser.parse_args()
    tools = [t for t in options.tools.split(",") if t]
    wanted = [t for t in options.tasks.split(",") if t]
    if options.merge:
        order = [t["name"] for t in tasks.TASKS]
        rows = sorted((row for path in options.merge for row in json.loads(Path(path).read_text())["rows"]),
                      key=lambda row: order.index(row["task"]))
        meta = [json.loads(Path(path).read_text())["meta"] for path in options.merge]
        header = (f"LR corpus ({len(rows)} tasks, bench/lr_corpus), 200 steps per score, {len(options.merge)} processes, one core each, "
                  f"in parallel on a shared 2-core machine, load average {max(m['load'] for m in meta):.1f}, "
                  f"{max(m['seconds'] for m in meta):.0f} s; `python bench/lr_bench.py`")
        write(rows, tools, header)
        return
    known = json.loads(truth.TRUTH.read_text())
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    rows, started = [], time.perf_counter()
    for task in tasks.TASKS:
        if wanted and task["name"] not in wanted:
            continue
        entry = known[task["name"]]
        row = {"task": task["name"], "optimizer": task["optimizer"], "best_lr": entry["best_lr"],
               "breakdown_lr": entry["breakdown_lr"]}
        for tool in tools:
            run = train.Task(task)
            try:
                clock = time.perf_counter()
                lr, extra = FINDERS[tool](run, task)
                seconds = time.perf_counter() - clock
                torch.set_num_threads(1)  # scoring as truth.py trains
                row[tool] = {**score(run, entry, lr), "seconds": seconds, **extra}
            finally:
                run.close()
            if tool == "probe":
                row["probe_breakdown_lr"] = extra.get("breakdown_lr")
        rows.append(row)
        print(f"{task['name']}: " + ", ".join(f"{t} {fmt(row[t]['lr'])} ({fmt(row[t]['regret'])})" for t in tools),
              flush=True)
    load = os.getloadavg()[0]
    header = (f"LR corpus ({len(rows)} tasks, bench/lr_corpus), 200 steps per score, {os.cpu_count()} CPUs, load "
              f"average {load:.1f}, {time.perf_counter() - started:.0f} s; `python bench/lr_bench.py`")
    if options.rows_out:
        Path(options.rows_out).write_text(json.dumps({"rows": rows, "meta": {
            "load": load, "seconds": time.perf_counter() - started}}, default=str))
    if not wanted:
        write(rows, tools, header)


def write(rows: list[dict], tools: list[str], header: str) -> None:
    text = markdown(rows, tools, header)
    print(text)
    RESULTS.with_suffix(".md").write_text(text + "\n")
    RESULTS.with_suffix(".json").write_text(json.dumps({"rows": rows, "summary": {t: summary(rows, t) for t in tools}},
                                                       indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
