"""The real thing, on a CUDA GPU: the same training step, measured with torch.cuda.max_memory_allocated()."""

from __future__ import annotations

import contextlib
import copy
import gc
from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from ..guard import preserved
from ..inputs import ModelInputs
from .estimate import enable_checkpointing
from .optimizer_state import build_optimizer, state_tensors, unique_trainable
from .step import PRECISIONS, cast_inputs, inference_step, training_step

MAX_WARMUP_STEPS = 5  # a GradScaler may skip early steps; warm up until the optimizer state exists


def require_cuda() -> None:
    if not torch.cuda.is_available():
        raise UserError("--measure runs the real training step and needs a CUDA GPU; none is visible to PyTorch "
                        "(drop --measure for the estimate alone)")


def clean_cuda() -> int:
    """Free cached blocks and cuBLAS workspaces; return the bytes still allocated (the baseline)."""
    gc.collect()
    torch.cuda.synchronize()
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def measure_on_cuda(model: nn.Module, build_inputs: Callable[[str], ModelInputs], loss_fn: Callable | None,
                    optimizer_name: str, precision_name: str, gradient_checkpointing: bool = False,
                    model_name: str = "the model") -> dict[str, int]:
    """Peak allocated bytes of the steady training step and of an inference forward, above the baseline."""
    require_cuda()
    precision = PRECISIONS[precision_name]
    with preserved(model):
        baseline = clean_cuda()
        work = copy.deepcopy(model).to("cuda")
        if precision.param_dtype is not None:
            work = work.to(precision.param_dtype)
        if gradient_checkpointing:
            enable_checkpointing(work, model_name)
        work.train()
        inputs = cast_inputs(build_inputs("cuda"), precision.param_dtype)
        trainable = unique_trainable(work.parameters())
        optimizer = build_optimizer(optimizer_name, trainable, foreach=None)  # torch's default: foreach on CUDA
        scaler = torch.amp.GradScaler("cuda") if precision.grad_scaler else None

        def autocast():
            if precision.autocast_dtype is None:
                return contextlib.nullcontext()
            return torch.autocast("cuda", dtype=precision.autocast_dtype)

        for _ in range(MAX_WARMUP_STEPS):
            training_step(work, inputs, loss_fn, optimizer, autocast, scaler, model_name=model_name)
            if optimizer is None or state_tensors(optimizer):
                break
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        training_step(work, inputs, loss_fn, optimizer, autocast, scaler, model_name=model_name)
        torch.cuda.synchronize()
        training_peak = torch.cuda.max_memory_allocated() - baseline

        del optimizer, scaler
        for parameter in trainable:
            parameter.grad = None
        work.eval()
        clean_cuda()
        torch.cuda.reset_peak_memory_stats()
        inference_step(work, inputs, autocast, model_name)
        torch.cuda.synchronize()
        inference_peak = torch.cuda.max_memory_allocated() - baseline
        del work, inputs, trainable
        clean_cuda()
    return {"peak_bytes": int(training_peak), "inference_peak_bytes": int(inference_peak)}
