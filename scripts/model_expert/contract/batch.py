"""Are the samples of a batch independent? Each sample run alone must give what it gives inside the batch.

Measured directly: the first and the last sample are run as batches of one, and each output of the full batch
must hold those outputs along some axis (a [B, ...] output at its row, a [B*heads, L, L] one as a block of
`heads` rows), so no output axis is guessed to be the batch. An output that does not scale with the batch (a
loss averaged over it, a [B, B] similarity) is not per-sample and is not compared. Run in eval mode; BatchNorm
mixes the batch in train mode by design, which is an INFO measured by changing the other samples.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..guard import preserved
from .core import Harness, can_vary, finding, finite_abs_max, fresh_like, max_abs_difference, relative_tolerance, replaced

LOSS_SUFFIX = "loss"


def input_batch_axes(harness: Harness) -> dict[str, int] | None:
    """Input name -> its batch axis: the axes the batch dim covers; for fixed or --data batches (no named batch),
    the leading axis when every tensor input has one of the same size (>= 2)."""
    if harness.batch_dim and harness.batch_dim in harness.dims:
        return {name: axes[0] for name, axes in harness.dims[harness.batch_dim].axes.items()}
    if harness.from_spec or not harness.tensors:
        return None
    sizes = {tensor.shape[0] if tensor.dim() else None for tensor in harness.tensors.values()}
    if len(sizes) == 1 and None not in sizes and next(iter(sizes)) >= 2:
        return {name: 0 for name in harness.tensors}
    return None


def _alone(harness: Harness, axes: dict[str, int], index: int):
    new = {name: harness.tensors[name].narrow(axis, index, 1) for name, axis in axes.items()}
    return replaced(harness.inputs, harness.locations, new)


def _block_axes(batched: torch.Tensor, alone: torch.Tensor, size: int) -> list[tuple[int, int]]:
    """(axis, rows per sample) where BATCHED is SIZE blocks of ALONE's shape stacked along that axis."""
    if batched.dim() != alone.dim():
        return []
    found = []
    for axis in range(batched.dim()):
        others_equal = all(batched.shape[a] == alone.shape[a] for a in range(batched.dim()) if a != axis)
        if others_equal and batched.shape[axis] == size * alone.shape[axis] and alone.shape[axis] > 0:
            found.append((axis, alone.shape[axis]))
    return found


def _block(tensor: torch.Tensor, axis: int, rows: int, index: int) -> torch.Tensor:
    return tensor.narrow(axis, index * rows, rows)


def _alone_rows(harness: Harness, axes: dict[str, int], size: int) -> tuple[dict[str, tuple[int, int]], list[dict]]:
    """Per output: its batch axis and rows per sample, and one row each of the measurement."""
    batched = harness.run(harness.inputs)
    samples = sorted({0, size - 1})
    alone = {}
    for index in samples:
        outputs, _ = harness.try_run(_alone(harness, axes, index))
        if outputs is None:
            return {}, []
        alone[index] = dict(outputs)
    layout, rows = {}, []
    for name, tensor in batched:
        if name.endswith(LOSS_SUFFIX) or any(name not in alone[i] for i in samples):
            continue
        candidates = _block_axes(tensor, alone[samples[0]][name], size)
        if not candidates:
            continue
        tolerance = relative_tolerance(tensor.dtype) * finite_abs_max(tensor)
        best = None
        for axis, per_sample in candidates:
            change = max(max_abs_difference(_block(tensor, axis, per_sample, i), alone[i][name]) for i in samples)
            if best is None or change < best[0]:
                best = (change, axis, per_sample)
        change, axis, per_sample = best
        layout[name] = (axis, per_sample)
        rows.append({"output": name, "mode": "eval", "method": "alone", "axis": axis, "rows_per_sample": per_sample,
                     "independent": change <= tolerance, "max_abs_change": change})
    return layout, rows


