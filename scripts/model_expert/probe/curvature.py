"""Curvature: the largest eigenvalue lambda_max of the loss Hessian on batch 0, by power iteration with
Hessian-vector products (double backward; Pearlmutter 1994). Gradient descent on a quadratic diverges
for lr > 2/lambda_max; heavy-ball momentum m (torch's SGD, dampening 0) moves the limit to
2(1+m)/lambda_max (Goh, "Why Momentum Really Works", Distill 2017).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..errors import UserError

ITERATIONS = 30
MIN_ITERATIONS = 8  # iterations run whatever the time budget
TOLERANCE = 1e-3  # relative change of the eigenvalue estimate between iterations


def divergence_lr(lambda_max: float, momentum: float = 0.0) -> float:
    """2(1+momentum)/lambda_max: the largest stable step of (heavy-ball) gradient descent on the quadratic."""
    return 2.0 * (1.0 + momentum) / lambda_max


def top_eigenvalue(bench, until: float, iterations: int = ITERATIONS) -> dict[str, Any]:
    """Power iteration v <- Hv/|Hv| from a seeded random start; the Rayleigh quotient v.Hv is the estimate."""
    bench.reset()
    parameters = bench.parameters
    loss = bench.loss(seed=0, dropout_seed=0)
    try:
        grads = torch.autograd.grad(loss, parameters, create_graph=True, allow_unused=True)
    except RuntimeError as error:
        raise UserError(f"no double backward: {str(error).splitlines()[0]}") from error
    pairs = [(p, g) for p, g in zip(parameters, grads) if g is not None and g.requires_grad]
    if not pairs:
        raise UserError("the gradient does not depend on the parameters (a linear loss): no curvature")
    generator = torch.Generator().manual_seed(0)
    vector = [torch.randn(p.shape, generator=generator).to(p.device, p.dtype) for p, _ in pairs]
    norm = math.sqrt(sum(float((v * v).sum()) for v in vector))
    vector = [v / norm for v in vector]
    estimate, done = None, 0
    for done in range(1, iterations + 1):
        try:
            product = torch.autograd.grad([g for _, g in pairs], [p for p, _ in pairs], grad_outputs=vector,
                                          retain_graph=True, allow_unused=True)
        except RuntimeError as error:
            raise UserError(f"no Hessian-vector product: {str(error).splitlines()[0]}") from error
        product = [h if h is not None else torch.zeros_like(v) for h, v in zip(product, vector)]
        rayleigh = sum(float((h * v).sum()) for h, v in zip(product, vector))
        norm = math.sqrt(sum(float((h * h).sum()) for h in product))
        if norm == 0 or not math.isfinite(norm):
            estimate = rayleigh
            break
        vector = [h / norm for h in product]
        converged = estimate is not None and abs(rayleigh - estimate) <= TOLERANCE * abs(rayleigh)
        estimate = rayleigh
        if converged or (done >= MIN_ITERATIONS and time.perf_counter() > until):
            break
    return {"lambda_max": estimate, "iterations": done, "tolerance": TOLERANCE}
