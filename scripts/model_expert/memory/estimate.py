"""The estimate: one steady training step (and one inference forward) run on meta tensors under
the allocation tracker and the target device's rules."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from ..guard import preserved
from ..inputs import ModelInputs, real_value
from ..model_copy import copy_model
from ..runner import ModelCallError
from . import cpu_conv, cpu_lstm, cuda_allocator, cuda_lstm, device_rules, loss_kernels
from .optimizer_state import OPTIMIZER_RULES, build_optimizer, parameter_bytes, state_tensors, unique_trainable
from .step import PRECISIONS, MetaGradScaler, cast_inputs, inference_step, training_step
from .tracker import AllocationTracker

# The breakdown every consumer reads: these five keys sum to peak_bytes. Finer roles fold into them.
BREAKDOWN_KEYS = ("params", "grads", "optimizer_state", "activations", "temporaries")
FOLD = {"params": "params", "buffers": "params", "grads": "grads", "optimizer_state": "optimizer_state",
        "inputs": "activations", "activations": "activations", "temporaries": "temporaries",
        "workspace": "temporaries"}

BLOCK_RULES: dict[str, Callable[[int], int]] = {"cuda": device_rules.cuda_block_bytes, "cpu": device_rules.cpu_block_bytes}
# CUDA optimizers default to the multi-tensor (foreach) implementation; CPU ones to the per-tensor loop.
FOREACH_BY_TARGET = {"cuda": True, "cpu": False}
CHECKPOINTING_METHODS = ("activation_checkpointing_enable", "gradient_checkpointing_enable")


@dataclass
class EstimateOptions:
    optimizer: str = "adamw"
    precision: str = "fp32"
    target_device: str = "cuda"
    gpu_name: str | None = None
    gradient_checkpointing: bool = False
    sdpa_backend: str | None = None  # force one attention kernel (what-ifs, tests)
    inference: bool = True
    # CUDA target: also replay the step through an allocator that may reserve at most this many bytes (a
    # capped process: it frees its cached segments and retries before running out), see fits_allocator_capacity
    allocator_capacity_bytes: int | None = None


@dataclass
class MemoryEstimate:
    peak_bytes: int
    breakdown: dict[str, int]
    breakdown_detail: dict[str, int]
    peak_phase: str
    inference_peak_bytes: int | None
    assumptions: list[str]
    param_bytes: int
    trainable_param_bytes: int
    # What autograd holds for backward once forward + loss are done (saved tensors other than parameters,
    # buffers and inputs; allocator-rounded): the per-batch part that does not depend on where the peak is.
    activation_bytes_end_of_forward: int = 0
    sdpa_backends: dict[str, int] = field(default_factory=dict)
    data_dependent_reads: int = 0
    cpu_standin_ops: dict[str, int] = field(default_factory=dict)
    # Memory the estimate knows it does not see (library kernels' own buffers), each with its measured size.
    unmodelled_buffers: list[str] = field(default_factory=list)
    # CUDA target: what the caching allocator reserves (segments) over setup + warm-up + steady step, from the
    # tracker's allocations and frees replayed through cuda_allocator.py; None on the CPU target.
    reserved_peak_bytes: int | None = None
    # With options.allocator_capacity_bytes: whether the capped replay ran without running out of memory.
    fits_allocator_capacity: bool | None = None


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy whose parameters and buffers are meta tensors (tied ones stay tied); no data is copied."""
    return copy_model(model, "meta")


def enable_checkpointing(model: nn.Module, model_name: str) -> None:
    """The model's own gradient checkpointing (Hugging Face style); a clear error if it has none.

    Its recomputation in backward runs under the target-device rules through
    TargetFunctionMode.recompute_in_backward(), as every other checkpoint call does."""
    for method in CHECKPOINTING_METHODS:
        function = getattr(model, method, None)
        if not callable(function):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                function()
            except Exception as error:
                raise UserError(f"{model_name}.{method}() raised {type(error).__name__}: "
                                f"{(str(error).splitlines() or [''])[0]}") from error
        return
    raise UserError(f"--gradient-checkpointing: {model_name} has no gradient_checkpointing_enable() method; "
                    f"wrap its blocks in torch.utils.checkpoint.checkpoint yourself, or drop the option")


