"""Step time on a CUDA card, kernel by kernel, as the CPU issues them and the GPU runs them.

The training step (forward + loss, backward, the optimizer's foreach kernels, autocast's casts) runs once
on meta tensors under the CUDA target's rules (memory/device_rules.py: the attention kernel CUDA picks,
fused dropout, autocast as torch applies it on CUDA), and every aten op that is not a view is one kernel.
Eager PyTorch is a queue: the CPU issues op after op (Python, the dispatcher, the autograd engine, the
launch), the GPU runs each kernel once it is issued and the one before it is done, and `.item()` makes the
CPU wait for the GPU (GradScaler's inf check, a data-dependent branch). `step_time` runs that queue:

    GPU time of a kernel = max(FLOPs / (peak of its unit x ACHIEVED_FRACTION[unit]),
                               bytes read + written / (bandwidth x BANDWIDTH_FRACTION),
                               launches x GPU_KERNEL_FLOOR_SECONDS)
    CPU time of an op    = CPU_OP_SECONDS (forward, loss, optimizer) or CPU_BACKWARD_OP_SECONDS (backward)
                           + CPU_AUTOCAST_OP_SECONDS inside autocast + CPU_LAUNCH_SECONDS per further launch

so a large model is bound by its kernels and a small or autocast one by the CPU's issue rate, with no
switch between the two. Each cost term comes from a mechanism:
- FLOPs: FlopCounterMode's formulas (matmul, convolution, attention; 2 per multiply-add), its convolution
  backward divided by the groups for the weight gradient (counting.grouped_conv_backward_flop);
- the unit: bf16/fp16 math on tensor cores; fp32 matmuls on CUDA cores (torch's default: TF32 off for
  matmuls); fp32 convolutions on TF32 tensor cores (torch's default: torch.backends.cudnn.allow_tf32 = True);
  depthwise convolutions on CUDA cores (no GEMM to give tensor cores);
- bytes: every tensor the kernel reads or writes, at its own dtype, once (eager PyTorch: no fusion), plus
  what the op's arguments do not show: a tensor-core convolution on NCHW tensors converts its activations
  to NHWC and back (convolution_mechanism), training batch norm reads its input twice each way
  (batch_norm_extra_bytes);
- autocast: its casts are _to_copy kernels of their own (traced), and every op inside the region pays the
  Autocast dispatch key's cast lookups on the CPU;
- a foreach kernel (the optimizer) is several launches: multi_tensor_apply packs at most
  FOREACH_TENSORS_PER_LAUNCH tensors or FOREACH_ELEMENTS_PER_LAUNCH elements into one.
The constants were fitted on half of the public H200 set (FITTED_ON) and checked on the other half
(CHECKED_ON); bench/h200_public.py prints every case's error, the README has the table.
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

# Fitted on FITTED_ON (a grid over these constants, minimising worst + median |error|), checked on CHECKED_ON.
FITTED_ON = ("resnet50-fp32-sgdm", "vit-b16-bf16amp-adamw", "gpt2-fp32-adamw", "bert-base-fp32-adamw")
CHECKED_ON = ("nn-transformer-fp32-sgdm", "lstm-lm-fp32-adam", "convnext-tiny-fp16amp-adamw", "llama1b-bf16params-adamw")
# Fractions of the data-sheet peak reached on a training step's shapes: tensor-core GEMMs (bf16/fp16), fp32 GEMMs
# on CUDA cores (both from the earlier fit on the language models, unchanged), TF32 convolutions (fitted: cuDNN's
# implicit GEMM on ResNet-50's shapes, its layout conversions counted apart), depthwise convolutions on CUDA cores
# (not fitted: no public run is bound by them; ATen's depthwise kernels reach about a tenth of the fp32 peak).
ACHIEVED_FRACTION = {"tensor": 0.60, "tf32": 0.15, "fp32": 0.65, "depthwise": 0.10}
BANDWIDTH_FRACTION = 0.80  # of HBM bandwidth, eager elementwise kernels (fitted)
GPU_KERNEL_FLOOR_SECONDS = 4e-6  # the shortest a kernel runs, launch latency on the GPU included (fitted)
CPU_OP_SECONDS = 30e-6  # Python, dispatcher and launch of one eager op (fitted)
CPU_BACKWARD_OP_SECONDS = 40e-6  # one op issued by the autograd engine, its node's bookkeeping included (fitted)
CPU_AUTOCAST_OP_SECONDS = 20e-6  # the Autocast dispatch key's cast-cache lookups for an op inside autocast (fitted)
CPU_LAUNCH_SECONDS = 5e-6  # each further launch of one op (foreach chunks, cuDNN's kernels): cudaLaunchKernel alone
PHASES = ("forward", "backward", "optimizer")
PEAK_COLUMN = {"tensor": "bf16", "tf32": "tf32", "fp32": "fp32", "depthwise": "fp32"}  # gpus.py's columns (bf16 = fp16 on every card)
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
    unit: str  # tensor, tf32, fp32 (matmul-like with FLOPs), depthwise (CUDA cores) or memory (no FLOP formula)
    launches: int = 1
    autocast: bool = False  # issued inside an autocast region (the Autocast dispatch key runs first on the CPU)
    sync: bool = False  # the CPU waits here for the GPU to catch up (.item() on a CUDA tensor)
    extra_bytes: int = 0  # of `bytes`: passes the op's own inputs/outputs do not show (layout conversions, 2-pass norms)


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


def _is_nchw(tensor: torch.Tensor) -> bool:
    """A 4-D activation in torch's default (contiguous NCHW) layout, not channels_last."""
    return (tensor.dim() == 4 and tensor.is_contiguous() and tensor.shape[1] > 1
            and tensor.shape[2] * tensor.shape[3] > 1)


