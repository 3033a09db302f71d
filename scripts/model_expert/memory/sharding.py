"""Closed-form distributed what-ifs (per-GPU memory and bytes per step, by strategy): the labelled fallback for a
model the engine run of distributed.py cannot run, and the ring formulas its traffic count uses.

Ring collectives over N ranks move (N-1)/N of the buffer per rank for reduce-scatter and
all-gather, 2(N-1)/N for all-reduce (= reduce-scatter + all-gather).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def all_reduce_bytes(buffer_bytes: int, world_size: int) -> int:
    """Ring all-reduce, bytes sent per rank: 2(N-1)/N x buffer."""
    return 2 * (world_size - 1) * buffer_bytes // world_size


def reduce_scatter_bytes(buffer_bytes: int, world_size: int) -> int:
    """Ring reduce-scatter, bytes sent per rank: (N-1)/N x buffer."""
    return (world_size - 1) * buffer_bytes // world_size


def all_gather_bytes(buffer_bytes: int, world_size: int) -> int:
    """Ring all-gather, bytes sent per rank: (N-1)/N x buffer."""
    return (world_size - 1) * buffer_bytes // world_size


@dataclass(frozen=True)
class Strategy:
    description: str
    sharded: frozenset[str]  # breakdown keys divided by N on each GPU
    extra_grad_copies: int  # full-size gradient buffers the strategy adds (DDP's buckets)
    communication: Callable[[int, int, int], int]  # (param_bytes, grad_bytes, N) -> bytes per rank per step


STRATEGIES: dict[str, Strategy] = {
    "ddp": Strategy("DistributedDataParallel: full replica; gradients all-reduced through buckets (a second copy of "
                    "the gradients)", frozenset(), 1,
                    lambda p, g, n: all_reduce_bytes(g, n)),
    "zero1": Strategy("ZeRO-1: optimizer state sharded; gradients all-reduced, updated parameters all-gathered",
                      frozenset({"optimizer_state"}), 0,
                      lambda p, g, n: all_reduce_bytes(g, n) + all_gather_bytes(p, n)),
    "zero2": Strategy("ZeRO-2: optimizer state and gradients sharded; gradients reduce-scattered, parameters "
                      "all-gathered", frozenset({"optimizer_state", "grads"}), 0,
                      lambda p, g, n: reduce_scatter_bytes(g, n) + all_gather_bytes(p, n)),
    "zero3": Strategy("ZeRO-3: parameters, gradients and optimizer state sharded; parameters all-gathered in forward "
                      "and again in backward, gradients reduce-scattered",
                      frozenset({"optimizer_state", "grads", "params"}), 0,
                      lambda p, g, n: 2 * all_gather_bytes(p, n) + reduce_scatter_bytes(g, n)),
    "fsdp": Strategy("FSDP (FULL_SHARD): as ZeRO-3", frozenset({"optimizer_state", "grads", "params"}), 0,
                     lambda p, g, n: 2 * all_gather_bytes(p, n) + reduce_scatter_bytes(g, n)),
}


def per_gpu_breakdown(breakdown: dict[str, int], strategy: str, world_size: int, grad_bytes: int) -> dict[str, int]:
    """The single-GPU breakdown at the peak with the sharded parts divided by N (and DDP's bucket copy added)."""
    rule = STRATEGIES[strategy]
    result = {key: (value // world_size if key in rule.sharded else value) for key, value in breakdown.items()}
    result["grads"] = result.get("grads", 0) + rule.extra_grad_copies * grad_bytes
    return result


def distributed_what_if(breakdown: dict[str, int], param_bytes: int, grad_bytes: int, strategy: str,
                        world_size: int) -> dict:
    """Per-GPU peak bytes and bytes each rank sends per step."""
    per_gpu = per_gpu_breakdown(breakdown, strategy, world_size, grad_bytes)
    return {"strategy": strategy, "world_size": world_size, "description": STRATEGIES[strategy].description,
            "per_gpu_peak_bytes": sum(per_gpu.values()), "per_gpu_breakdown": per_gpu,
            "communication_bytes_per_step": STRATEGIES[strategy].communication(param_bytes, grad_bytes, world_size)}
