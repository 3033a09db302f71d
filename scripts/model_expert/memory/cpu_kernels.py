"""Asking the CPU's own kernels what they allocate, for the estimate's CPU target.

Some CPU kernels (oneDNN's LSTM and convolutions) allocate inside themselves: a workspace they return,
weight and activation reorders, scratchpads. No dispatch-level count sees those blocks, and torch's
meta kernels report none. So the real kernel is run once on zero tensors of the same sizes under the
CPU allocator's watch (torch.profiler, profile_memory=True), and the estimate replays what it saw on
meta tensors: transient bytes alive during the call, a workspace kept by the autograd graph, and the
backward's transient bytes alive while that backward runs. Used by cpu_lstm.py and cpu_conv.py.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch


@contextlib.contextmanager
def outside_every_mode():
    """Real CPU work from inside the estimate's own modes (the allocation tracker, the target's function mode)."""
    from torch.utils._python_dispatch import _disable_current_modes
    with _disable_current_modes(), torch._C.DisableTorchFunction():
        yield


@dataclass(frozen=True)
class KernelBytes:
    workspace: int  # returned by the kernel and saved for backward (0 without grad)
    transient: int  # allocated inside the kernel and freed before it returns (weight reorders, scratchpad)
    backward_transient: int = 0  # the same for its backward kernel (0 without grad)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 points to /dev/null meanwhile: C++ log lines cannot break the one-line error contract."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def cpu_allocator_events() -> Iterator[list]:
    """torch.profiler(profile_memory=True) around the block; the list it yields holds the profiler's events once
    the block is done. Kineto's "profiler_start"/"profiler_stop" lines are kept off stderr."""
    from torch.profiler import ProfilerActivity, profile
    events: list = []
    profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with native_stderr_silenced():
        profiler.start()
    try:
        yield events
    finally:
        with native_stderr_silenced():
            profiler.stop()
    events.extend(profiler.profiler.kineto_results.events())


def memory_changes(events) -> list[tuple[int, int]]:
    """(time in ns, bytes) of every allocation (positive) and free (negative) among EVENTS, in time order."""
    return sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")


def watched(run) -> tuple[Any, int, int]:
    """RUN() under the CPU allocator's watch: its result, the peak of the running total of what was allocated
    inside (frees of older blocks are not seen), and that total at the end."""
    with cpu_allocator_events() as events:
        result = run()
    total = peak = 0
    for _, change in memory_changes(events):
        total += change
        peak = max(peak, total)
    return result, peak, total


def linear_in_batch(at: Callable[[int], KernelBytes], batch: int, exact_up_to: int) -> KernelBytes:
    """AT(batch) itself up to EXACT_UP_TO (small batches are not linear: page rounding, minimum scratch); beyond,
    the line through AT(EXACT_UP_TO // 2) and AT(EXACT_UP_TO)."""
    if batch <= exact_up_to:
        return at(batch)
    low_batch = exact_up_to // 2
    low, high = at(low_batch), at(exact_up_to)

    def extrapolate(at_low: int, at_high: int) -> int:
        slope = (at_high - at_low) / (exact_up_to - low_batch)
        return max(int(round(at_high + (batch - exact_up_to) * slope)), 0)
    return KernelBytes(extrapolate(low.workspace, high.workspace), extrapolate(low.transient, high.transient),
                       extrapolate(low.backward_transient, high.backward_transient))


class HoldUntilBackward(torch.autograd.Function):
    """Passes TENSOR on (a view: no bytes) and keeps HELD saved until this node's backward, which autograd runs
    after the backward of whatever consumed TENSOR; that backward also empties SCRATCH."""

    @staticmethod
    def forward(ctx, tensor, held, scratch):
        ctx.save_for_backward(held)
        ctx.scratch = scratch
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        ctx.scratch.clear()
        return grad, None, None


class ScratchInBackward(torch.autograd.Function):
    """Passes TENSOR on (a view); its backward, which runs just before the backward of whatever produced
    TENSOR, puts NBYTES of scratch into SCRATCH, where HoldUntilBackward finds and frees it just after."""

    @staticmethod
    def forward(ctx, tensor, nbytes, scratch):
        ctx.nbytes, ctx.scratch, ctx.device = nbytes, scratch, tensor.device
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        ctx.scratch.append(torch.empty(ctx.nbytes, dtype=torch.uint8, device=ctx.device))
        return grad, None, None
