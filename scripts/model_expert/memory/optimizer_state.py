"""Optimizers: how each is built, and the closed forms of the state it keeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

LEARNING_RATE = 1e-3  # any value: memory does not depend on it


@dataclass(frozen=True)
class OptimizerRule:
    description: str
    build: Callable[[list[torch.nn.Parameter], bool], torch.optim.Optimizer] | None  # (params, foreach)
    state_tensors_per_param: int  # param-shaped state tensors (same dtype as the parameter)


OPTIMIZER_RULES: dict[str, OptimizerRule] = {
    "adamw": OptimizerRule("torch.optim.AdamW (exp_avg, exp_avg_sq)",
                           lambda p, foreach: torch.optim.AdamW(p, lr=LEARNING_RATE, foreach=foreach), 2),
    "adam": OptimizerRule("torch.optim.Adam (exp_avg, exp_avg_sq)",
                          lambda p, foreach: torch.optim.Adam(p, lr=LEARNING_RATE, foreach=foreach), 2),
    "sgd": OptimizerRule("torch.optim.SGD without momentum (no state)",
                         lambda p, foreach: torch.optim.SGD(p, lr=LEARNING_RATE, foreach=foreach), 0),
    "sgd-momentum": OptimizerRule("torch.optim.SGD momentum=0.9 (momentum_buffer)",
                                  lambda p, foreach: torch.optim.SGD(p, lr=LEARNING_RATE, momentum=0.9, foreach=foreach), 1),
    "none": OptimizerRule("no optimizer step (forward and backward only)", None, 0),
}


def unique_trainable(parameters: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """Parameters that require grad, each tied tensor once."""
    seen: set[int] = set()
    result = []
    for parameter in parameters:
        if parameter.requires_grad and id(parameter) not in seen:
            seen.add(id(parameter))
            result.append(parameter)
    return result


def parameter_bytes(parameters: Iterable[torch.nn.Parameter]) -> int:
    """Sum of numel x element size."""
    return sum(p.numel() * p.element_size() for p in parameters)


def optimizer_state_bytes(optimizer: str, trainable: Iterable[torch.nn.Parameter]) -> int:
    """State bytes: (tensors per param) x param bytes; AdamW = 2 x, SGD-momentum = 1 x, SGD = 0 (step counters live on the CPU)."""
    return OPTIMIZER_RULES[optimizer].state_tensors_per_param * parameter_bytes(trainable)


def build_optimizer(optimizer: str, trainable: list[torch.nn.Parameter], foreach: bool) -> torch.optim.Optimizer | None:
    rule = OPTIMIZER_RULES[optimizer]
    if rule.build is None or not trainable:
        return None
    return rule.build(trainable, foreach)


def state_tensors(optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    if optimizer is None:
        return []
    return [value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)]
