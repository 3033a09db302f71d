"""The copy of the user's model that probe trains: built once, reset to the initial values before each trial.

The user's model is never stepped: `model_copy.copy_model` makes the copy (inside the caller's `preserved(model)`),
and every trial starts from the copy's saved initial values, so each trial starts from the model's own weights.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from typing import Any, Callable

import torch
from torch import nn

from ..errors import UserError
from ..inputs import ModelInputs
from ..model_copy import copy_model
from ..runner import call_model, compute_loss

# --optimizer -> (torch.optim class, keyword arguments beyond its defaults)
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "adamw": (torch.optim.AdamW, {}),
    "adam": (torch.optim.Adam, {}),
    "sgd": (torch.optim.SGD, {}),
    "sgd-momentum": (torch.optim.SGD, {"momentum": 0.9}),
}
ADAM_FAMILY = ("adamw", "adam")


def torch_default_lr(optimizer_name: str) -> float:
    """The `lr` default of the torch.optim class behind OPTIMIZER_NAME."""
    cls, _ = OPTIMIZERS[optimizer_name]
    return float(inspect.signature(cls).parameters["lr"].default)


class Deadline:
    """Wall-clock budget shared by the mechanisms: each may take a share of what is left."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.perf_counter())

    def share(self, fraction: float) -> float:
        """An absolute perf_counter() time: now + FRACTION of what is left."""
        return time.perf_counter() + fraction * self.left()


class Workbench:
    """A deep copy of the model in train mode, its initial values, its batches and its loss."""

    def __init__(self, model: nn.Module, build_inputs: Callable[[int], ModelInputs], loss_fn: Callable | None,
                 model_name: str, autocast_dtype: torch.dtype | None = None):
        self.model = copy_model(model)
        self.model.train()
        self.named_parameters = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.parameters = [p for _, p in self.named_parameters]
        self.frozen_parameters = [n for n, p in self.model.named_parameters() if not p.requires_grad]
        self.state = [t for t in list(self.model.parameters()) + list(self.model.buffers())]
        self.initial = [t.detach().clone() for t in self.state]
        self.build_inputs = build_inputs
        self.loss_fn = loss_fn
        self.model_name = model_name
        self.device_type = self.initial[0].device.type if self.initial else "cpu"
        self.autocast_dtype = autocast_dtype
        self._inputs: dict[int, ModelInputs] = {}

    def reset(self) -> None:
        """Initial values back into every parameter and buffer; no grads."""
        with torch.no_grad():
            for tensor, value in zip(self.state, self.initial):
                tensor.copy_(value)
        for parameter in self.parameters:
            parameter.grad = None

    def inputs(self, seed: int) -> ModelInputs:
        """Batch SEED (synthetic inputs drawn with that seed, or --data batch SEED); batch 0 is kept."""
        if seed in self._inputs:
            return self._inputs[seed]
        inputs = self.build_inputs(seed)
        if seed == 0:
            self._inputs[0] = inputs
        return inputs

    def output_and_loss(self, seed: int, dropout_seed: int) -> tuple[Any, torch.Tensor]:
        inputs = self.inputs(seed)
        torch.manual_seed(dropout_seed)  # the caller's preserved() restores the global RNG
        autocast = (torch.autocast(self.device_type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        with autocast:
            output = call_model(self.model, inputs, self.model_name)
            loss = compute_loss(self.loss_fn, output, batch=inputs.batch)
        return output, loss.float()

    def loss(self, seed: int, dropout_seed: int) -> torch.Tensor:
        return self.output_and_loss(seed, dropout_seed)[1]

    def optimizer(self, name: str, lr: float) -> torch.optim.Optimizer:
        cls, extra = OPTIMIZERS[name]
        return cls(self.parameters, lr=lr, **extra)

    def train_step(self, optimizer: torch.optim.Optimizer, seed: int, dropout_seed: int) -> float:
        """Loss on batch SEED, then backward and one optimizer step (none when the loss is not finite)."""
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(seed, dropout_seed)
        value = float(loss.detach())
        if not math.isfinite(value):
            return value
        if not loss.requires_grad:
            raise UserError("the loss does not require grad: no trainable parameter reaches it "
                            "(all frozen, or the output is detached); check requires_grad and the --loss function")
        loss.backward()
        optimizer.step()
        return value
