"""Variable length: each named non-batch dim at 1, at the given size and at twice it (bounded)."""

from __future__ import annotations

from typing import Any

import torch

from .core import Harness

# Twice the given size is skipped when the inputs would pass this many elements (2**26 = 256 MiB of fp32).
MAX_INPUT_ELEMENTS = 2**26


def sizes_to_try(size: int) -> list[int]:
    return sorted({1, size, 2 * size})


def check_dim(harness: Harness, dim_name: str) -> dict[str, Any]:
    dim = harness.dims[dim_name]
    rows = []
    for size in sizes_to_try(dim.size):
        elements = sum(t.numel() * (size / dim.size) ** len(dim.axes.get(n, [])) for n, t in harness.tensors.items())
        if elements > MAX_INPUT_ELEMENTS:
            rows.append({"size": size, "status": "skipped", "error": f"inputs of {int(elements):,} elements are over "
                         f"the {MAX_INPUT_ELEMENTS:,} bound"})
            continue
        outputs, error = harness.try_run(harness.build({dim_name: size}))
        if outputs is None:
            rows.append({"size": size, "status": "error", "error": error})
        else:
            rows.append({"size": size, "status": "ok",
                         "output_shapes": {name: list(t.shape) for name, t in outputs},
                         "nonfinite": sum(int((~torch.isfinite(t)).sum()) for _, t in outputs)})
    return {"dim": dim_name, "given": dim.size, "checks": rows}


def analyse_lengths(harness: Harness) -> list[dict[str, Any]]:
    return [check_dim(harness, name) for name in harness.dims if name != harness.batch_dim]


def resizable(rows: list[dict[str, Any]]) -> set[str]:
    """The dims the forward runs at a size other than the given one (a length or a count, not a feature dim)."""
    return {row["dim"] for row in rows if any(c["status"] == "ok" and c["size"] != row["given"] for c in row["checks"])}
