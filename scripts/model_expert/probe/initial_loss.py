"""The first loss, and what it should be where the loss is recognisable.

Recognised: a loss that is one `F.cross_entropy` / `F.nll_loss` over C classes (Hugging Face's
causal-LM loss is one). At a uniform prediction each sample costs -ln(1/C) = ln C (Karpathy,
"A Recipe for Training Neural Networks", 2019: "verify loss @ init"). Calls are seen through a
TorchFunctionMode, so the loss module's own code is untouched.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# The cross-entropy family: the class dim of their input is dim 1 (dim 0 for an unbatched 1-D input).
CROSS_ENTROPY_FUNCTIONS = {F.cross_entropy: "cross_entropy", F.nll_loss: "nll_loss"}
# Gap (nats) between the measured and the uniform-prediction loss beyond which the start is flagged.
GAP_CAUTION_NATS = 0.5


class CrossEntropyCalls(TorchFunctionMode):
    """Records (name, number of classes, value) of every cross-entropy-family call."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, int, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = CROSS_ENTROPY_FUNCTIONS.get(func)
        if name is not None and args and isinstance(args[0], torch.Tensor):
            logits = args[0]
            classes = logits.shape[1] if logits.dim() > 1 else logits.shape[0]
            self.calls.append((name, int(classes), result.detach()))
        return result


def uniform_prediction_loss(classes: int) -> float:
    """ln C: cross-entropy of a uniform prediction over C classes."""
    return math.log(classes)


def measure(bench) -> dict[str, Any]:
    """initial_loss on batch 0 (train mode, dropout seed 0), expected_initial_loss where recognised, the gap."""
    bench.reset()
    with torch.no_grad(), CrossEntropyCalls() as seen:
        loss = bench.loss(seed=0, dropout_seed=0)
    value = float(loss)
    expected, how = None, "not recognised: the loss is not a single cross_entropy/nll_loss call"
    if len(seen.calls) == 1:
        name, classes, result = seen.calls[0]
        if result.numel() == 1 and torch.allclose(result.float().reshape(()), loss.reshape(()), rtol=1e-4, atol=1e-6):
            expected = uniform_prediction_loss(classes)
            how = f"{name} over {classes} classes at a uniform prediction: ln {classes}"
        else:
            how = f"not recognised: the loss is {name} plus other terms"
    elif len(seen.calls) > 1:
        how = f"not recognised: {len(seen.calls)} cross-entropy calls"
    gap = value - expected if expected is not None and math.isfinite(value) else None
    return {"initial_loss": value, "expected_initial_loss": expected, "expected_rule": how, "gap": gap}
