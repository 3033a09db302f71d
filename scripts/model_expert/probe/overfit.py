"""Fit one batch: K optimizer steps on one fixed batch (batch 0), train mode; the loss curve and a verdict.

Verdict rules (the loss is taken to be bounded below by about 0, as MSE and cross-entropy are):
  diverges  the loss goes non-finite, ends above DIVERGE_FACTOR x the initial loss, or ever exceeds
            BLOW_UP_FACTOR x it (a spike that comes back down is not divergence)
  fits      final <= FITS_RATIO x initial
  flat      final > FLAT_RATIO x initial: no real decrease
  slow      in between
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

FITS_RATIO = 0.1
FLAT_RATIO = 0.9
DIVERGE_FACTOR = 1.5
BLOW_UP_FACTOR = 10.0
MIN_STEPS = 10  # steps taken whatever the time budget: fewer cannot tell flat from slow
VERDICT_RULE = (f"fits: final <= {FITS_RATIO:g} x initial; flat: final > {FLAT_RATIO:g} x initial; diverges: "
                f"non-finite, ending above {DIVERGE_FACTOR:g} x initial, or ever above {BLOW_UP_FACTOR:g} x initial "
                f"(the step given is the first above {DIVERGE_FACTOR:g} x); slow: in between")


def verdict(losses: list[float]) -> tuple[str, int | None]:
    """(verdict, the step where it diverged or None) from the loss before each step. A transient spike (Adam's
    first steps often make one) that comes back down is not divergence; ending above, or blowing up, is."""
    initial, final = losses[0], losses[-1]
    first_rise = next((step for step, value in enumerate(losses)
                       if not math.isfinite(value) or (initial > 0 and value > DIVERGE_FACTOR * initial)), None)
    if first_rise is not None and (not all(math.isfinite(v) for v in losses) or final > DIVERGE_FACTOR * initial
                                   or max(losses) > BLOW_UP_FACTOR * initial):
        return "diverges", first_rise
    if initial <= 0:
        return ("flat" if final >= initial else "slow"), None
    ratio = final / initial
    if ratio <= FITS_RATIO:
        return "fits", None
    if ratio > FLAT_RATIO:
        return "flat", None
    return "slow", None


def steps_to_halve(losses: list[float]) -> int | None:
    """The first step whose loss is <= half the initial loss."""
    if not losses or losses[0] <= 0:
        return None
    return next((step for step, value in enumerate(losses) if math.isfinite(value) and value <= 0.5 * losses[0]), None)


def fit_one_batch(bench, optimizer_name: str, lr: float, steps: int, until: float,
                  progress: Callable[[str], None]) -> dict[str, Any]:
    """Up to STEPS steps on batch 0 (dropout seed = step), stopped at the first non-finite loss or at UNTIL."""
    bench.reset()
    optimizer = bench.optimizer(optimizer_name, lr)
    losses: list[float] = []
    stopped_by_time = False
    report_every = max(1, steps // 5)
    started = time.perf_counter()
    for step in range(steps + 1):  # STEPS updates, and the loss after the last one
        if step > MIN_STEPS and time.perf_counter() > until:
            stopped_by_time = True
            break
        if step == steps:
            import torch
            with torch.no_grad():
                losses.append(float(bench.loss(seed=0, dropout_seed=step)))
            break
        value = bench.train_step(optimizer, seed=0, dropout_seed=step)
        losses.append(value)
        if step % report_every == 0:
            progress(f"fit one batch: step {step}/{steps}, loss {value:.4g}")
        if not math.isfinite(value):
            break
    step_seconds = (time.perf_counter() - started) / len(losses)
    result, diverged_at = verdict(losses)
    final = losses[-1]
    return {"steps": len(losses) - 1, "steps_asked": steps, "lr": lr, "optimizer": optimizer_name, "losses": losses,
            "final_loss": final,
            "ratio": final / losses[0] if losses[0] and math.isfinite(final) and losses[0] > 0 else None,
            "steps_to_halve": steps_to_halve(losses), "verdict": result, "diverged_at_step": diverged_at,
            "loss_at_divergence": losses[diverged_at] if diverged_at is not None else None,
            "stopped_by_time_budget": stopped_by_time, "step_seconds": step_seconds, "rule": VERDICT_RULE}