def _register_model(tracker: AllocationTracker, model: nn.Module, inputs: ModelInputs) -> None:
    for parameter in model.parameters():
        tracker.register(parameter, "params")
    for buffer in model.buffers():
        tracker.register(buffer, "buffers")
    for value in torch.utils._pytree.tree_flatten((inputs.args, inputs.kwargs))[0]:
        if isinstance(value, torch.Tensor):
            tracker.register(value, "inputs")


class _Workspaces:
    """cuBLAS workspaces: allocated up front for the forward thread and autograd's thread; one never used is taken back out."""

    def __init__(self, tracker: AllocationTracker, nbytes: int, threads: tuple[str, ...]):
        self.tracker = tracker
        self.nbytes = nbytes
        self.used: set[str] = set()
        self.threads = threads
        self.blocks = []
        if nbytes:
            for _ in threads:
                block = torch.empty(nbytes, dtype=torch.uint8, device="meta")
                tracker.register(block, "workspace")
                self.blocks.append(block)
        self.keys = {thread: block.untyped_storage()._cdata for thread, block in zip(threads, self.blocks)}

    def on_op(self, func, outputs) -> None:
        name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else ""
        if name in device_rules.CUBLAS_OPS:
            self.used.add("autograd" if self.tracker.phase == "backward" else "main")

    def without_unused(self, events: list[tuple[int, int | None]]) -> list[tuple[int, int | None]]:
        """EVENTS less the allocation of a workspace no matmul used (torch creates it on the first use)."""
        unused = {key for thread, key in self.keys.items() if thread not in self.used}
        return [event for event in events if event[0] not in unused]  # a workspace lives as long as the step

    def unused_bytes(self) -> int:
        return sum(self.tracker.block_bytes(self.nbytes) for thread in self.threads if thread not in self.used) \
            if self.nbytes else 0


def _fold(detail: dict[str, int]) -> dict[str, int]:
    folded = {key: 0 for key in BREAKDOWN_KEYS}
    for category, nbytes in detail.items():
        folded[FOLD[category]] += nbytes
    return folded


def _without_unused_workspace(tracker: AllocationTracker, workspaces: _Workspaces) -> tuple[int, dict[str, int]]:
    detail = tracker.breakdown_at_peak()
    unused = workspaces.unused_bytes()
    detail["workspace"] -= unused
    return tracker.peak_bytes - unused, detail


def unreal_inputs_text(inputs: ModelInputs, forward: Callable | None = None) -> str:
    """The inputs whose values meta could not keep real (floating ones, or inputs too large to build twice)."""
    rows = inputs.describe(forward)
    leaves = [t for t in torch.utils._pytree.tree_flatten((inputs.args, inputs.kwargs))[0] if isinstance(t, torch.Tensor)]
    names = [row["name"] for row, tensor in zip(rows, leaves) if real_value(tensor) is None]
    return ", ".join(f"`{n}`" for n in names) if names else "none (an intermediate tensor)"


