"""Step time on a CUDA card, kernel by kernel.

The training step (forward + loss, backward, the optimizer's foreach kernels, autocast's casts) runs once
on meta tensors under the CUDA target's rules (memory/device_rules.py: the attention kernel CUDA picks,
fused dropout, autocast as torch applies it on CUDA), and every aten op that is not a view is one kernel.
Each kernel costs

    max(FLOPs / (peak of the unit that runs it x ACHIEVED_FRACTION[unit]),
        bytes read + written / (memory bandwidth x BANDWIDTH_FRACTION),
        launches x LAUNCH_SECONDS)

the last term being the floor of an eager PyTorch op (Python, dispatcher, autograd and the launch itself run
on the CPU while the GPU waits for short kernels). An additive floor (GPU time + launch) fitted worse on the
public set (worst 11 % against 5 %): the CPU's issue time overlaps long kernels.

- FLOPs: FlopCounterMode's formulas (matmul, convolution, attention; 2 per multiply-add);
- the unit: bf16/fp16 math on tensor cores; fp32 matmuls on CUDA cores (torch's default: TF32 off for
  matmuls); fp32 convolutions on TF32 tensor cores (torch's default: torch.backends.cudnn.allow_tf32 = True);
- bytes: every tensor the kernel reads or writes, at its own dtype, once (eager PyTorch: no fusion);
- a foreach kernel (the optimizer) is several launches: multi_tensor_apply packs at most
  FOREACH_TENSORS_PER_LAUNCH tensors or FOREACH_ELEMENTS_PER_LAUNCH elements into one.
The four constants are physically meaningful and were calibrated once on the public H200 measurements
(tests/fixtures/gpu_measurements; the errors are in the README): what fraction of the data-sheet peak
tensor cores and CUDA cores reach on the GEMM shapes of a training step, what fraction of HBM bandwidth
eager elementwise kernels reach, and the per-kernel floor of eager PyTorch (launch + dispatch overhead,
which bounds small models).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils import flop_counter as _fc
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..gpus import GpuSpec
from .counting import EXTRA_FLOP_FORMULAS

# Calibrated on the public H200 set (see the module docstring); one value per physical quantity.
ACHIEVED_FRACTION = {"tensor": 0.60, "tf32": 0.60, "fp32": 0.65}
BANDWIDTH_FRACTION = 0.75
LAUNCH_SECONDS = 16e-6
PEAK_COLUMN = {"tensor": "bf16", "tf32": "tf32", "fp32": "fp32"}  # gpus.py's columns (bf16 = fp16 on every card)
FOREACH_TENSORS_PER_LAUNCH = 36  # multi_tensor_apply's depth-4 limit (aten/src/ATen/native/cuda/MultiTensorApply.cuh)
FOREACH_ELEMENTS_PER_LAUNCH = 65536 * 320  # kChunkSize x kBlocksPerLaunch... as 320 chunks of 64 Ki elements

_VIEW_NAMES = frozenset({"_unsafe_view", "lift_fresh", "_reshape_alias"})
_SHAPE_ONLY_INPUT = frozenset({"empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like",
                               "new_empty", "new_empty_strided", "new_zeros", "new_ones", "new_full"})
_NO_KERNEL = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_local_scalar_dense",
                        "detach", "alias", "set_", "resize_"})
_CONVOLUTIONS = frozenset({"convolution", "convolution_backward", "_convolution", "cudnn_convolution"})


@dataclass
class Kernel:
    phase: str  # forward, backward, optimizer
    name: str
    flops: int
    bytes: int
    unit: str  # tensor, tf32, fp32 (matmul-like with FLOPs) or memory (no FLOP formula)
    launches: int = 1


def _is_view(func) -> bool:
    return func.is_view or func.overloadpacket.__name__ in _VIEW_NAMES


def _unit(name: str, tensors: list[torch.Tensor], flops: int, allow_tf32: bool) -> str:
    if not flops:
        return "memory"
    floating = [t.dtype for t in tensors if t.is_floating_point()]
    if any(d in (torch.bfloat16, torch.float16) for d in floating):
        return "tensor"
    if name in _CONVOLUTIONS or allow_tf32:
        return "tf32"
    return "fp32"


class KernelLog(TorchDispatchMode):
    """Records every non-view aten op as a Kernel (FLOPs from FlopCounterMode's registry, bytes at each
    tensor's own dtype); `.item()` on meta returns the value the memory tracker assumes."""

    def __init__(self, allow_tf32: bool = False):
        super().__init__()
        self.kernels: list[Kernel] = []
        self.phase = "forward"
        self.allow_tf32 = allow_tf32
        self.formulas = {**_fc.flop_registry, **{k: v for k, v in EXTRA_FLOP_FORMULAS.items()}}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            from ..memory.tracker import plausible_scalar
            return plausible_scalar(args[0])
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if self.phase is None or _is_view(func) or name in _NO_KERNEL:
            return out
        formula = self.formulas.get(func.overloadpacket)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        inputs = [] if name in _SHAPE_ONLY_INPUT else [t for t in tree_flatten((args, kwargs))[0]
                                                       if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if name.startswith("_foreach_") and name.endswith("_"):
            outputs = []  # in place: the written tensors are among the inputs
        moved = sum(t.numel() * t.element_size() for t in inputs + outputs)
        launches = 1
        if name.startswith("_foreach_"):
            lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
            count = len(lists[0]) if lists else 1
            elements = sum(t.numel() for t in lists[0]) if lists else 0
            launches = max(1, -(-count // FOREACH_TENSORS_PER_LAUNCH), -(-elements // FOREACH_ELEMENTS_PER_LAUNCH))
        self.kernels.append(Kernel(self.phase, name, flops, moved, _unit(name, inputs, flops, self.allow_tf32),
                                   launches))
        return out

    def library_kernels(self, kernels: list[tuple[str, int, int, int]]) -> None:
        """Kernels a vendor library runs inside one aten call (cuDNN's LSTM): tensor cores for half, TF32 for
        fp32 (cuDNN's default math with torch.backends.cudnn.allow_tf32 on)."""
        if self.phase is None:
            return
        for name, flops, moved, launches in kernels:
            self.kernels.append(Kernel(self.phase, name, flops, moved, "tf32", launches))


def kernel_parts(kernel: Kernel, gpu: GpuSpec) -> tuple[float, float, float]:
    """(compute, memory, launch floor) seconds of one kernel: FLOPs / (unit peak x achieved fraction), bytes /
    (bandwidth x fraction), launches x floor; the kernel takes the largest."""
    compute = 0.0
    if kernel.flops:
        peak = gpu.peak_for(PEAK_COLUMN[kernel.unit])
        compute = kernel.flops / (peak * ACHIEVED_FRACTION[kernel.unit])
    memory = kernel.bytes / (gpu.memory_bandwidth_bytes_per_s * BANDWIDTH_FRACTION)
    return compute, memory, kernel.launches * LAUNCH_SECONDS


def kernel_seconds(kernel: Kernel, gpu: GpuSpec) -> float:
    """max(compute, memory, launch floor)."""
    return max(kernel_parts(kernel, gpu))


def step_time(kernels: list[Kernel], gpu: GpuSpec) -> dict[str, Any]:
    """Per phase: seconds split into compute-bound, memory-bound and launch time, kernel and launch counts,
    FLOPs and bytes; and the step's sum."""
    phases: dict[str, dict[str, Any]] = {}
    for phase in ("forward", "backward", "optimizer"):
        compute = memory = launch = 0.0
        own = [k for k in kernels if k.phase == phase]
        for kernel in own:
            c, m, lo = kernel_parts(kernel, gpu)
            bound = max(c, m, lo)
            if bound == lo:
                launch += lo
            elif bound == c:
                compute += c
            else:
                memory += m
        parts = {"compute": compute, "memory": memory, "launch": launch}
        phases[phase] = {
            "seconds": compute + memory + launch, "compute_seconds": compute, "memory_seconds": memory,
            "launch_seconds": launch, "bound": max(parts, key=parts.get) if own else "-",
            "kernels": len(own), "launches": sum(k.launches for k in own),
            "flops": sum(k.flops for k in own), "bytes": sum(k.bytes for k in own),
        }
    return {"phases": phases, "step_seconds": sum(p["seconds"] for p in phases.values())}


def describe() -> list[str]:
    return [
        "step time = sum over the step's kernels (every non-view aten op of forward + loss, backward and the "
        "optimizer's foreach kernels, traced on meta tensors under the CUDA target's rules, autocast's casts "
        "included) of max(FLOPs / (unit peak x achieved fraction), bytes / (bandwidth x fraction), "
        f"{LAUNCH_SECONDS * 1e6:g} us per launch: eager PyTorch's per-op floor) (kernel_time.py)",
        f"units: bf16/fp16 math on tensor cores at {ACHIEVED_FRACTION['tensor']:.0%} of peak; fp32 matmuls on CUDA "
        f"cores at {ACHIEVED_FRACTION['fp32']:.0%} (TF32 off for matmuls, torch's default); fp32 convolutions on "
        f"TF32 tensor cores at {ACHIEVED_FRACTION['tf32']:.0%} (cudnn.allow_tf32 on, torch's default); memory at "
        f"{BANDWIDTH_FRACTION:.0%} of the card's bandwidth; fractions and the launch floor calibrated on the public "
        "H200 measurements (README)",
    ]


def trace_step(model: torch.nn.Module, inputs, loss_fn: Callable | None, precision_name: str, optimizer_name: str,
               model_name: str = "the model", allow_tf32: bool = False) -> list[Kernel]:
    """The kernels of one steady training step of a meta copy of MODEL on meta INPUTS (the 2nd step: the
    optimizer's state exists), as CUDA runs them."""
    from ..guard import preserved
    from ..memory import device_rules
    from ..memory.estimate import meta_copy
    from ..memory.optimizer_state import build_optimizer, unique_trainable
    from ..memory.step import PRECISIONS, MetaGradScaler, cast_inputs, training_step
    precision = PRECISIONS[precision_name]
    with preserved(model):
        work = meta_copy(model)
    if precision.param_dtype is not None:
        work = work.to(precision.param_dtype)
    work.train()
    inputs = cast_inputs(inputs, precision.param_dtype)
    trainable = unique_trainable(work.parameters())
    log = KernelLog(allow_tf32)
    rules = device_rules.TargetFunctionMode("cuda", precision.autocast_dtype, kernel_sink=log.library_kernels)
    optimizer = build_optimizer(optimizer_name, trainable, True)
    scaler = MetaGradScaler() if precision.grad_scaler else None

    def phase(name: str) -> None:
        log.phase = None if name == "done" else name

    with rules.recompute_in_backward(), rules, log:
        log.phase = None
        training_step(work, inputs, loss_fn, optimizer, rules.autocast, scaler, model_name=model_name)
        training_step(work, inputs, loss_fn, optimizer, rules.autocast, scaler, phase, model_name)
    with contextlib.suppress(Exception):
        del optimizer
    return log.kernels