def _with_others_changed(tensor: torch.Tensor, axis: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    fresh = fresh_like(tensor, generator)
    keep_mask = torch.zeros(tensor.shape[axis], dtype=torch.bool, device=tensor.device)
    keep_mask[keep] = True
    view = [1] * tensor.dim()
    view[axis] = tensor.shape[axis]
    return torch.where(keep_mask.reshape(view), tensor, fresh)


def _others_changed_rows(harness: Harness, axes: dict[str, int], layout: dict[str, tuple[int, int]], masks: list[str],
                         train: bool, generator: torch.Generator) -> list[dict]:
    """Per output: the largest change of a kept sample's output when the other samples' data change."""
    size = next(harness.tensors[name].shape[axis] for name, axis in axes.items())
    reference = dict(harness.run(harness.inputs, train=train, seed=0))
    worst = {name: 0.0 for name in layout}
    for keep in sorted({0, size - 1}):
        changed = {name: _with_others_changed(harness.tensors[name], axis, keep, generator)
                   for name, axis in axes.items() if name not in masks and can_vary(harness.tensors[name])}
        if not changed:
            return []
        outputs = dict(harness.run(replaced(harness.inputs, harness.locations, changed), train=train, seed=0))
        for name, (axis, per_sample) in layout.items():
            change = max_abs_difference(_block(reference[name], axis, per_sample, keep),
                                        _block(outputs[name], axis, per_sample, keep))
            worst[name] = max(worst[name], change)
    return [{"output": name, "mode": "train" if train else "eval", "method": "others_changed", "axis": layout[name][0],
             "rows_per_sample": layout[name][1], "max_abs_change": change,
             "independent": change <= relative_tolerance(reference[name].dtype) * finite_abs_max(reference[name])}
            for name, change in worst.items()]


def _guessed_layout(harness: Harness, size: int) -> dict[str, tuple[int, int]]:
    """When a batch of one cannot run: the output axis that grows with the batch, else the only one of its size."""
    grown = (harness.output_axes(harness.batch_dim) or {}) if harness.batch_dim in harness.dims else {}
    layout = {}
    for name, tensor in harness.run(harness.inputs):
        candidates = grown.get(name) or [a for a in range(tensor.dim()) if tensor.shape[a] == size]
        if candidates and not name.endswith(LOSS_SUFFIX):
            layout[name] = (candidates[0], 1)
    return layout


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def analyse_batch(harness: Harness, masks: list[str], seed: int = 0) -> tuple[bool | None, list[dict[str, Any]], list[dict]]:
    """(batch_independent, one row per output compared, findings)."""
    axes = input_batch_axes(harness)
    if not axes:
        return None, [], [finding("INFO", "batch", "no input names a batch dim (B in --input, or a batch_size keyword "
                                  "of the inputs factory); batch independence was not checked")]
    size = next(harness.tensors[name].shape[axis] for name, axis in axes.items())
    if not harness.deterministic:
        return None, [], [finding("INFO", "batch", "two eval forwards on the same batch differ (random numbers drawn "
                                  "in forward), so whether samples mix cannot be told apart from the randomness; "
                                  "batch independence was not checked", dim=harness.batch_dim)]
    generator = torch.Generator().manual_seed(seed)
    layout, rows = _alone_rows(harness, axes, size)
    if not rows:
        layout = _guessed_layout(harness, size)
        rows = _others_changed_rows(harness, axes, layout, masks, False, generator) if layout else []
    if not rows:
        return None, [], [finding("INFO", "batch", "no output holds one part per sample (each is a loss or mixes "
                                  "the batch by design, like a [B, B] similarity); batch independence was not "
                                  "checked", dim=harness.batch_dim)]
    findings = []
    method = rows[0]["method"]
    for row in rows:
        if not row["independent"]:
            how = ("running each sample alone and inside the batch gives it different values"
                   if method == "alone" else "changing the other samples moves a sample's value")
            findings.append(finding(
                "RISK", "batch", f"samples mix in `{row['output']}`: {how}, by up to {row['max_abs_change']:.3g} in "
                "eval mode", dim=harness.batch_dim, output=row["output"],
                fix="keep the batch dim separate: use transpose/permute (not reshape/view) to move dims, and never "
                    "reduce over the batch dim inside forward"))
    if has_batch_norm(harness.model):
        with preserved(harness.model):  # train mode updates BatchNorm's running statistics
            for row in _others_changed_rows(harness, axes, layout, masks, True, generator):
                rows.append(row)
                if not row["independent"]:
                    findings.append(finding(
                        "INFO", "batch", f"in train mode BatchNorm mixes the batch by design: changing the other "
                        f"samples moves a sample's `{row['output']}` by up to {row['max_abs_change']:.3g} (eval mode "
                        "uses the running statistics and does not)", output=row["output"]))
    independent = all(r["independent"] for r in rows if r["mode"] == "eval")
    return independent, rows, findings