def estimate_memory(model: nn.Module, build_inputs: Callable[[str], ModelInputs], loss_fn: Callable | None,
                    options: EstimateOptions, model_name: str = "the model") -> MemoryEstimate:
    """Peak bytes of one steady training step (2nd step: optimizer state exists) and of one inference forward."""
    precision = PRECISIONS[options.precision]
    target = options.target_device
    with preserved(model):
        work = meta_copy(model)
    if precision.param_dtype is not None:
        work = work.to(precision.param_dtype)
    function_mode = device_rules.TargetFunctionMode(target, precision.autocast_dtype, options.sdpa_backend)
    if options.gradient_checkpointing:
        enable_checkpointing(work, model_name)
    work.train()
    inputs = cast_inputs(build_inputs("meta"), precision.param_dtype)
    trainable = unique_trainable(work.parameters())
    if not trainable:
        raise UserError(f"{model_name} has no trainable parameter (all requires_grad=False): there is no training "
                        f"step to estimate")

    workspace_bytes = device_rules.cublas_workspace_bytes(options.gpu_name) if target == "cuda" else 0
    tracker = AllocationTracker(BLOCK_RULES[target], devices=("meta",))
    if target == "cuda":
        tracker.events = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        tracker.relabel(tensor, "activations")
        return tensor

    hooks = [p.register_post_accumulate_grad_hook(lambda p: tracker.relabel(p.grad, "grads")) for p in trainable]
    try:
        with function_mode.recompute_in_backward(), function_mode, tracker, \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _register_model(tracker, work, inputs)
            workspaces = _Workspaces(tracker, workspace_bytes, ("main", "autograd"))
            tracker.on_op = workspaces.on_op
            optimizer = build_optimizer(options.optimizer, trainable, FOREACH_BY_TARGET[target])
            scaler = MetaGradScaler() if precision.grad_scaler else None
            if target == "cuda":  # step 1 in full: the caching allocator's segments are laid out by it
                training_step(work, inputs, loss_fn, optimizer, function_mode.autocast, scaler, model_name=model_name)
                function_mode.sdpa_backends_used.clear()  # the assumptions count the steady step's calls
                function_mode.fused_dropout_calls = function_mode.cudnn_lstm_calls = 0
                function_mode.checkpoint_calls = 0
            elif optimizer is not None:  # step 1, as far as memory goes: grads exist, state gets created
                for parameter in trainable:
                    parameter.grad = torch.zeros_like(parameter)
                optimizer.step()
            if optimizer is not None:
                for tensor in state_tensors(optimizer):
                    tracker.relabel(tensor, "optimizer_state")
            tracker.reset_peak()

            end_of_forward: dict[str, int] = {}

            def phase(name: str) -> None:
                tracker.phase = name
                if name == "backward":  # forward + loss done, backward not started
                    end_of_forward["activations"] = tracker.live_bytes("activations")

            loss = training_step(work, inputs, loss_fn, optimizer, function_mode.autocast, scaler, phase, model_name)
            if not loss.requires_grad and loss.grad_fn is None and all(p.grad is None for p in trainable):
                raise UserError("the loss does not reach any trainable parameter; check requires_grad and --loss")
        peak_bytes, detail = _without_unused_workspace(tracker, workspaces)
        reserved_peak = fits_capacity = None
        if tracker.events is not None:
            events = workspaces.without_unused(tracker.events)
            reserved_peak = cuda_allocator.replay(events).peak_reserved_bytes
            if options.allocator_capacity_bytes is not None:
                fits_capacity = reserved_peak <= options.allocator_capacity_bytes or not cuda_allocator.replay(
                    events, options.allocator_capacity_bytes).out_of_memory
            tracker.events = None
        peak_phase = tracker.peak_phase
        training_tracker = tracker
        backends = dict(function_mode.sdpa_backends_used)
        activations_end = end_of_forward["activations"]
    except ModelCallError as error:
        if tracker.cpu_standin_ops or tracker.data_dependent_reads:
            raise ModelCallError(f"{error}; on meta the model read values it was not given (stand-ins for "
                                 + ", ".join(sorted({*tracker.cpu_standin_ops, *tracker.data_dependent_reads}))
                                 + f"; the inputs without real values: {unreal_inputs_text(inputs, model.forward)}): give real batches with --data FILE.py:FN, "
                                 f"or run with --device cpu") from None
        raise
    finally:
        for handle in hooks:
            handle.remove()

    del optimizer, loss
    for parameter in trainable:
        parameter.grad = None
    inference_peak = None
    if options.inference:
        inference_peak = _estimate_inference(work, inputs, options, precision, workspace_bytes, model_name)

    param_bytes = parameter_bytes({id(p): p for p in work.parameters()}.values())
    unmodelled = unmodelled_buffers(_library_kernel_modules(work), precision, target)
    assumptions = describe_assumptions(options, precision, training_tracker, backends, workspaces, target,
                                       function_mode) + unmodelled
    return MemoryEstimate(
        peak_bytes=peak_bytes, breakdown=_fold(detail), breakdown_detail=detail, peak_phase=peak_phase,
        inference_peak_bytes=inference_peak, assumptions=assumptions, param_bytes=param_bytes,
        trainable_param_bytes=parameter_bytes(trainable), activation_bytes_end_of_forward=activations_end,
        sdpa_backends=backends,
        data_dependent_reads=sum(training_tracker.data_dependent_reads.values()),
        cpu_standin_ops=dict(training_tracker.cpu_standin_ops), unmodelled_buffers=unmodelled,
        reserved_peak_bytes=reserved_peak, fits_allocator_capacity=fits_capacity)


