"""One training step, defined once: the estimate runs it on meta tensors, --measure and the GPU
validation run it on the real device. zero_grad(set_to_none) -> forward + loss (under autocast)
-> backward (scaled with a GradScaler for fp16-autocast) -> optimizer step. The output stays
alive until the step returns, as in a usual training loop."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..inputs import ModelInputs
from ..runner import call_model, compute_loss


@dataclass(frozen=True)
class Precision:
    description: str
    param_dtype: torch.dtype | None  # the model and its floating inputs are cast to this
    autocast_dtype: torch.dtype | None
    grad_scaler: bool


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision("fp32 parameters and math", None, None, False),
    "bf16": Precision("bf16 parameters, inputs and math", torch.bfloat16, None, False),
    "fp16": Precision("fp16 parameters, inputs and math", torch.float16, None, False),
    "bf16-autocast": Precision("fp32 parameters, torch.autocast(bfloat16)", None, torch.bfloat16, False),
    "fp16-autocast": Precision("fp32 parameters, torch.autocast(float16) with a GradScaler", None, torch.float16, True),
}


def cast_inputs(inputs: ModelInputs, dtype: torch.dtype | None) -> ModelInputs:
    """Floating tensors (at any depth of lists/tuples/dicts) cast to DTYPE; others untouched."""
    if dtype is None:
        return inputs

    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(dtype) if value.is_floating_point() else value
        if isinstance(value, (list, tuple)):
            return type(value)(cast(v) for v in value)
        if isinstance(value, dict):
            return {k: cast(v) for k, v in value.items()}
        return value

    return ModelInputs(args=cast(inputs.args), kwargs=cast(inputs.kwargs), batch=inputs.batch)


class MetaGradScaler:
    """What torch.amp.GradScaler allocates, on meta: a scale, an inverse scale and a found-inf flag; unscaling is in place."""

    def __init__(self, device: str = "meta"):
        self._scale = torch.full((), 65536.0, dtype=torch.float32, device=device)
        self._growth_tracker = torch.zeros((), dtype=torch.int32, device=device)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self._scale.to(loss.dtype)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        inv_scale = self._scale.double().reciprocal().float()
        found_inf = torch.zeros((1,), dtype=torch.float32, device=inv_scale.device)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, inv_scale)
        del found_inf, inv_scale
        optimizer.step()

    def update(self) -> None:
        pass


def training_step(model: nn.Module, inputs: ModelInputs, loss_fn: Callable | None,
                  optimizer: torch.optim.Optimizer | None, autocast: Callable[[], Any] = contextlib.nullcontext,
                  scaler: Any = None, phase: Callable[[str], None] = lambda name: None,
                  model_name: str = "the model") -> torch.Tensor:
    """One step; returns the detached loss. PHASE is told 'forward', 'backward', 'optimizer'."""
    phase("forward")
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    else:
        model.zero_grad(set_to_none=True)
    with autocast():
        output = call_model(model, inputs, model_name)
        loss = compute_loss(loss_fn, output, batch=inputs.batch)
    phase("backward")
    (scaler.scale(loss) if scaler is not None else loss).backward()
    phase("optimizer")
    if optimizer is not None:
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    phase("done")
    return loss.detach()


def inference_step(model: nn.Module, inputs: ModelInputs, autocast: Callable[[], Any] = contextlib.nullcontext,
                   model_name: str = "the model") -> None:
    """Eval-mode forward without grad (the caller sets eval)."""
    with torch.no_grad(), autocast():
        call_model(model, inputs, model_name)