def _nbytes(tensor) -> int:
    return tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0


def convolution_mechanism(name: str, args, out, unit: str) -> tuple[str, int, int]:
    """(unit, extra bytes, extra launches) of a cuDNN convolution. A depthwise convolution (groups = input
    channels) runs cuDNN's/ATen's CUDA-core depthwise kernels, not tensor-core GEMMs. A tensor-core convolution
    (half, or fp32 with TF32) on NCHW tensors has its activations converted to NHWC and back around the GEMM
    (cuDNN's nchwToNhwc / nhwcToNchw kernels: each converted tensor read once and written once): forward the
    input and the output; backward (data and weight gradients) the output gradient, the input and the input
    gradient. channels_last tensors need none."""
    forward = name != "convolution_backward"
    data, weight = (args[0], args[1]) if forward else (args[1], args[2])
    groups = args[8] if forward else args[9]
    if not isinstance(data, torch.Tensor) or data.dim() < 3:
        return unit, 0, 0
    if groups > 1 and groups == data.shape[1]:
        return "depthwise", 0, 0
    if unit not in ("tensor", "tf32") or not _is_nchw(data):
        return unit, 0, 0
    if forward:
        return unit, 2 * (_nbytes(data) + _nbytes(out)), 2
    grad_input = out[0] if isinstance(out, (tuple, list)) else None
    return unit, 2 * (_nbytes(args[0]) + _nbytes(data) + _nbytes(grad_input)), 3


def batch_norm_extra_bytes(name: str, args) -> int:
    """Training-mode batch norm reads its input twice (a statistics pass, then the normalising pass) and its
    backward reads the input and the output gradient twice (a reduction pass, then the elementwise pass):
    aten/src/ATen/native/cuda/Normalization.cuh's two kernels per direction."""
    if name in ("native_batch_norm", "_native_batch_norm_legit", "cudnn_batch_norm"):
        training = args[5] if len(args) > 5 and isinstance(args[5], bool) else True
        return _nbytes(args[0]) if training else 0
    if name in ("native_batch_norm_backward", "cudnn_batch_norm_backward"):
        return _nbytes(args[0]) + _nbytes(args[1])
    return 0


