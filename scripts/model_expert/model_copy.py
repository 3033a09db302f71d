"""Copies of the user's model that work for every module torch builds, and lazy modules made concrete.

`copy.deepcopy` refuses tensors autograd computed (non-leaf tensors). Pruning
(torch.nn.utils.prune), the hook-based torch.nn.utils.weight_norm and spectral_norm keep one as a
plain attribute (`module.weight = weight_orig * weight_mask`) that their forward pre-hook
recomputes before every call; the copy gets that attribute detached, and the hook recomputes it.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from .inputs import ModelInputs
from .runner import call_model


def derived_attribute_tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    """Non-leaf tensors held as plain module attributes (not parameters, not buffers)."""
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and not value.is_leaf:
                yield value


def copy_model(model: nn.Module, device: str | None = None) -> nn.Module:
    """A deep copy of MODEL; with DEVICE='meta' its parameters and buffers are meta tensors and no data is
    copied; another DEVICE moves the copy there. Tied tensors stay tied; the user's model is untouched."""
    memo: dict[int, Any] = {}
    for tensor in derived_attribute_tensors(model):
        memo[id(tensor)] = (torch.empty_like(tensor, device="meta") if device == "meta"
                            else tensor.detach().clone())
    if device == "meta":
        for parameter in model.parameters():
            if id(parameter) not in memo:
                memo[id(parameter)] = nn.Parameter(torch.empty_like(parameter, device="meta"),
                                                   requires_grad=parameter.requires_grad)
        for buffer in model.buffers():
            if id(buffer) not in memo:
                memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    duplicate = copy.deepcopy(model, memo)
    if device is not None and device != "meta":
        duplicate = duplicate.to(device)
    return duplicate


def lazy_modules(model: nn.Module) -> list[str]:
    """Names of the lazy modules (nn.LazyLinear, ...) whose parameters have no shape yet."""
    return [name or "(root)" for name, module in model.named_modules()
            if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params()]


def materialise_lazy(model: nn.Module, build_inputs: Callable[[], ModelInputs], model_name: str) -> None:
    """One forward without grad, in eval mode (no dropout draws, no running-stat updates), on the
    inputs: lazy modules take their shapes from it and initialise under torch.manual_seed(0), as
    models are built. MODEL must be the tools' own copy; the global RNG is restored."""
    inputs = build_inputs()
    modes = [(module, module.training) for module in model.modules()]
    rng = torch.get_rng_state()
    try:
        torch.manual_seed(0)
        model.eval()
        with torch.no_grad():
            call_model(model, inputs, model_name)
    finally:
        torch.set_rng_state(rng)
        for module, training in modes:
            module.training = training
