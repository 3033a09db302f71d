"""The LR range test (Smith, "Cyclical Learning Rates", 2017; the fastai/Lightning LR finder): from the model's
initial weights, one optimizer step per sampled batch while the LR grows exponentially from LR_MIN to LR_MAX;
the loss is smoothed by an exponential moving average (bias-corrected); the run has diverged when the smoothed
loss exceeds DIVERGE_FACTOR x its minimum so far. Suggested LR: a decade below the divergence LR (the sweep
notices divergence late, and on a flat curve of sampled batches the minimum is noise); without divergence, the
LR at the smoothed minimum / 10 (fastai's lr_min).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

LR_MIN = 1e-7
LR_MAX = 10.0
SMOOTHING = 0.98  # EMA weight of the previous smoothed loss (fastai's beta)
DIVERGE_FACTOR = 4.0  # fastai's and Lightning's early-stop threshold
SUGGESTION_DIVISOR = 10.0


def exponential_lrs(lr_min: float, lr_max: float, steps: int) -> list[float]:
    """lr_min * (lr_max/lr_min)^(i/(steps-1)) for i = 0..steps-1."""
    if steps == 1:
        return [lr_min]
    return [lr_min * (lr_max / lr_min) ** (i / (steps - 1)) for i in range(steps)]


MIN_STEPS = 12  # fewer points than this cannot show where the loss turns up


def steps_that_fit(asked: int, seconds: float, step_seconds: float | None) -> int:
    """ASKED, or fewer (at least MIN_STEPS) when ASKED steps of STEP_SECONDS would not fit in SECONDS: the sweep
    then covers the same LR range in larger factors rather than stopping half way."""
    if not step_seconds or step_seconds <= 0:
        return asked
    return max(min(asked, MIN_STEPS), min(asked, int(seconds / step_seconds)))


def method_text(steps: int) -> str:
    return (f"LR range test: {steps} steps, LR from {LR_MIN:g} to {LR_MAX:g} growing exponentially, one sampled "
            f"batch per step, loss smoothed by an EMA (beta {SMOOTHING:g}, bias-corrected), diverged when the "
            f"smoothed loss > {DIVERGE_FACTOR:g} x its minimum; suggested LR = the divergence LR / "
            f"{SUGGESTION_DIVISOR:g} (without divergence none: a minimum of a short sweep on sampled batches is "
            f"noise, not a learning rate)")


def range_test(bench, optimizer_name: str, steps: int, until: float, progress: Callable[[str], None],
               batches: int) -> dict[str, Any]:
    """Sweep; stops at divergence, a non-finite loss, or UNTIL. BATCHES: how many distinct batches to cycle."""
    bench.reset()
    planned = exponential_lrs(LR_MIN, LR_MAX, steps)
    optimizer = bench.optimizer(optimizer_name, planned[0])
    lrs: list[float] = []
    losses: list[float] = []
    average, best, best_lr, divergence = 0.0, math.inf, None, None
    stopped_by_time = False
    report_every = max(1, steps // 5)
    for step, lr in enumerate(planned):
        if step >= MIN_STEPS and time.perf_counter() > until:
            stopped_by_time = True
            break
        for group in optimizer.param_groups:
            group["lr"] = lr
        raw = bench.train_step(optimizer, seed=step % batches, dropout_seed=step)
        if not math.isfinite(raw):
            divergence = lr
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * raw
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        lrs.append(lr)
        losses.append(smoothed)
        if step % report_every == 0:
            progress(f"LR range test: step {step}/{steps}, lr {lr:.3g}, smoothed loss {smoothed:.4g}")
        if smoothed < best:
            best, best_lr = smoothed, lr
        if step and best > 0 and smoothed > DIVERGE_FACTOR * best:
            divergence = lr
            break
    return {"method": method_text(steps), "lrs": lrs, "losses": losses,
            "suggested_lr": divergence / SUGGESTION_DIVISOR if divergence is not None else None,
            "divergence_lr": divergence, "sweep_divergence_lr": divergence, "min_loss_lr": best_lr,
            "stopped_by_time_budget": stopped_by_time,
            "parameters": {"lr_min": LR_MIN, "lr_max": LR_MAX, "steps": steps, "smoothing": SMOOTHING,
                           "diverge_factor": DIVERGE_FACTOR, "suggestion_divisor": SUGGESTION_DIVISOR}}
