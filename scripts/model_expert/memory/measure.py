"""The real thing: the same training step the estimate runs, on the real device, with its allocator's own count.

- CUDA: torch.cuda.max_memory_allocated() above the bytes allocated before the copy of the model.
- CPU: the CPU allocator's allocation and free events, as torch.profiler(profile_memory=True) records
  them, summed in time order from an empty start (the copy of the model, the inputs, every step are
  made inside the profile, so no free of an older block goes unseen).
Both count what the allocator hands out, including blocks a kernel allocates for itself, which the
estimate's dispatch-level tracker cannot see: this is the independent check of the estimate.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_map

from ..errors import UserError
from ..guard import preserved
from ..inputs import ModelInputs
from ..model_copy import copy_model
from .cpu_kernels import cpu_allocator_events, memory_changes
from .estimate import enable_checkpointing
from .optimizer_state import build_optimizer, state_tensors, unique_trainable
from .step import PRECISIONS, cast_inputs, inference_step, training_step

MAX_WARMUP_STEPS = 5  # a GradScaler may skip early steps; warm up until the optimizer state exists
MEASURABLE_DEVICES = ("cuda", "cpu")


def require_device(device: str) -> None:
    if device not in MEASURABLE_DEVICES:
        raise UserError(f"--measure runs the real step on --target-device cuda or cpu, not {device}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--measure runs the real training step and needs a CUDA GPU; none is visible to PyTorch "
                        "(drop --measure for the estimate alone, or check the CPU estimate with "
                        "--target-device cpu --measure)")


def clean_cuda() -> int:
    """Free cached blocks and cuBLAS workspaces; return the bytes still allocated (the baseline)."""
    gc.collect()
    torch.cuda.synchronize()
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


class CudaMeter:
    """Peak bytes allocated inside each window, above the baseline taken when the meter starts; and the peak
    the caching allocator reserved from the driver (allocated + cached free blocks: what nvidia-smi sees)."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self.reserved_peaks: dict[str, int] = {}

    @contextlib.contextmanager
    def session(self) -> Iterator["CudaMeter"]:
        self.baseline = clean_cuda()
        try:
            yield self
        finally:
            clean_cuda()

    @contextlib.contextmanager
    def window(self, label: str, fresh_workspaces: bool = False) -> Iterator[None]:
        gc.collect()
        if fresh_workspaces:
            clean_cuda()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        yield
        torch.cuda.synchronize()
        self.peaks[label] = torch.cuda.max_memory_allocated() - self.baseline
        self.reserved_peaks[label] = torch.cuda.max_memory_reserved()


class CpuMeter:
    """Peak of the CPU allocator's running total inside each window, from the profiler's memory events."""

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self.reserved_peaks: dict[str, int] = {}  # the CPU allocator reserves nothing beyond what it hands out
        self._windows: list[str] = []

    @contextlib.contextmanager
    def session(self) -> Iterator["CpuMeter"]:
        gc.collect()
        with cpu_allocator_events() as events:
            yield self
            gc.collect()
        self.peaks.update(peaks_in_windows(events, self._windows))

    @contextlib.contextmanager
    def window(self, label: str, fresh_workspaces: bool = False) -> Iterator[None]:
        gc.collect()
        self._windows.append(label)
        with torch.profiler.record_function(_window_name(label)):
            yield


def _window_name(label: str) -> str:
    return f"model_expert.measure.{label}"


def peaks_in_windows(events, labels: list[str]) -> dict[str, int]:
    """Running total of the '[memory]' events (allocations positive, frees negative) in time order; the
    highest value each labelled record_function range reaches, the running total at its start included."""
    spans = {}
    for event in events:
        for label in labels:
            if event.name() == _window_name(label):
                spans[label] = (event.start_ns(), event.start_ns() + event.duration_ns())
    missing = [label for label in labels if label not in spans]
    if missing:
        raise RuntimeError(f"the profiler recorded no range for {missing}")
    changes = memory_changes(events)
    peaks = {}
    for label, (start, end) in spans.items():
        total = peak = 0
        for moment, change in changes:
            if moment > end:
                break
            total += change
            if moment < start:
                peak = total
            else:
                peak = max(peak, total)
        peaks[label] = peak
    return peaks


def _fresh(inputs: ModelInputs) -> ModelInputs:
    """Copies of the input tensors, made inside the measurement: counted once whether the factory made new
    tensors or handed back ones that existed before (which the CPU meter would otherwise never see)."""
    def copy_of(value):
        return value.clone() if isinstance(value, torch.Tensor) else value
    return ModelInputs(args=tree_map(copy_of, inputs.args), kwargs=tree_map(copy_of, inputs.kwargs), batch=inputs.batch)


def measure_step(model: nn.Module, build_inputs: Callable[[str], ModelInputs], loss_fn: Callable | None,
                 optimizer_name: str, precision_name: str, gradient_checkpointing: bool = False,
                 model_name: str = "the model", device: str = "cuda", timed_steps: int = 0) -> dict[str, object]:
    """Peak allocated bytes of the steady training step and of an eval-mode forward without grad, counted
    from before the copy of the model was made (so parameters, inputs and optimizer state are included),
    plus, with TIMED_STEPS > 0 on CUDA, the median wall time of that many further steps."""
    require_device(device)
    precision = PRECISIONS[precision_name]
    meter = CudaMeter() if device == "cuda" else CpuMeter()
    step_seconds: list[float] = []
    with preserved(model), meter.session():
        work = copy_model(model, device)
        if precision.param_dtype is not None:
            work = work.to(precision.param_dtype)
        if gradient_checkpointing:
            enable_checkpointing(work, model_name)
        work.train()
        inputs = _fresh(cast_inputs(build_inputs(device), precision.param_dtype))
        trainable = unique_trainable(work.parameters())
        optimizer = build_optimizer(optimizer_name, trainable, foreach=None)  # torch's default: foreach on CUDA
        scaler = torch.amp.GradScaler(device) if precision.grad_scaler else None

        def autocast():
            if precision.autocast_dtype is None:
                return contextlib.nullcontext()
            return torch.autocast(device, dtype=precision.autocast_dtype)

        def step():
            training_step(work, inputs, loss_fn, optimizer, autocast, scaler, model_name=model_name)

        for _ in range(MAX_WARMUP_STEPS):
            step()
            if optimizer is None or state_tensors(optimizer):
                break
        with meter.window("training"):
            step()
        if device == "cuda":
            for _ in range(timed_steps):
                torch.cuda.synchronize()
                started = time.perf_counter()
                step()
                torch.cuda.synchronize()
                step_seconds.append(time.perf_counter() - started)

        del optimizer, scaler
        for parameter in trainable:
            parameter.grad = None
        work.eval()
        with meter.window("inference", fresh_workspaces=True):
            inference_step(work, inputs, autocast, model_name)
        del work, inputs, trainable
    result: dict[str, object] = {"peak_bytes": int(meter.peaks["training"]),
                                 "inference_peak_bytes": int(meter.peaks["inference"]), "device": device}
    if "training" in meter.reserved_peaks:
        result["reserved_peak_bytes"] = int(meter.reserved_peaks["training"])
    if step_seconds:
        result["step_seconds_median"] = statistics.median(step_seconds)
        result["timed_steps"] = len(step_seconds)
    return result
