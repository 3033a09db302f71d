"""Train one corpus task at one LR, the way the truth is defined: from the model's initial weights (built as probe.py
builds it), STEPS optimizer steps, step i on batch i mod the batch count; the final loss is the mean training loss of
the last quarter of the steps (what a training log shows at the end: a snapshot after the last step of Adam at a high
LR is as much luck as learning; the grid's neighbours differed by 2x on the snapshot). Non-finite anywhere: the run
diverged (loss inf)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT / "scripts", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.chdir(ROOT)  # the tasks' FILE.py:FN locations are relative to the repository root

from model_expert import cli  # noqa: E402
from model_expert.guard import preserved  # noqa: E402
from model_expert.probe.cli import CAPABILITY  # noqa: E402
from model_expert.probe.workbench import Workbench  # noqa: E402

from bench.lr_corpus import tasks  # noqa: E402

STEPS = 200


class Task:
    """A task's model copy, batches and loss, ready to train at any LR from the same initial weights."""

    def __init__(self, task: dict):
        self.task = task
        self.args = CAPABILITY.parser().parse_args(tasks.probe_argv(task))
        self.session = cli.open_session(self.args)
        self.guard = preserved(self.session.model)
        self.guard.__enter__()
        self.bench = Workbench(self.session.model, lambda seed: self.session.build_inputs(seed=seed),
                               self.session.loss_fn, self.session.loaded.name)
        self.batches = tasks.batch_count(task)

    def close(self):
        self.guard.__exit__(None, None, None)

    def initial_loss(self) -> float:
        """The same window's batches at the initial weights (what LR 0 would score)."""
        self.bench.reset()
        with torch.no_grad():
            values = [float(self.bench.loss(seed=step % self.batches, dropout_seed=step))
                      for step in range(STEPS - STEPS // 4, STEPS)]
        return sum(values) / len(values)

    def final_loss(self, lr: float, steps: int = STEPS) -> float:
        self.bench.reset()
        optimizer = self.bench.optimizer(self.task["optimizer"], lr)
        window = []
        for step in range(steps):
            value = self.bench.train_step(optimizer, seed=step % self.batches, dropout_seed=step)
            if not math.isfinite(value):
                return math.inf
            if step >= steps - steps // 4:
                window.append(value)
        return sum(window) / len(window)
