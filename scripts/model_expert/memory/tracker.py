"""Tracking every storage a training step allocates and frees, on meta (or real) tensors.

A TorchDispatchMode sees every op below autograd: each output tensor whose storage is new is an
allocation; a weakref callback on that storage is its free. Sizes go through the target device's
allocator rule (`block_bytes`), so the running total is what torch.cuda.memory_allocated() would say.
Storages are labelled by role (params, grads, optimizer state, saved activations, ...); the labels
of the live storages at the peak make the breakdown.

Meta tensors hold no values, so ops that read data need a rule: `.item()` and friends return a
plausible value, ops without a meta kernel (nonzero, unique, ...) run on small CPU stand-ins.
Both are counted and reported as assumptions.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from . import loss_kernels
from ..inputs import real_value

aten = torch.ops.aten

# Roles, in the order the breakdown lists them. Every tracked storage has exactly one.
CATEGORIES = ("params", "buffers", "grads", "optimizer_state", "inputs", "activations", "temporaries", "workspace")
# A role learned later replaces an earlier one only if it ranks higher here (a parameter saved for
# backward stays a parameter; a temporary that becomes .grad is a gradient).
_RANK = {"temporaries": 0, "activations": 1, "grads": 2, "optimizer_state": 2, "inputs": 3, "buffers": 3,
         "workspace": 3, "params": 4}

# Largest stand-in (elements) an op without a meta kernel may run on, on CPU.
MAX_STANDIN_ELEMENTS = 1 << 26


@dataclass
class StorageRecord:
    nbytes: int  # as counted by the allocator rule (rounded)
    category: str
    phase: str


def plausible_scalar(tensor: torch.Tensor) -> Any:
    """The value `.item()` returns on a meta tensor: True for bool (checks pass), 1 for ints, 1.0 for floats."""
    if tensor.dtype == torch.bool:
        return True
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        return 1.0
    return 1


def _standin(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor with the meta tensor's shape: an input's real value where the inputs kept one (lengths,
    indices, masks: inputs.real_value); else ones for floats and bools (masks select all), zeros for ints (valid indices)."""
    real = real_value(tensor)
    if real is not None:
        return real.clone()
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool or tensor.dtype.is_complex:
        return torch.ones(tensor.shape, dtype=tensor.dtype)
    return torch.zeros(tensor.shape, dtype=tensor.dtype)


