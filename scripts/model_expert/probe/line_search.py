"""A line search over the learning rate with real training runs: each trial trains STEPS optimizer steps from the
model's initial weights (batch i mod the batch count, as training would) at one LR, and is scored by the mean loss of
its last quarter of steps. Starting at the range test's bracket, the search climbs in factors of FACTOR (half a
decade) while the score improves, then tries the two points half a step either side of the best. The suggested LR is
the best trial.

Breakdown LR: the smallest LR above the best where training breaks: a loss goes non-finite or the run keeps less than
BROKEN_SHARE of the best trial's improvement over the initial weights (it diverged or stopped making progress); it is
bracketed to within a factor BRACKET by further trials (the largest LR that still trains lies below it).

Every figure depends only on the options (steps, LRs) and the batches: the clock can only stop the search
(`cut_short`), never change where it goes.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

FACTOR = math.sqrt(10.0)  # the climbing step: half a decade
MAX_CLIMBS = 6  # half-decade steps from the start before the search gives up climbing
BROKEN_SHARE = 0.1  # a run keeping less than this share of the best run's improvement has broken down
BRACKET = 2.0  # the breakdown LR is bracketed to within this factor
BREAKDOWN_TRIALS = 4  # half-decade steps above the best looking for a breakdown
LR_CEILING = 1e3  # no trial above this


class Cut(Exception):
    """The time budget ran out mid-search."""


class Trials:
    """Training runs from the initial weights, one per LR, cached; the score is the mean loss of the last quarter."""

    def __init__(self, bench, optimizer_name: str, steps: int, batches: int, until: float,
                 progress: Callable[[str], None]):
        self.bench, self.optimizer_name, self.steps, self.batches = bench, optimizer_name, steps, batches
        self.until, self.progress = until, progress
        self.window = range(steps - max(1, steps // 4), steps)
        self.scores: dict[float, float] = {}
        self.initial = self._initial_score()

    def _initial_score(self) -> float:
        """The score of LR 0: the initial weights' mean loss on the window's batches."""
        self.bench.reset()
        with torch.no_grad():
            values = [float(self.bench.loss(seed=step % self.batches, dropout_seed=step)) for step in self.window]
        return sum(values) / len(values)

    def score(self, lr: float) -> float:
        key = float(f"{lr:.6g}")
        if key in self.scores:
            return self.scores[key]
        self.bench.reset()
        optimizer = self.bench.optimizer(self.optimizer_name, key)
        losses = []
        for step in range(self.steps):
            if time.perf_counter() > self.until:
                raise Cut()
            value = self.bench.train_step(optimizer, seed=step % self.batches, dropout_seed=step)
            if not math.isfinite(value):
                break
            losses.append(value)
        window = losses[self.window.start:]
        result = sum(window) / len(window) if len(losses) == self.steps else math.inf
        if not math.isfinite(result):
            result = math.inf
        self.scores[key] = result
        self.progress(f"line search: lr {key:.3g}, mean loss of the last {len(self.window)} of {self.steps} steps "
                      f"{result:.4g}")
        return result

    def best(self) -> float:
        return min(self.scores, key=lambda lr: (self.scores[lr], lr))

    def broken(self, lr: float) -> bool:
        """Non-finite, or less than BROKEN_SHARE of the best trial's improvement over the initial weights."""
        best = self.scores[self.best()]
        return (not math.isfinite(self.scores[lr])
                or (self.initial - self.scores[lr]) < BROKEN_SHARE * (self.initial - best))


def climb(trials: Trials, start: float) -> float:
    """Half-decade steps from START in the direction that improves, until it stops improving; the best LR."""
    here = trials.score(start)
    up, down = trials.score(start * FACTOR), trials.score(start / FACTOR)
    direction = FACTOR if up < here else (1 / FACTOR if down < here else None)
    lr = start * direction if direction else start
    for _ in range(MAX_CLIMBS if direction else 0):
        step = lr * direction
        if step > LR_CEILING or trials.score(step) >= trials.score(lr):
            break
        lr = step
    best = trials.best()
    for neighbour in (best * math.sqrt(FACTOR), best / math.sqrt(FACTOR)):
        if neighbour <= LR_CEILING:
            trials.score(neighbour)
    return trials.best()


def bracket_breakdown(trials: Trials, best: float) -> tuple[float | None, float]:
    """(breakdown LR or None, the largest LR tried that still trains), bracketed to within BRACKET."""
    for _ in range(BREAKDOWN_TRIALS):
        above = sorted(lr for lr in trials.scores if lr > best)
        if any(trials.broken(lr) for lr in above):
            break
        top = max([best, *above]) * FACTOR
        if top > LR_CEILING:
            break
        trials.score(top)
    while True:
        stable = max(lr for lr in trials.scores if lr >= best and not trials.broken(lr))
        broken = [lr for lr in trials.scores if lr > stable and trials.broken(lr)]
        if not broken:
            return None, stable
        low_broken = min(broken)
        if low_broken / stable <= BRACKET * 1.0001:
            return low_broken, stable
        trials.score(math.sqrt(low_broken * stable))


def search(bench, optimizer_name: str, start: float, steps: int, batches: int, until: float,
           progress: Callable[[str], None]) -> dict[str, Any]:
    """The line search from START; every trial STEPS steps. Returns the trials, the best, the breakdown bracket."""
    trials = Trials(bench, optimizer_name, steps, batches, until, progress)
    result: dict[str, Any] = {"steps": steps, "start_lr": start, "initial_score": trials.initial, "cut_short": False}
    try:
        best = climb(trials, start)
        if trials.initial - trials.scores[best] > 0:
            breakdown, stable = bracket_breakdown(trials, best)
        else:  # no run learned: nothing to break down from (the caller says so instead of suggesting)
            breakdown = stable = None
    except Cut:
        best = breakdown = stable = None
        result["cut_short"] = True
    ordered = sorted(trials.scores)
    result.update({"lrs": ordered, "scores": [trials.scores[lr] if math.isfinite(trials.scores[lr]) else None
                                              for lr in ordered],
                   "best_lr": best, "best_score": trials.scores[best] if best is not None else None,
                   "breakdown_lr": breakdown, "largest_stable_lr": stable,
                   "learned": best is not None and trials.initial - trials.scores[best] > 0})
    return result


def method_text(search_steps: int, sweep_steps: int, trials: int) -> str:
    return (f"line search of real training runs: {trials} runs of {search_steps} steps from the initial weights, "
            f"each scored by the mean loss of its last {max(1, search_steps // 4)} steps, started at a tenth of the "
            f"LR where a {sweep_steps}-step range test blew up (else its steepest descent), climbing in factors of "
            f"{FACTOR:.3g} while the score improves, then {math.sqrt(FACTOR):.3g}x either side of the best; suggested LR "
            f"= the best run. Breakdown LR = the smallest LR above it whose run diverges or keeps less than "
            f"{BROKEN_SHARE:g} of the best run's improvement, bracketed within {BRACKET:g}x")
