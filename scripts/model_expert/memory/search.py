"""The largest batch whose estimated training step fits a budget, found on the estimate (never by crashing).

Doubling brackets the answer, interpolation narrows it (memory is close to affine in the batch),
and the result is exact on the estimate: estimate(B) <= budget < estimate(B + 1).
"""

from __future__ import annotations

from typing import Callable

MAX_BATCH = 1 << 24


def largest_batch(estimate: Callable[[int], int], budget_bytes: int, max_batch: int = MAX_BATCH) -> tuple[int, dict[int, int]]:
    """(largest B with estimate(B) <= budget, or 0 if B=1 does not fit; every estimate made, by B).

    Doubling from B=1 brackets the answer with estimates at small batches (cheap, and safe when
    fixed costs such as the cuBLAS workspace make the curve far from a line through B=1 and B=2);
    then interpolation on the bracket (memory is close to affine in B), with a bisection step
    whenever an interpolation step fails to halve the bracket."""
    seen: dict[int, int] = {}

    def cost(batch: int) -> int:
        if batch not in seen:
            seen[batch] = estimate(batch)
        return seen[batch]

    if cost(1) > budget_bytes:
        return 0, seen
    low, high = 1, 2
    while cost(high) <= budget_bytes:
        if high >= max_batch:
            return max_batch, seen
        low, high = high, min(high * 2, max_batch)
    # Invariant: cost(low) <= budget < cost(high).
    interpolate = True
    while high - low > 1:
        width = high - low
        if interpolate and cost(high) > cost(low):
            guess = low + int((budget_bytes - cost(low)) * width // (cost(high) - cost(low)))
            middle = min(max(guess, low + 1), high - 1)
        else:
            middle = (low + high) // 2
        if cost(middle) <= budget_bytes:
            low = middle
        else:
            high = middle
        interpolate = (high - low) * 2 <= width  # keep interpolating only while it halves the bracket
    return low, seen