class AllocationTracker(TorchDispatchMode):
    """Running total, peak and per-role breakdown of the storages alive on `devices`."""

    def __init__(self, block_bytes: Callable[[int], int], devices: tuple[str, ...] = ("meta",),
                 on_op: Callable[[Any, list], None] | None = None):
        super().__init__()
        self.block_bytes = block_bytes
        self.devices = devices
        self.on_op = on_op  # called with (func, output tensors) after each op: device rules hook here
        self.live: dict[int, StorageRecord] = {}
        self._refs: dict[int, weakref.ref] = {}
        self.current_bytes = 0
        self.peak_bytes = 0
        self.peak_phase = ""
        self.phase = "setup"
        self._peak_snapshot: dict[int, StorageRecord] = {}
        self._peak_dirty = False
        self.data_dependent_reads: Counter[str] = Counter()
        self.cpu_standin_ops: Counter[str] = Counter()
        self.loss_kernel_calls: Counter[str] = Counter()  # reduced losses run as the device's kernels
        self.real_value_ops: Counter[str] = Counter()   # ops that read an input's kept real values
        # (storage key, requested bytes) per allocation and (key, None) per free, in order, when a list is given:
        # what the CUDA target replays through its caching allocator (cuda_allocator.py).
        self.events: list[tuple[int, int | None]] | None = None

    # --- storages -------------------------------------------------------------------------------
    def register(self, tensor: torch.Tensor, category: str) -> None:
        """Track TENSOR's storage (if new) and give it CATEGORY if that outranks its current one."""
        if not isinstance(tensor, torch.Tensor) or tensor.device.type not in self.devices:
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        record = self.live.get(key)
        if record is not None:
            if _RANK[category] > _RANK[record.category]:
                record.category = category
            return
        nbytes = self.block_bytes(storage.nbytes())
        if self.events is not None:
            self.events.append((key, storage.nbytes()))
        self.live[key] = StorageRecord(nbytes=nbytes, category=category, phase=self.phase)
        self._refs[key] = weakref.ref(storage, lambda _ref, key=key: self._freed(key))
        self.current_bytes += nbytes
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
            self.peak_phase = self.phase
            self._peak_dirty = True

    def relabel(self, tensor: torch.Tensor | None, category: str) -> None:
        if isinstance(tensor, torch.Tensor):
            self.register(tensor, category)

    def _freed(self, key: int) -> None:
        record = self.live.get(key)
        if record is None:
            return
        if self._peak_dirty:  # the total is about to fall below the peak: remember who was alive
            self._peak_snapshot = dict(self.live)
            self._peak_dirty = False
        del self.live[key]
        self._refs.pop(key, None)
        if self.events is not None:
            self.events.append((key, None))
        self.current_bytes -= record.nbytes

    def reset_peak(self) -> None:
        """Like torch.cuda.reset_peak_memory_stats(): the peak restarts from what is alive now."""
        self.peak_bytes = self.current_bytes
        self.peak_phase = self.phase
        self._peak_snapshot = dict(self.live)
        self._peak_dirty = False

    def live_bytes(self, category: str) -> int:
        """Bytes (allocator-rounded) of the live storages whose role is CATEGORY, now."""
        return sum(record.nbytes for record in self.live.values() if record.category == category)

    def breakdown_at_peak(self) -> dict[str, int]:
        """Bytes per role of the storages alive at the peak; sums to peak_bytes."""
        snapshot = dict(self.live) if self._peak_dirty else self._peak_snapshot
        totals = {category: 0 for category in CATEGORIES}
        for record in snapshot.values():
            totals[record.category] += record.nbytes
        return totals

    # --- dispatch -------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and args[0].device.type == "meta":
            real = real_value(args[0])
            if real is not None:
                return real.item()
            self.data_dependent_reads[".item() / bool() on a tensor"] += 1
            return plausible_scalar(args[0])
        loss_kernel = loss_kernels.rule_for(func, args, kwargs)
        if loss_kernel is not None:
            self.loss_kernel_calls[func.overloadpacket.__name__] += 1
            out = loss_kernels.run(func, args, kwargs, loss_kernel, lambda t: self.register(t, "temporaries"))
            if self.on_op is not None:
                self.on_op(func, [out])
            return out
        try:
            out = func(*args, **kwargs)
        except NotImplementedError:
            out = self._run_on_cpu_standins(func, args, kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for tensor in outputs:
            self.register(tensor, "temporaries")
        if self.on_op is not None:
            self.on_op(func, outputs)
        return out

    def _run_on_real_values(self, func, args, kwargs):
        """An op that reads an input's values (a copy to CPU for pack_padded_sequence, .tolist()): run on the real values."""
        return _run_on_cpu(func, tree_map(lambda t: real_value(t).clone() if isinstance(t, torch.Tensor)
                                          and t.device.type == "meta" else t, (args, kwargs)), kwargs)

    def _run_on_cpu_standins(self, func, args, kwargs):
        """An op with no meta kernel (data-dependent output): run it on CPU stand-ins, return meta results."""
        flat = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.device.type == "meta"]
        if flat and all(real_value(t) is not None for t in flat):
            self.real_value_ops[str(getattr(func, "overloadpacket", func).__name__)] += 1
            return self._run_on_real_values(func, args, kwargs)
        if not flat or sum(t.numel() for t in flat) > MAX_STANDIN_ELEMENTS:
            raise
        name = str(func.overloadpacket.__name__) if hasattr(func, "overloadpacket") else str(func)
        self.cpu_standin_ops[name] += 1
        return _run_on_cpu(func, tree_map(lambda t: _standin(t) if isinstance(t, torch.Tensor)
                                          and t.device.type == "meta" else t, (args, kwargs)), kwargs)


def _run_on_cpu(func, moved, kwargs):
    """Run FUNC on MOVED (args, kwargs) of CPU tensors outside every mode. A copy to CPU (tolist, .cpu()) keeps its CPU
    result; everything else goes back to meta tensors of the same shape, stride and dtype."""
    with torch.utils._python_dispatch._disable_current_modes():
        result = func(*moved[0], **moved[1])
    wants_cpu = func in (aten._to_copy.default, aten.copy_.default) and any(
        isinstance(v, torch.device) and v.type == "cpu" or v == "cpu" for v in list(kwargs.values()))
    if wants_cpu:
        return result
    return tree_map(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
                    if isinstance(t, torch.Tensor) else t, result)