class KernelLog(TorchDispatchMode):
    """Records every non-view aten op as a Kernel (FLOPs from FlopCounterMode's registry, bytes at each
    tensor's own dtype); `.item()` on meta returns the value the memory tracker assumes."""

    def __init__(self, allow_tf32: bool = False):
        super().__init__()
        self.kernels: list[Kernel] = []
        self.phase = "forward"
        self.allow_tf32 = allow_tf32
        self.formulas = {**_fc.flop_registry, **{k: _fc.shape_wrapper(v) for k, v in EXTRA_FLOP_FORMULAS.items()}}
        self.autocast_enabled: Callable[[], bool] = lambda: False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            from ..memory.tracker import plausible_scalar
            if self.phase is not None:  # the CPU waits for the GPU's result: no kernel, a synchronisation
                self.kernels.append(Kernel(self.phase, "_local_scalar_dense", 0, 0, "memory", 0, sync=True))
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
        unit = _unit(name, inputs, flops, self.allow_tf32)
        extra = 0
        if name in _CONVOLUTIONS and flops:
            unit, extra, extra_launches = convolution_mechanism(name, args, out, unit)
            launches += extra_launches
        else:
            extra = batch_norm_extra_bytes(name, args)
        self.kernels.append(Kernel(self.phase, name, flops, moved + extra, unit, launches,
                                   autocast=self.autocast_enabled(), extra_bytes=extra))
        return out

    def library_kernels(self, kernels: list[tuple[str, int, int, int]]) -> None:
        """Kernels a vendor library runs inside one aten call (cuDNN's LSTM): tensor cores for half, TF32 for
        fp32 (cuDNN's default math with torch.backends.cudnn.allow_tf32 on)."""
        if self.phase is None:
            return
        for name, flops, moved, launches in kernels:
            self.kernels.append(Kernel(self.phase, name, flops, moved, "tf32", launches))


def kernel_parts(kernel: Kernel, gpu: GpuSpec) -> tuple[float, float, float]:
    """(compute, memory, floor) GPU seconds of one kernel: FLOPs / (unit peak x achieved fraction), bytes /
    (bandwidth x fraction), launches x the shortest a kernel runs; the kernel takes the largest."""
    compute = 0.0
    if kernel.flops:
        peak = gpu.peak_for(PEAK_COLUMN[kernel.unit])
        compute = kernel.flops / (peak * ACHIEVED_FRACTION[kernel.unit])
    memory = kernel.bytes / (gpu.memory_bandwidth_bytes_per_s * BANDWIDTH_FRACTION)
    return compute, memory, kernel.launches * GPU_KERNEL_FLOOR_SECONDS


def kernel_seconds(kernel: Kernel, gpu: GpuSpec) -> float:
    """The kernel's GPU time: max(compute, memory, floor)."""
    return max(kernel_parts(kernel, gpu))


def cpu_seconds(kernel: Kernel) -> float:
    """The CPU's time to issue one aten op: Python, dispatcher and launch in the forward and the optimizer, the
    autograd engine's C++ in backward; the Autocast dispatch key's cast lookups on top inside autocast; each
    further launch of the op (foreach chunks, a library's kernels) its own launch."""
    if kernel.sync:
        return 0.0
    base = CPU_BACKWARD_OP_SECONDS if kernel.phase == "backward" else CPU_OP_SECONDS
    return base + (CPU_AUTOCAST_OP_SECONDS if kernel.autocast else 0.0) + max(kernel.launches - 1, 0) * CPU_LAUNCH_SECONDS


