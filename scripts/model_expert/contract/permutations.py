"""Does order matter along a named dim? Permute it in every input that carries it (data and masks together).

invariant: the output does not move. equivariant: an output axis of that size permutes the same way.
Otherwise order_dependent; on a dim declared a set (--set) that is a RISK.
"""

from __future__ import annotations

from typing import Any

import torch

from .core import Harness, compare, finding, max_abs_difference, relative_tolerance, finite_abs_max, replaced


def derangement_like(size: int, seed: int) -> torch.Tensor:
    """A seeded random permutation that is not the identity (size >= 2)."""
    permutation = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    if torch.equal(permutation, torch.arange(size)):
        permutation = torch.roll(permutation, 1)
    return permutation


def _permute(tensor: torch.Tensor, axes: list[int], permutation: torch.Tensor) -> torch.Tensor:
    for axis in axes:  # a square mask [T, T] carries the dim twice
        tensor = tensor.index_select(axis, permutation.to(tensor.device))
    return tensor


def _equivariant_axis(reference: torch.Tensor, permuted: torch.Tensor, permutation: torch.Tensor,
                      preferred: list[int]) -> int | None:
    size = permutation.numel()
    tolerance = relative_tolerance(reference.dtype) * finite_abs_max(reference)
    candidates = preferred + [a for a in range(reference.dim()) if a not in preferred and reference.shape[a] == size]
    for axis in candidates:
        if reference.shape[axis] != size:
            continue
        expected = reference.index_select(axis, permutation.to(reference.device))
        if max_abs_difference(expected, permuted) <= tolerance:
            return axis
    return None


def check_dim(harness: Harness, dim_name: str, declared_set: bool, seed: int = 0) -> tuple[dict[str, Any], list[dict]]:
    dim = harness.dims[dim_name]
    entry: dict[str, Any] = {"dim": dim_name, "size": dim.size, "inputs": sorted(dim.axes), "set": declared_set,
                             "property": None, "output": None, "output_dim": None, "max_abs_change": None}
    if dim.size < 2:
        return entry, [finding("INFO", "permutation", f"dim `{dim_name}` has size {dim.size}; order cannot be checked",
                               dim=dim_name)]
    if not harness.deterministic:
        entry["not_checked"] = "two eval forwards on the same inputs differ (random numbers in forward)"
        return entry, []
    permutation = derangement_like(dim.size, seed)
    permuted_inputs = {name: _permute(harness.tensors[name], axes, permutation) for name, axes in dim.axes.items()}
    reference = harness.run(harness.inputs)
    permuted, error = harness.try_run(replaced(harness.inputs, harness.locations, permuted_inputs))
    if permuted is None:  # e.g. a mask read by position (the last real token) permuted into another layout
        entry["not_checked"] = "the forward fails on the permuted inputs"
        return entry, []
    result = compare(reference, permuted)
    entry["max_abs_change"] = result.max_abs_change
    entry["output"] = result.moved[0] if result.moved else None
    findings: list[dict] = []
    if result.within_tolerance:
        entry["property"] = "invariant"
        return entry, findings
    grown = harness.output_axes(dim_name) or {}
    axes = {}
    for (name, a), (_, b) in zip(reference, permuted):
        tolerance = relative_tolerance(a.dtype) * finite_abs_max(a)
        if max_abs_difference(a, b) <= tolerance:
            continue
        axis = _equivariant_axis(a, b, permutation, grown.get(name, []))
        if axis is None:
            axes = None
            break
        axes[name] = axis
    if axes:
        entry["property"] = "equivariant"
        entry["output"], entry["output_dim"] = next(iter(axes.items()))
        return entry, findings
    entry["property"] = "order_dependent"
    if declared_set:
        findings.append(finding(
            "RISK", "permutation", f"`{dim_name}` is declared a set but its order matters: permuting it in "
            f"{', '.join('`' + n + '`' for n in entry['inputs'])} moves `{entry['output']}` by up to {result.max_abs_change:.3g}",
            fix=f"make the model blind to the order along `{dim_name}`: no positional embeddings or order-dependent "
                "ops (cumsum, RNNs, convolutions, flatten) over it; pool with a masked sum/mean or attention",
            dim=dim_name, output=entry["output"]))
    return entry, findings


def analyse_permutations(harness: Harness, sets: list[str],
                         resizable: set[str] | None = None) -> tuple[list[dict[str, Any]], list[dict]]:
    """Permute the dims declared sets (--set) and the named dims the model runs at other sizes of (lengths,
    counts); a dim that only works at its given size is a feature dim, whose order means nothing."""
    entries, findings = [], []
    for name in harness.dims:
        if name == harness.batch_dim or (name not in sets and resizable is not None and name not in resizable):
            continue
        entry, found = check_dim(harness, name, name in sets)
        entries.append(entry)
        findings.extend(found)
    return entries, findings
