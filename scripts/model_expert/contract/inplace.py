"""Does the forward write into its inputs? `x += pos` on the caller's tensor changes the caller's batch: a second
call with the same tensor gives another answer. Every other check runs on fresh copies, so this is its own finding."""

from __future__ import annotations

from typing import Any

import torch

from .core import Harness, call_unhooked, finding, fresh_copies, input_tensors


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b) or (a.is_floating_point()
                                                          and torch.equal(torch.isnan(a), torch.isnan(b))
                                                          and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))))


def analyse_inplace(harness: Harness) -> tuple[list[str], list[dict[str, Any]]]:
    """(the inputs one eval forward changed, findings)."""
    inputs = fresh_copies(harness.inputs)
    harness.model.eval()
    with torch.no_grad():
        call_unhooked(harness.model, inputs, harness.model_name)
    written = [name for name, (_, tensor) in input_tensors(inputs, harness.model.forward).items()
               if name in harness.tensors and not _same(tensor, harness.tensors[name])]
    return written, [finding("CAUTION", "inplace", f"the forward writes into its input `{name}` in place: the caller's "
                             "tensor is changed, so calling the model twice on the same batch gives two answers",
                             fix=f"write `{name} = {name} + ...` (a new tensor) instead of `{name} += ...` / "
                                 f"`{name}.add_(...)` / slice assignment into `{name}`", input=name)
                     for name in written]
