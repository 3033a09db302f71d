"""The largest batch whose estimated training step fits a budget, found on the estimate (never by crashing).

Memory is close to affine in the batch: a line through two estimates predicts the answer; exact
estimates around the prediction then make it exact: estimate(B) <= budget < estimate(B + 1).
"""

from __future__ import annotations

from typing import Callable

MAX_BATCH = 1 << 24


def largest_batch(estimate: Callable[[int], int], budget_bytes: int, max_batch: int = MAX_BATCH) -> tuple[int, dict[int, int]]:
    """(largest B with estimate(B) <= budget, or 0 if B=1 does not fit; every estimate made, by B)."""
    seen: dict[int, int] = {}

    def cost(batch: int) -> int:
        if batch not in seen:
            seen[batch] = estimate(batch)
        return seen[batch]

    if cost(1) > budget_bytes:
        return 0, seen
    slope = cost(2) - cost(1)
    guess = max_batch if slope <= 0 else int(1 + (budget_bytes - cost(1)) // slope)
    guess = max(1, min(guess, max_batch))
    # Bracket: low fits, high does not (or high is past the cap).
    if cost(guess) <= budget_bytes:
        low, high, step = guess, guess + 1, 1
        while high <= max_batch and cost(high) <= budget_bytes:
            low, step = high, step * 2
            high = low + step
        if high > max_batch:
            if cost(max_batch) <= budget_bytes:
                return max_batch, seen
            high = max_batch
    else:
        high, low, step = guess, guess - 1, 1
        while low > 1 and cost(low) > budget_bytes:
            high, step = low, step * 2
            low = max(1, high - step)
    while high - low > 1:
        middle = (low + high) // 2
        if cost(middle) <= budget_bytes:
            low = middle
        else:
            high = middle
    return low, seen
