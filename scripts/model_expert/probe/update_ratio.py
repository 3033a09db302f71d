"""Update size: after one optimizer step at the chosen LR from the initial weights, per parameter tensor
log10(|dw| / |w|) (Frobenius norms). Healthy band HEALTHY_LOG10: about 1e-3 per step, "a rough heuristic is
that this ratio should be somewhere around 1e-3" (Karpathy, CS231n notes "Neural Networks Part 3",
ratio of weight updates to weight magnitudes); a decade either side.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch

HEALTHY_LOG10 = (-4.0, -2.0)
BAND_SOURCE = ("CS231n 'Neural Networks Part 3' (Karpathy): updates/weights around 1e-3; the band is a decade "
               "either side")


def log10_ratio(update_norm: float, weight_norm: float) -> float | None:
    """log10(|dw|/|w|); None where |w| is 0 (a zero-initialised bias) or dw is 0."""
    if weight_norm == 0 or update_norm == 0 or not math.isfinite(update_norm):
        return None
    return math.log10(update_norm / weight_norm)


def measure(bench, optimizer_name: str, lr: float) -> dict[str, Any]:
    bench.reset()
    before = [p.detach().clone() for p in bench.parameters]
    optimizer = bench.optimizer(optimizer_name, lr)
    loss = bench.train_step(optimizer, seed=0, dropout_seed=0)
    layers = []
    with torch.no_grad():
        for (name, parameter), start in zip(bench.named_parameters, before):
            update = float(torch.linalg.vector_norm((parameter - start).float()))
            weight = float(torch.linalg.vector_norm(start.float()))
            layers.append({"name": name, "log10_ratio": log10_ratio(update, weight),
                           "update_norm": update, "weight_norm": weight})
    known = [layer["log10_ratio"] for layer in layers if layer["log10_ratio"] is not None]
    low, high = HEALTHY_LOG10
    outside = [layer["name"] for layer in layers
               if layer["log10_ratio"] is not None and not low <= layer["log10_ratio"] <= high]
    return {"lr": lr, "optimizer": optimizer_name, "loss_before_step": loss, "layers": layers,
            "median_log10": statistics.median(known) if known else None,
            "healthy_band_log10": list(HEALTHY_LOG10), "band_source": BAND_SOURCE, "outside_band": outside,
            "note": ("Adam's first step moves every element by about lr (m/sqrt(v) = sign(g)), so there the ratio "
                     "is about lr / rms(w)" if optimizer_name in ("adam", "adamw") else
                     "SGD's step is lr x the gradient"),
            "not_measured": [layer["name"] for layer in layers if layer["log10_ratio"] is None]}
