"""Value ranges of every input and output over sampled batches, and whether the output head is bounded."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..inputs import SpecInputs
from .core import Harness, call_unhooked, dtype_name, input_tensors, named_outputs

# The autograd node that produced an output -> the range that head confines it to (a bounded head).
BOUNDED_HEADS: dict[str, tuple[float, float]] = {
    "SigmoidBackward0": (0.0, 1.0),
    "SoftmaxBackward0": (0.0, 1.0),
    "TanhBackward0": (-1.0, 1.0),
    "HardtanhBackward0": (-1.0, 1.0),
    "HardsigmoidBackward0": (0.0, 1.0),
    "LogSoftmaxBackward0": (-math.inf, 0.0),
    "LogSigmoidBackward0": (-math.inf, 0.0),
}


# Autograd nodes that only move or select values: the head is looked for behind them.
VALUE_PRESERVING = {"Squeeze", "Unsqueeze", "View", "Reshape", "ReshapeAlias", "UnsafeView", "Transpose", "Permute",
                    "Expand", "Clone", "Select", "Slice", "Index", "T", "ToCopy", "Contiguous", "Flatten"}


def head_op(tensor: torch.Tensor) -> str | None:
    """The autograd node that made the output's values, looking through reshapes and selections."""
    node = tensor.grad_fn
    while node is not None:
        kind = type(node).__name__.rstrip("0123456789").removesuffix("Backward")
        if kind not in VALUE_PRESERVING:
            return type(node).__name__
        parents = [parent for parent, _ in node.next_functions if parent is not None]
        if len(parents) != 1:
            return type(node).__name__
        node = parents[0]
    return None


class _Running:
    """min, max, mean, std and the count of non-finite values over several tensors."""

    def __init__(self) -> None:
        self.minimum, self.maximum = math.inf, -math.inf
        self.total = self.total_squares = 0.0
        self.count = self.nonfinite = 0

    def add(self, tensor: torch.Tensor) -> None:
        values = tensor.detach().double().flatten()
        finite = values[torch.isfinite(values)]
        self.nonfinite += values.numel() - finite.numel()
        if finite.numel():
            self.minimum = min(self.minimum, float(finite.min()))
            self.maximum = max(self.maximum, float(finite.max()))
            self.total += float(finite.sum())
            self.total_squares += float((finite * finite).sum())
            self.count += finite.numel()

    def summary(self) -> dict[str, Any]:
        if not self.count:
            return {"min": None, "max": None, "mean": None, "std": None, "nonfinite": self.nonfinite}
        mean = self.total / self.count
        variance = max(self.total_squares / self.count - mean * mean, 0.0)
        return {"min": self.minimum, "max": self.maximum, "mean": mean, "std": math.sqrt(variance),
                "nonfinite": self.nonfinite}


def output_heads(harness: Harness) -> dict[str, tuple[str | None, list[float] | None]]:
    """Output name -> (the autograd op that produced it, [low, high] when that op bounds it)."""
    harness.model.eval()
    with torch.enable_grad():
        output = call_unhooked(harness.model, harness.inputs, harness.model_name)
    heads = {}
    for name, tensor in named_outputs(output):
        op = head_op(tensor)
        bounds = BOUNDED_HEADS.get(op) if op else None
        heads[name] = (op, list(bounds) if bounds else None)
    return heads


def _spec_highs(harness: Harness) -> dict[str, int | None]:
    """Input name -> the spec's '<high' (integers drawn in [0, high)), for --input specs."""
    if not isinstance(harness.source, SpecInputs):
        return {}
    located = input_tensors(harness.inputs, harness.model.forward)
    by_position = {}
    names = list(located)
    positional = [name for name in names if located[name][0].index is not None]
    for spec in harness.source.specs:
        if spec.keyword is not None:
            by_position[spec.keyword] = spec.high
    for name, spec in zip(positional, [s for s in harness.source.specs if s.keyword is None]):
        by_position[name] = spec.high
    return by_position


def analyse_ranges(harness: Harness, batches: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs): one row each with shape, dtype and the range over BATCHES seeded batches."""
    input_stats: dict[str, _Running] = {}
    output_stats: dict[str, _Running] = {}
    output_rows: dict[str, tuple[list[int], str]] = {}
    for seed in range(batches):
        inputs = harness.inputs if seed == 0 else harness.build(seed=seed)
        for name, (_, tensor) in input_tensors(inputs, harness.model.forward).items():
            input_stats.setdefault(name, _Running()).add(tensor)
        for name, tensor in harness.run(inputs):
            output_stats.setdefault(name, _Running()).add(tensor)
            output_rows.setdefault(name, (list(tensor.shape), dtype_name(tensor.dtype)))
    highs = _spec_highs(harness)
    inputs_out = [{"name": name, "shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype),
                   "high": highs.get(name), **input_stats[name].summary()}
                  for name, tensor in harness.tensors.items()]
    heads = output_heads(harness)
    outputs_out = [{"name": name, "shape": shape, "dtype": dtype, **output_stats[name].summary(),
                    "head_op": heads.get(name, (None, None))[0], "bounded": heads.get(name, (None, None))[1]}
                   for name, (shape, dtype) in output_rows.items()]
    return inputs_out, outputs_out
