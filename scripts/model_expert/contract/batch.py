"""Are the samples of a batch independent? Change the other samples; each kept sample's output must not move.

Checked for the first and the last sample (a cumulative op over the batch spares the first), per data
input. Run in eval mode; BatchNorm mixes the batch in train mode by design, which is an INFO.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..guard import preserved
from .core import Harness, can_vary, finding, fresh_like, max_abs_difference, relative_tolerance, finite_abs_max, replaced


def _sample(tensor: torch.Tensor, axis: int, index: int) -> torch.Tensor:
    return tensor.select(axis, index)


def _with_others_changed(tensor: torch.Tensor, axis: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    fresh = fresh_like(tensor, generator)
    keep_mask = torch.zeros(tensor.shape[axis], dtype=torch.bool, device=tensor.device)
    keep_mask[keep] = True
    view = [1] * tensor.dim()
    view[axis] = tensor.shape[axis]
    return torch.where(keep_mask.reshape(view), tensor, fresh)


def _sample_changes(harness, output_axes, batch, masks, train: bool, generator: torch.Generator):
    """(input, largest change of a kept sample's output, within tolerance) for every data input that carries the
    batch, the other samples changed; in train mode when TRAIN."""
    for name, axes in batch.axes.items():
        if name not in masks and can_vary(harness.tensors[name]):
            yield (name, *_kept_sample_change(harness, output_axes, name, axes[0], train, generator))


def _kept_sample_change(harness: Harness, output_axes: dict[str, int], name: str, axis: int, train: bool,
                        generator: torch.Generator) -> tuple[float, bool]:
    """Largest change of the kept samples' outputs when the other samples of input NAME change."""
    tensor = harness.tensors[name]
    worst, within = 0.0, True
    reference = dict(harness.run(harness.inputs, train=train, seed=0))
    for keep in sorted({0, tensor.shape[axis] - 1}):
        changed_inputs = replaced(harness.inputs, harness.locations,
                                  {name: _with_others_changed(tensor, axis, keep, generator)})
        changed = dict(harness.run(changed_inputs, train=train, seed=0))
        for output_name, output_axis in output_axes.items():
            a = _sample(reference[output_name], output_axis, keep)
            b = _sample(changed[output_name], output_axis, keep)
            change = max_abs_difference(a, b)
            worst = max(worst, change)
            within = within and change <= relative_tolerance(a.dtype) * finite_abs_max(reference[output_name])
    return worst, within


def batch_output_axes(harness: Harness) -> dict[str, int]:
    """Each output's batch axis: the one that grows with the batch; else the only axis of the batch's size."""
    dim = harness.dims[harness.batch_dim]
    grown = harness.output_axes(harness.batch_dim) or {}
    axes = {}
    for name, tensor in harness.run(harness.inputs):
        candidates = grown.get(name) or [a for a in range(tensor.dim()) if tensor.shape[a] == dim.size]
        if len(candidates) >= 1:
            axes[name] = candidates[0]
    return axes


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def analyse_batch(harness: Harness, masks: list[str], seed: int = 0) -> tuple[bool | None, list[dict[str, Any]], list[dict]]:
    """(batch_independent, one row per data input carrying the batch, findings)."""
    if harness.batch_dim is None or harness.batch_dim not in harness.dims:
        return None, [], [finding("INFO", "batch", "no input names a batch dim (B in --input, or a batch_size keyword "
                                  "of the inputs factory); batch independence was not checked")]
    output_axes = batch_output_axes(harness)
    if not output_axes:
        return None, [], [finding("INFO", "batch", "no output has an axis of the batch's size; batch independence "
                                  "was not checked", dim=harness.batch_dim)]
    generator = torch.Generator().manual_seed(seed)
    rows, findings = [], []
    batch = harness.dims[harness.batch_dim]
    for name, change, within in _sample_changes(harness, output_axes, batch, masks, False, generator):
        rows.append({"input": name, "mode": "eval", "independent": within, "max_abs_change": change})
        if not within:
            findings.append(finding(
                "RISK", "batch", f"samples mix: changing the other samples of `{name}` moves a sample's output by up to "
                f"{change:.3g} in eval mode", input=name,
                fix="keep the batch dim separate: use transpose/permute (not reshape/view) to move dims, and never "
                    "reduce over the batch dim inside forward"))
    if has_batch_norm(harness.model):
        with preserved(harness.model):  # train mode updates BatchNorm's running statistics
            for name, change, within in _sample_changes(harness, output_axes, batch, masks, True, generator):
                rows.append({"input": name, "mode": "train", "independent": within, "max_abs_change": change})
                if not within:
                    findings.append(finding(
                        "INFO", "batch", f"in train mode BatchNorm mixes the batch by design: changing the other "
                        f"samples of `{name}` moves a sample's output by up to {change:.3g} (eval mode uses the "
                        f"running statistics and does not)", input=name))
    if not rows:
        return None, rows, findings
    independent = all(r["independent"] for r in rows if r["mode"] == "eval")
    return independent, rows, findings