def step_time(kernels: list[Kernel], gpu: GpuSpec) -> dict[str, Any]:
    """The step as the CPU issues it and the GPU runs it: the CPU issues op after op (cpu_seconds), the GPU runs
    each kernel (kernel_seconds) once it is issued and the previous one is done, and a synchronisation (.item())
    makes the CPU wait for the GPU. Per phase: GPU seconds split into compute-bound, memory-bound and launch
    (the GPU idle waiting for the CPU, and kernels at their floor), kernel and launch counts, FLOPs and bytes."""
    acc = {phase: {"compute": 0.0, "memory": 0.0, "launch": 0.0} for phase in PHASES}
    cpu_clock = gpu_clock = 0.0
    for kernel in kernels:
        if kernel.sync:
            cpu_clock = max(cpu_clock, gpu_clock)
            continue
        cpu_clock += cpu_seconds(kernel)
        start = max(gpu_clock, cpu_clock)
        parts = acc[kernel.phase]
        parts["launch"] += start - gpu_clock
        c, m, floor = kernel_parts(kernel, gpu)
        bound = max(c, m, floor)
        parts["launch" if bound == floor else "compute" if bound == c else "memory"] += bound
        gpu_clock = start + bound
    acc["optimizer"]["launch"] += max(cpu_clock - gpu_clock, 0.0)  # the CPU's last issue after the GPU is done
    phases: dict[str, dict[str, Any]] = {}
    for phase in PHASES:
        own = [k for k in kernels if k.phase == phase and not k.sync]
        parts = acc[phase]
        phases[phase] = {
            "seconds": sum(parts.values()), "compute_seconds": parts["compute"], "memory_seconds": parts["memory"],
            "launch_seconds": parts["launch"], "bound": max(parts, key=parts.get) if own else "-",
            "kernels": len(own), "launches": sum(k.launches for k in own),
            "flops": sum(k.flops for k in own), "bytes": sum(k.bytes for k in own),
        }
    return {"phases": phases, "step_seconds": sum(p["seconds"] for p in phases.values())}


def describe() -> list[str]:
    return [
        "step time = the step's kernels (every non-view aten op of forward + loss, backward and the optimizer's "
        "foreach kernels, traced on meta tensors under the CUDA target's rules, autocast's casts included) run as "
        "a queue: the CPU issues each op "
        f"({CPU_OP_SECONDS * 1e6:g} us, {CPU_BACKWARD_OP_SECONDS * 1e6:g} us in backward, "
        f"+{CPU_AUTOCAST_OP_SECONDS * 1e6:g} us inside autocast, +{CPU_LAUNCH_SECONDS * 1e6:g} us per further launch), "
        "the GPU runs it once issued for max(FLOPs / (unit peak x achieved fraction), bytes / (bandwidth x "
        f"fraction), {GPU_KERNEL_FLOOR_SECONDS * 1e6:g} us per launch); .item() makes the CPU wait (flops/kernel_time.py)",
        f"units: bf16/fp16 math on tensor cores at {ACHIEVED_FRACTION['tensor']:.0%} of peak; fp32 matmuls on CUDA "
        f"cores at {ACHIEVED_FRACTION['fp32']:.0%} (TF32 off for matmuls, torch's default); fp32 convolutions on "
        f"TF32 tensor cores at {ACHIEVED_FRACTION['tf32']:.0%} (cudnn.allow_tf32 on, torch's default); depthwise "
        f"convolutions on CUDA cores at {ACHIEVED_FRACTION['depthwise']:.0%}; memory at {BANDWIDTH_FRACTION:.0%} of "
        "the card's bandwidth",
        "bytes beyond the ops' own tensors: tensor-core convolutions on NCHW tensors convert activations to NHWC "
        "and back (read + write each; channels_last needs none); training batch norm reads its input twice each way",
        f"constants fitted on {len(FITTED_ON)} public H200 runs ({', '.join(FITTED_ON)}) and checked on "
        f"{len(CHECKED_ON)} others ({', '.join(CHECKED_ON)}): README",
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
    log.autocast_enabled = lambda: rules.autocast_enabled
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
