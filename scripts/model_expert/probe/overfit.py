"""Fit one batch: K optimizer steps on one fixed batch (batch 0), train mode; the loss curve and a verdict.

The verdict is judged against what a constant predictor reaches on the same batch (`constant_loss`: the loss of the
best single output broadcast over the batch, fitted directly; a model that only learns its output bias gets there and
no further), when the loss takes the model's output; else against the initial loss:
  diverges  the loss goes non-finite, ends above DIVERGE_FACTOR x the initial loss, or ever exceeds
            BLOW_UP_FACTOR x it (a spike that comes back down is not divergence)
  fits      final <= FITS_RATIO x the reference (the constant predictor's loss, else the initial loss)
  learning  final below (1 - LEARNING_MARGIN) x the constant predictor's loss (without it: below
            (1 - LEARNING_MARGIN) x the initial loss)
  stalled   otherwise: no better than a constant output (or no real decrease)
Fewer than MIN_JUDGED_STEPS steps judge nothing but divergence ("too_few_steps"); so do Adam-family runs whose
steps x lr stay below ADAM_MIN_TRAVEL (each weight moves at most about lr per step: too little to call a stall).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

FITS_RATIO = 0.1
LEARNING_MARGIN = 0.1
DIVERGE_FACTOR = 1.5
BLOW_UP_FACTOR = 10.0
MIN_JUDGED_STEPS = 20  # Adam's bias-corrected first steps move every weight by about lr: judge no fewer
ADAM_MIN_TRAVEL = 0.01  # Adam moves each weight by at most about lr per step: steps x lr below this cannot show a stall
ADAM_FAMILY = ("adam", "adamw")
CONSTANT_STEPS, CONSTANT_LR = 300, 0.1  # Adam on the constant output: converges on cross-entropy and MSE
VERDICT_RULE = (f"against the constant predictor's loss c (else the initial loss): fits: final <= {FITS_RATIO:g} x c; "
                f"learning: final < {1 - LEARNING_MARGIN:g} x c; stalled: otherwise; diverges: non-finite, ending above "
                f"{DIVERGE_FACTOR:g} x initial, or ever above {BLOW_UP_FACTOR:g} x initial (the step given is the first "
                f"above {DIVERGE_FACTOR:g} x); judged on at least {MIN_JUDGED_STEPS} steps")


def verdict(losses: list[float], constant: float | None = None) -> tuple[str, int | None]:
    """(verdict, the step where it diverged or None) from the loss before each step and the constant predictor's
    loss. A transient spike (Adam's first steps often make one) that comes back down is not divergence."""
    initial, final = losses[0], losses[-1]
    first_rise = next((step for step, value in enumerate(losses)
                       if not math.isfinite(value) or (initial > 0 and value > DIVERGE_FACTOR * initial)), None)
    if first_rise is not None and (not all(math.isfinite(v) for v in losses) or final > DIVERGE_FACTOR * initial
                                   or max(losses) > BLOW_UP_FACTOR * initial):
        return "diverges", first_rise
    if len(losses) - 1 < MIN_JUDGED_STEPS:
        return "too_few_steps", None
    reference = constant if constant is not None and 0 < constant < initial else initial
    if reference <= 0:
        return ("stalled" if final >= reference else "learning"), None
    if final <= FITS_RATIO * reference:
        return "fits", None
    if final < (1 - LEARNING_MARGIN) * reference:
        return "learning", None
    return "stalled", None


def constant_loss(bench) -> tuple[float | None, str]:
    """(loss, rule): the lowest loss on batch 0 of one output vector broadcast over the batch (dim 0), fitted by
    Adam; None where the loss does not take the model's output as one tensor (a model returning its own .loss)."""
    if bench.loss_fn is None:
        return None, "not measured: the model computes its own loss"
    from ..runner import compute_loss
    bench.reset()
    with torch.no_grad():
        output, _ = bench.output_and_loss(seed=0, dropout_seed=0)
    if not (isinstance(output, torch.Tensor) and output.is_floating_point() and output.dim() >= 1):
        return None, "not measured: the output is not one floating tensor"
    batch = bench.inputs(0).batch
    constant = output.detach().float().mean(0, keepdim=True).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([constant], lr=CONSTANT_LR)
    best = math.inf
    with torch.enable_grad():
        for _ in range(CONSTANT_STEPS):
            optimizer.zero_grad()
            loss = compute_loss(bench.loss_fn, constant.expand_as(output).to(output.dtype), batch=batch).float()
            value = float(loss.detach())
            if not math.isfinite(value):
                return None, "not measured: the loss of a constant output is not finite"
            best = min(best, value)
            loss.backward()
            optimizer.step()
    return best, (f"one output broadcast over the batch, fitted by Adam (lr {CONSTANT_LR:g}, {CONSTANT_STEPS} steps): "
                  f"what a model that only learns its output bias reaches")


def steps_to_halve(losses: list[float]) -> int | None:
    """The first step whose loss is <= half the initial loss."""
    if not losses or losses[0] <= 0:
        return None
    return next((step for step, value in enumerate(losses) if math.isfinite(value) and value <= 0.5 * losses[0]), None)


def fit_one_batch(bench, optimizer_name: str, lr: float, steps: int, until: float,
                  progress: Callable[[str], None]) -> dict[str, Any]:
    """STEPS steps on batch 0 (dropout seed = step), stopped at the first non-finite loss or at UNTIL (cut short)."""
    constant, constant_rule = constant_loss(bench)
    bench.reset()
    optimizer = bench.optimizer(optimizer_name, lr)
    losses: list[float] = []
    stopped_by_time = False
    report_every = max(1, steps // 5)
    started = time.perf_counter()
    for step in range(steps + 1):  # STEPS updates, and the loss after the last one
        if step and time.perf_counter() > until:  # the first loss is always measured
            stopped_by_time = True
            break
        if step == steps:
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
    result, diverged_at = verdict(losses, constant)
    if stopped_by_time and result != "diverges":
        result = "cut_short"  # a verdict on the steps the clock allowed would depend on the machine
    elif result == "stalled" and optimizer_name in ADAM_FAMILY and (len(losses) - 1) * lr < ADAM_MIN_TRAVEL:
        result = "too_few_steps"  # e.g. 25 steps at 1e-4: each weight moved at most 0.0025
    final = losses[-1]
    return {"steps": len(losses) - 1, "steps_asked": steps, "lr": lr, "optimizer": optimizer_name, "losses": losses,
            "final_loss": final,
            "ratio": final / losses[0] if losses[0] and math.isfinite(final) and losses[0] > 0 else None,
            "steps_to_halve": steps_to_halve(losses), "verdict": result, "diverged_at_step": diverged_at,
            "loss_at_divergence": losses[diverged_at] if diverged_at is not None else None,
            "constant_loss": constant, "constant_rule": constant_rule,
            "cut_short": stopped_by_time, "step_seconds": step_seconds, "rule": VERDICT_RULE}