def _estimate_inference(work: nn.Module, inputs: ModelInputs, options: EstimateOptions, precision, workspace_bytes: int,
                        model_name: str) -> int:
    """Eval mode, no grad, one forward: params + buffers + inputs + the forward's transient peak."""
    function_mode = device_rules.TargetFunctionMode(options.target_device, precision.autocast_dtype, options.sdpa_backend)
    tracker = AllocationTracker(BLOCK_RULES[options.target_device], devices=("meta",))
    work.eval()
    with function_mode, tracker:
        _register_model(tracker, work, inputs)
        workspaces = _Workspaces(tracker, workspace_bytes, ("main",))
        tracker.on_op = workspaces.on_op
        tracker.phase = "forward"
        tracker.reset_peak()
        inference_step(work, inputs, function_mode.autocast, model_name)
    peak, _ = _without_unused_workspace(tracker, workspaces)
    return peak


def _library_kernel_modules(model: nn.Module) -> set[str]:
    """Which module kinds run vendor-library kernels whose own buffers the estimate does not see."""
    kinds = set()
    for module in model.modules():
        if isinstance(module, nn.LSTM) and not module.proj_size:
            kinds.add("lstm")
        elif isinstance(module, nn.RNNBase):
            kinds.add("rnn")
        elif isinstance(module, nn.modules.conv._ConvNd):
            kinds.add("conv")
    return kinds


# What the library kernels' own buffers cost where they were measured (bench/results_cpu.md, CPU allocator).
RNN_BUFFER_NOTE = ("nn.GRU/RNN (and LSTM with proj_size) on CUDA run cuDNN, whose training reserve is not modelled (PyTorch's own meta "
                   "kernel reports it as 0 bytes), so expect an UNDER-estimate: on the CPU target, where oneDNN's "
                   "workspace is modelled, leaving it out had put a 2-layer LSTM(256->512), batch 32 x 128 steps, at "
                   "2.26x below its measured peak")
CONV_BUFFER_NOTE = ("convolutions on CUDA: cuDNN's workspaces are not modelled: on the CPU target, where oneDNN's "
                    "own buffers are modelled, leaving them out had put a 6-conv CNN (batch 64 x 3 x 64 x 64) 32% "
                    "below its measured inference peak")
HALF_CPU_NOTE = ("CPU kernels computing in bf16/fp16 keep fp32 scratch of their own, not modelled: measured 0.9% "
                 "above the estimate for the SimilarityTransformer with bf16-autocast")


def unmodelled_buffers(library_kernels: set[str], precision, target: str) -> list[str]:
    """The notes for what this model's step allocates that the estimate cannot see."""
    notes = []
    if "rnn" in library_kernels and target == "cuda":
        notes.append(RNN_BUFFER_NOTE)
    if "conv" in library_kernels and target == "cuda":
        notes.append(CONV_BUFFER_NOTE)
    if target == "cpu" and (precision.autocast_dtype is not None or precision.param_dtype is not None):
        notes.append(HALF_CPU_NOTE)
    return notes


