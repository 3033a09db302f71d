"""What the tools people use today say about the same training step, for the validation table.

- "4 x model size": the rule of thumb for Adam (weights + gradients + two moments), no activations.
- torchinfo's "Estimated Total Size": input + every module's output + parameters, from one forward
  (torchinfo.summary; only where torchinfo is installed).
- PyTorch's MemTracker (torch.distributed._tools.mem_tracker) under FakeTensorMode, as its docs show:
  the model, optimizer and inputs built as fake tensors on the target device, two training steps
  tracked, the peak read from its snapshot. No GradScaler (its found-inf check needs real values).
Each returns bytes, or raises: the caller records the failure as that tool's answer.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import nn

from model_expert.inputs import ModelInputs
from model_expert.memory.autocast_policy import forced_autocast
from model_expert.memory.optimizer_state import build_optimizer, unique_trainable
from model_expert.memory.step import PRECISIONS, cast_inputs, training_step

BASELINES = ("memtracker_fake", "torchinfo", "four_x_model_size")
BASELINE_TITLES = {"memtracker_fake": "MemTracker (fake)", "torchinfo": "torchinfo total",
                   "four_x_model_size": "4 × model size"}


def four_x_model_size(model: nn.Module, precision: str) -> int:
    dtype = PRECISIONS[precision].param_dtype
    unique = {id(p): p for p in model.parameters()}.values()
    element_bytes = (lambda p: torch.finfo(dtype).bits // 8) if dtype is not None else (lambda p: p.element_size())
    return 4 * sum(p.numel() * element_bytes(p) for p in unique)


def torchinfo_total(model: nn.Module, inputs: ModelInputs, device: str) -> int:
    import torchinfo  # an optional dependency of the benchmark alone
    data: Any = inputs.kwargs if inputs.kwargs and not inputs.args else list(inputs.args)
    extra = inputs.kwargs if inputs.args else {}
    stats = torchinfo.summary(model, input_data=data, device=device, verbose=0, mode="train", **extra)
    return int(stats.total_input + stats.total_output_bytes + stats.total_param_bytes)


def memtracker_fake_peak(build: Callable[[], nn.Module], build_inputs: Callable[[str], ModelInputs],
                         loss_fn: Callable | None, optimizer_name: str, precision_name: str, device: str,
                         checkpointing: bool = False) -> int:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker
    precision = PRECISIONS[precision_name]
    if device == "cuda" and not torch.backends.cuda.is_built():
        raise RuntimeError("not run: fake CUDA parameters need a CUDA build of torch")
    default_dtype = torch.get_default_dtype()
    with FakeTensorMode():
        # Built in the parameter dtype: Module.to(dtype) on fake parameters fails ("Couldn't swap").
        torch.set_default_dtype(precision.param_dtype or default_dtype)
        try:
            with torch.device(device):
                model = build()
        finally:
            torch.set_default_dtype(default_dtype)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        inputs = cast_inputs(build_inputs(device), precision.param_dtype)
        optimizer = build_optimizer(optimizer_name, unique_trainable(model.parameters()), foreach=None)

        def autocast():
            if precision.autocast_dtype is None:
                return contextlib.nullcontext()
            return forced_autocast(device, precision.autocast_dtype, cache=True)

        tracker = MemTracker()
        tracker.track_external(model, *([optimizer] if optimizer is not None else []))
        with tracker:
            for _ in range(2):
                training_step(model, inputs, loss_fn, optimizer, autocast)
                tracker.reset_mod_stats()  # its docs: required between iterations
        snapshot = tracker.get_tracker_snapshot("peak")
    return int(snapshot[torch.device(device) if device != "cuda" else torch.device("cuda", 0)]["Total"])


def run_baselines(build: Callable[[], nn.Module], build_inputs: Callable[[str], ModelInputs], loss_fn: Callable | None,
                  optimizer: str, precision: str, device: str, checkpointing: bool,
                  real_model: nn.Module | None = None) -> dict[str, dict[str, Any]]:
    """{baseline: {"bytes": int} or {"failed": "one line"}}; torchinfo needs REAL_MODEL (on DEVICE)."""
    results: dict[str, dict[str, Any]] = {}

    def attempt(name: str, compute: Callable[[], int]) -> None:
        try:
            results[name] = {"bytes": compute()}
        except Exception as error:  # noqa: BLE001 - a tool that fails on a model is that tool's answer
            text = (str(error).strip().splitlines() or [""])[0][:160]
            results[name] = {"failed": f"{type(error).__name__}: {text}"}

    with torch.device("meta"):
        meta_model = build()
    attempt("four_x_model_size", lambda: four_x_model_size(meta_model, precision))
    attempt("memtracker_fake", lambda: memtracker_fake_peak(build, build_inputs, loss_fn, optimizer, precision, device,
                                                            checkpointing))
    if real_model is not None:
        attempt("torchinfo", lambda: torchinfo_total(real_model, build_inputs(device), device))
    else:
        results["torchinfo"] = {"failed": "not run (no real model on this device)"}
    return results
