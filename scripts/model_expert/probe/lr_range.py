"""The LR range test (Smith, "Cyclical Learning Rates", 2017; the fastai/Lightning LR finder): from the model's
initial weights, one optimizer step per batch (batch i mod the batch count) while the LR grows exponentially from
LR_MIN to LR_MAX over a fixed number of steps; the loss is smoothed by a short exponential moving average
(bias-corrected); the sweep has blown up when the smoothed loss exceeds BLOW_UP_FACTOR x its minimum so far, or a
loss is not finite. It only brackets the search: `line_search` chooses the LR from real training runs.

Two points are read off the curve: the steepest descent (most negative slope of the smoothed loss against
log10 LR, torch-lr-finder's and Lightning's pick) and the blow-up LR.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

LR_MIN = 1e-6
LR_MAX = 100.0
SMOOTHING = 0.8  # EMA weight of the previous smoothed loss: a lag of about 4 steps, a third of a decade at 100 steps
BLOW_UP_FACTOR = 4.0  # fastai's and Lightning's early-stop threshold


def exponential_lrs(lr_min: float, lr_max: float, steps: int) -> list[float]:
    """lr_min * (lr_max/lr_min)^(i/(steps-1)) for i = 0..steps-1."""
    if steps == 1:
        return [lr_min]
    return [lr_min * (lr_max / lr_min) ** (i / (steps - 1)) for i in range(steps)]


def steepest_lr(lrs: list[float], losses: list[float]) -> float | None:
    """The LR where the smoothed loss falls fastest against log10(LR) (central differences), before the minimum's
    blow-up; None with fewer than 3 points."""
    if len(lrs) < 3:
        return None
    slopes = [(losses[i + 1] - losses[i - 1]) / (math.log10(lrs[i + 1]) - math.log10(lrs[i - 1]))
              for i in range(1, len(lrs) - 1)]
    return lrs[1 + min(range(len(slopes)), key=lambda i: slopes[i])]


def method_text(steps: int) -> str:
    return (f"LR range test: {steps} steps, LR from {LR_MIN:g} to {LR_MAX:g} growing exponentially, loss smoothed by an "
            f"EMA (beta {SMOOTHING:g}), stopped when the smoothed loss > {BLOW_UP_FACTOR:g} x its minimum")


def range_test(bench, optimizer_name: str, steps: int, batches: int, until: float,
               progress: Callable[[str], None]) -> dict[str, Any]:
    """STEPS steps unless the sweep blows up or the clock passes UNTIL (then `cut_short`)."""
    bench.reset()
    planned = exponential_lrs(LR_MIN, LR_MAX, steps)
    optimizer = bench.optimizer(optimizer_name, planned[0])
    lrs: list[float] = []
    losses: list[float] = []
    average, best, blow_up, cut_short = 0.0, math.inf, None, False
    report_every = max(1, steps // 5)
    for step, lr in enumerate(planned):
        if time.perf_counter() > until:
            cut_short = True
            break
        for group in optimizer.param_groups:
            group["lr"] = lr
        raw = bench.train_step(optimizer, seed=step % batches, dropout_seed=step)
        if not math.isfinite(raw):
            blow_up = lr
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * raw
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        lrs.append(lr)
        losses.append(smoothed)
        if step % report_every == 0:
            progress(f"LR range test: step {step}/{steps}, lr {lr:.3g}, smoothed loss {smoothed:.4g}")
        best = min(best, smoothed)
        if step and best > 0 and smoothed > BLOW_UP_FACTOR * best:
            blow_up = lr
            break
    # the steepest descent before the sweep's minimum (past it the loss only rises)
    upto = losses.index(min(losses)) + 2 if losses else 0
    return {"method": method_text(steps), "steps": steps, "lrs": lrs, "losses": losses,
            "steepest_lr": steepest_lr(lrs[:upto], losses[:upto]), "blow_up_lr": blow_up,
            "min_loss_lr": lrs[losses.index(min(losses))] if losses else None, "cut_short": cut_short,
            "parameters": {"lr_min": LR_MIN, "lr_max": LR_MAX, "steps": steps, "smoothing": SMOOTHING,
                           "blow_up_factor": BLOW_UP_FACTOR}}