def describe_assumptions(options: EstimateOptions, precision, tracker: AllocationTracker, backends: dict[str, int],
                         workspaces: _Workspaces, target: str,
                         function_mode: device_rules.TargetFunctionMode | None = None) -> list[str]:
    """Every modelling choice behind the numbers, in words (FUNCTION_MODE: what the step's target rules saw)."""
    checkpoint_calls = function_mode.checkpoint_calls if function_mode else 0
    cpu_lstm_calls = function_mode.cpu_lstm_calls if function_mode else 0
    cpu_conv_calls = function_mode.cpu_conv_calls if function_mode else 0
    fused_dropout_calls = function_mode.fused_dropout_calls if function_mode else 0
    cudnn_lstm_calls = function_mode.cudnn_lstm_calls if function_mode else 0
    lines = [
        "steady step: the 2nd training step (optimizer state already exists); zero_grad(set_to_none=True), "
        "forward + loss, backward, optimizer step; the output stays alive until the step ends",
        f"optimizer: {OPTIMIZER_RULES[options.optimizer].description}, default settings, "
        f"{'multi-tensor foreach implementation (its temporaries count)' if FOREACH_BY_TARGET[target] else 'per-tensor implementation'}",
        f"precision: {precision.description}",
    ]
    if target == "cuda":
        lines.append("allocator: CUDA caching allocator, each block rounded up to 512 B (requests over 10 MiB to their "
                     "2 MiB segment when the remainder is <= 1 MiB); peak = torch.cuda.max_memory_allocated(), "
                     "not reserved memory and not the CUDA context")
        used = sorted(workspaces.used)
        lines.append(f"cuBLAS workspace: {workspaces.nbytes:,} bytes per thread that runs matmuls "
                     f"({options.gpu_name or 'Hopper (H100/H200) assumed'}); counted for: {', '.join(used) or 'none'}")
    else:
        lines.append("allocator: CPU, bytes as requested (no rounding); peak = sum of live tensor storages")
    if backends:
        lines.append("scaled_dot_product_attention kernel: " + ", ".join(f"{k} x{v}" for k, v in sorted(backends.items()))
                     + (" (flash/efficient save O(L) logsumexp per head, math saves O(L*S) probabilities)"))
    if precision.autocast_dtype is not None:
        lines.append(f"autocast: emulated above autograd; which functions run in the lower precision and which in "
                     f"fp32 on {target} is asked of this torch's own autocast kernels (autocast_policy.py); weight casts "
                     f"cached for the forward region, as torch.autocast does")
    if precision.grad_scaler:
        lines.append("GradScaler: the step is assumed not skipped (no inf/nan at the current scale); a skipped early "
                     "step delays the optimizer state")
    if options.gradient_checkpointing:
        lines.append("gradient checkpointing: the model's own gradient_checkpointing_enable(); recomputation in "
                     "backward is traced")
    if cpu_lstm_calls:
        lines.append(f"{cpu_lstm.describe()} ({cpu_lstm_calls} LSTM call(s) traced over the warm-up and steady steps)")
    if fused_dropout_calls:
        lines.append(f"dropout on CUDA: the fused native_dropout kernel, which saves a bool mask (1 byte per element) "
                     f"for backward, not a noise tensor of the input's dtype ({fused_dropout_calls} call(s) traced)")
    if cudnn_lstm_calls:
        lines.append(f"{cuda_lstm.describe()} ({cudnn_lstm_calls} LSTM call(s) traced)")
    if cpu_conv_calls:
        lines.append(f"{cpu_conv.describe()} ({cpu_conv_calls} convolution call(s) traced)")
    if checkpoint_calls:
        lines.append(f"torch.utils.checkpoint x{checkpoint_calls} in the step (the model's own or the tool's): "
                     f"recomputation in backward runs under the same target-device rules and autocast state as the "
                     f"forward")
    if tracker.loss_kernel_calls:
        lines.append(loss_kernels.describe(tracker.loss_kernel_calls))
    if tracker.real_value_ops:
        lines.append("the model reads its integer/bool inputs' values (lengths, indices, masks): they were built on CPU "
                     "with the same seed and kept real on meta: " + ", ".join(
                         f"{k} x{v}" for k, v in sorted(tracker.real_value_ops.items())))
    if tracker.data_dependent_reads:
        lines.append(f"{sum(tracker.data_dependent_reads.values())} data-dependent read(s) (.item(), bool(tensor), "
                     f"asserts) on meta tensors assumed True / 1 / 1.0")
    if tracker.cpu_standin_ops:
        lines.append("ops without a meta kernel run on CPU stand-ins (floats/bools = 1, ints = 0): "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(tracker.cpu_standin_ops.items())))
    return lines


def saved_activation_bytes(model: nn.Module, inputs: ModelInputs, target_device: str = "cpu",
                           sdpa_backend: str | None = None) -> int:
    """Bytes of the distinct storages autograd saves in one training-mode forward under the target's rules,
    parameters, buffers and inputs excluded (what saved_tensors_hooks sees)."""
    known = {t.untyped_storage()._cdata for t in list(model.parameters()) + list(model.buffers())}
    known |= {t.untyped_storage()._cdata for t in torch.utils._pytree.tree_flatten((inputs.args, inputs.kwargs))[0]
              if isinstance(t, torch.Tensor)}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in known:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    function_mode = device_rules.TargetFunctionMode(target_device, None, sdpa_backend)
    tracker = AllocationTracker(BLOCK_RULES[target_device], devices=("meta",))
    with preserved(model):
        model.train()
        with function_mode, tracker, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = model(*inputs.args, **inputs.kwargs)
        del output
    return sum(saved.values())
