"""What the target device does differently from the meta device the estimate runs on.

- its allocator's rounding (CUDA: c10/cuda/CUDACachingAllocator.cpp),
- the attention kernel scaled_dot_product_attention picks (CUDA flash / memory-efficient save
  O(L) logsumexp per head; the math path saves the O(L x S) probabilities),
- torch.autocast (emulated above autograd, so the casts and their weight cache are recorded; which
  function runs in which precision on the target is asked of torch: autocast_policy.py),
- cuBLAS workspaces (one per thread that runs matmuls: the forward thread and autograd's),
- CUDA-only kernels: training-mode dropout runs the fused native_dropout (a bool mask saved, not a noise
  tensor of the input's dtype), nn.LSTM runs cuDNN with its reserve space (cuda_lstm.py).
Each rule is one entry of one table; `assumptions()` states them in words.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

from . import autocast_policy, cpu_conv, cpu_lstm, cuda_lstm

MiB = 2**20

# --- allocator ------------------------------------------------------------------------------------
CUDA_MIN_BLOCK_BYTES = 512  # kMinBlockSize: every CUDA block is a multiple of 512 bytes
CUDA_SMALL_REQUEST_BYTES = 1 * MiB  # kSmallSize: requests up to 1 MiB use the small pool (2 MiB segments)
CUDA_MIN_LARGE_ALLOC_BYTES = 10 * MiB  # kMinLargeAlloc: larger requests get their own segment...
CUDA_ROUND_LARGE_BYTES = 2 * MiB  # kRoundLarge: ...rounded up to 2 MiB


def cuda_block_bytes(request_bytes: int) -> int:
    """Bytes torch.cuda.memory_allocated() counts for one request: 0 if empty, else rounded up to 512 B.

    A request over 10 MiB gets its own segment rounded to 2 MiB; the allocator keeps the
    remainder as a separate free block only if it is over 1 MiB (should_split), so otherwise
    the whole segment counts as allocated.
    """
    if request_bytes <= 0:
        return 0
    rounded = -(-request_bytes // CUDA_MIN_BLOCK_BYTES) * CUDA_MIN_BLOCK_BYTES
    if rounded > CUDA_MIN_LARGE_ALLOC_BYTES:
        segment = -(-rounded // CUDA_ROUND_LARGE_BYTES) * CUDA_ROUND_LARGE_BYTES
        if segment - rounded <= CUDA_SMALL_REQUEST_BYTES:
            return segment
    return rounded


def cpu_block_bytes(request_bytes: int) -> int:
    """CPU: the bytes requested (the CPU allocator reports no rounded total)."""
    return max(int(request_bytes), 0)


# --- cuBLAS workspace -------------------------------------------------------------------------------
# aten/src/ATen/cuda/CublasHandlePool.cpp: 4096 * 8 KiB on sm90 (H100/H200), else 4096 * 2 KiB + 16 * 8 KiB.
CUBLAS_WORKSPACE_BYTES_SM90 = 4096 * 8 * 1024
CUBLAS_WORKSPACE_BYTES_DEFAULT = 4096 * 1024 * 2 + 16 * 1024 * 8
HOPPER_GPU_PREFIXES = ("h100", "h200")


DEFAULT_RULES_GPU = "h100-80gb"  # whose cuBLAS workspace a CUDA estimate without --gpu assumes


def rules_gpu(gpu_name: str | None) -> str:
    """The card whose rules a CUDA estimate used: the --gpu card, else the default (named, never silent)."""
    return gpu_name or DEFAULT_RULES_GPU


def cublas_workspace_bytes(gpu_name: str | None) -> int:
    """cuBLAS workspace per (thread, stream): 32 MiB on Hopper (the default card), 8.125 MiB otherwise."""
    if rules_gpu(gpu_name).startswith(HOPPER_GPU_PREFIXES):
        return CUBLAS_WORKSPACE_BYTES_SM90
    return CUBLAS_WORKSPACE_BYTES_DEFAULT


CUBLAS_OPS = frozenset({"mm", "addmm", "bmm", "baddbmm", "addbmm", "addmv", "mv", "addr", "_addmm_activation",
                        "dot", "vdot"})

# --- autocast: which function runs in which precision is asked of torch (autocast_policy.py) ----
# Python-level functions whose body must be seen op by op (their inner linear/bmm/softmax get autocast).
_REENTER_FUNCTIONS = frozenset({"multi_head_attention_forward"})


def _cast_floating(value: Any, dtype: torch.dtype, cache: dict[int, torch.Tensor] | None) -> Any:
    """Cast floating tensors (not float64) to DTYPE; leaves that require grad go through autocast's weight cache."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or value.dtype in (dtype, torch.float64):
            return value
        if cache is not None and value.is_leaf and value.requires_grad:
            cached = cache.get(id(value))
            if cached is None:
                cached = cache[id(value)] = value.to(dtype)
            return cached
        return value.to(dtype)
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_cast_floating(v, dtype, cache) for v in value)
    return value


# --- scaled_dot_product_attention ------------------------------------------------------------------
def _sdpa_arguments(args, kwargs):
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    defaults = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


def cuda_sdpa_backend(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None, dropout_p: float = 0.0,
                      is_causal: bool = False, enable_gqa: bool = False) -> str:
    """The kernel CUDA (sm80+) picks: flash for fp16/bf16 without a mask, memory-efficient otherwise, math if neither
    fits. Both fused kernels take fewer key/value heads as they are (sdp_utils.cpp: GQA supported on CUDA)."""
    head_dim = query.shape[-1]
    if query.dim() != 4 or key.shape[-1] != head_dim:
        return "math"
    if key.shape[-3] != query.shape[-3] and not (enable_gqa and query.shape[-3] % key.shape[-3] == 0):
        return "math"
    if query.dtype in (torch.float16, torch.bfloat16) and attn_mask is None and head_dim <= 256 and head_dim % 8 == 0:
        return "flash"
    if head_dim % 4 == 0 and query.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return "efficient"
    return "math"


def cpu_sdpa_backend(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None, dropout_p: float = 0.0,
                     is_causal: bool = False, enable_gqa: bool = False) -> str:
    """The kernel CPU picks, asked of torch itself on small stand-ins of the same rank, dtype, head counts and
    head size."""
    if query.dim() != 4:
        return "math"
    q = torch.zeros(1, query.shape[-3], 1, query.shape[-1], dtype=query.dtype, requires_grad=query.requires_grad)
    k = torch.zeros(1, key.shape[-3], 1, key.shape[-1], dtype=key.dtype)
    mask = None if attn_mask is None else torch.zeros([1] * attn_mask.dim(), dtype=attn_mask.dtype)
    try:
        choice = torch._fused_sdp_choice(q, k, k, mask, dropout_p, is_causal, enable_gqa=enable_gqa)
    except TypeError:  # torch < 2.5: no grouped-query attention in SDPA
        choice = torch._fused_sdp_choice(q, k, k, mask, dropout_p, is_causal)
    return "flash_cpu" if choice == 1 else "math"


def _float_mask(attn_mask: torch.Tensor | None, dtype: torch.dtype, pad_to: int = 1) -> torch.Tensor | None:
    """A bool mask as the additive float mask the fused kernels take (0 keep, -inf drop), last dim padded to PAD_TO."""
    if attn_mask is None:
        return None
    mask = attn_mask
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask.logical_not(), float("-inf"))
    elif mask.dtype != dtype:
        mask = mask.to(dtype)
    last = mask.shape[-1]
    if pad_to > 1 and last % pad_to:
        padded = torch.zeros(*mask.shape[:-1], last + pad_to - last % pad_to, dtype=dtype, device=mask.device)
        mask = padded[..., :last].copy_(mask)
    return mask


def _expand_gqa(query, key, value, enable_gqa):
    if enable_gqa and key.dim() == 4 and key.shape[1] != query.shape[1]:
        repeats = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeats, dim=1), value.repeat_interleave(repeats, dim=1)
    return key, value


def run_sdpa(backend: str, original: Callable, args, kwargs) -> torch.Tensor:
    """Call the kernel BACKEND on meta tensors, so autograd saves what that kernel saves."""
    a = _sdpa_arguments(args, kwargs)
    query, key, value, mask = a["query"], a["key"], a["value"], a["attn_mask"]
    needs_grad = any(t.requires_grad for t in (query, key, value))
    if backend == "math":
        return original(*args, **kwargs)
    # Flash reads fewer key/value heads as they are (attention.cpp passes them on unexpanded). The memory-
    # efficient kernel does too on CUDA, but its meta backward cannot (a gradient of the query's head count):
    # there the heads are expanded, which over-states the key/value bytes saved for backward.
    if backend == "efficient":
        key, value = _expand_gqa(query, key, value, a["enable_gqa"])
    if backend == "flash":
        return torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, a["dropout_p"], a["is_causal"], False, scale=a["scale"])[0]
    if backend == "efficient":
        bias = _float_mask(mask, query.dtype, pad_to=16)
        if bias is not None:
            bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, bias, needs_grad, a["dropout_p"], a["is_causal"], scale=a["scale"])[0]
    if backend == "flash_cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, a["dropout_p"], a["is_causal"], attn_mask=_float_mask(mask, query.dtype),
            scale=a["scale"])[0]
    raise ValueError(f"unknown attention backend {backend}")


SDPA_BACKEND_CHOOSERS: dict[str, Callable[..., str]] = {"cuda": cuda_sdpa_backend, "cpu": cpu_sdpa_backend}


# --- dropout -----------------------------------------------------------------------------------------
def fused_dropout_arguments(func: Callable, args, kwargs) -> tuple[torch.Tensor, float] | None:
    """(input, p) when torch.dropout / F.dropout would run the fused native_dropout on CUDA, else None.

    aten/src/ATen/native/Dropout.cpp: dropout(input, p, train) takes native_dropout when train and
    is_fused_kernel_acceptable (a CUDA input, 0 < p < 1, numel > 0); in-place dropout_ and the feature
    variants keep the composite path (bernoulli_ into a noise tensor of the input's dtype, saved by the
    multiply). native_dropout returns (output, mask) with a bool mask, and its backward saves only the mask
    (tools/autograd/derivatives.yaml: native_dropout_backward(grad, result1, scale))."""
    names = ("input", "p", "training", "inplace") if isinstance(func, types.FunctionType) else ("input", "p", "train")
    bound = {"p": 0.5, "training": True, "inplace": False}
    bound.update(zip(names, args))
    bound.update(kwargs)
    train = bound.get("training", bound.get("train"))
    input_, p = bound.get("input"), bound["p"]
    if not isinstance(input_, torch.Tensor) or not input_.is_floating_point() or bound["inplace"] or not train:
        return None
    if not 0 < float(p) < 1 or input_.numel() == 0:
        return None
    return input_, float(p)


# --- linear -------------------------------------------------------------------------------------------
def _linear_arguments(args, kwargs):
    bound = {"bias": None}
    bound.update(zip(("input", "weight", "bias"), args))
    bound.update(kwargs)
    return bound.get("input"), bound.get("weight"), bound["bias"]


def _adds_bias_in_place(args, kwargs) -> bool:
    """at::linear (aten/src/ATen/native/Linear.cpp) on an input that is neither 2-D nor contiguous computes
    matmul(input, weight.t()) and then output.add_(bias) in place; under any dispatch mode (this estimate's
    tracker) isTensorSubclassLike() is true and it takes out-of-place at::add instead, a second output-sized
    tensor a real device never allocates. Replayed here as the device runs it."""
    input_, weight, bias = _linear_arguments(args, kwargs)
    if not all(isinstance(t, torch.Tensor) for t in (input_, weight, bias)):
        return False
    return input_.dim() != 2 and not input_.is_contiguous() and bias.dim() == 1 and input_.dtype == bias.dtype


@dataclass
class TargetFunctionMode(TorchFunctionMode):
    """Above autograd: autocast emulation and the target's attention kernel, for meta tensors."""

    target_device: str
    autocast_dtype: torch.dtype | None = None
    sdpa_override: str | None = None  # force one attention backend (tests, what-ifs)
    weight_cache: dict[int, torch.Tensor] = field(default_factory=dict)
    autocast_enabled: bool = False
    sdpa_backends_used: dict[str, int] = field(default_factory=dict)
    checkpoint_calls: int = 0  # torch.utils.checkpoint calls seen while recompute_in_backward() is active
    memory_kernels: bool = True  # replay library kernels (oneDNN LSTM/conv on CPU, cuDNN LSTM on CUDA); off for FLOPs
    cpu_lstm_calls: int = 0  # nn.LSTM calls replayed as the CPU's oneDNN kernels
    cpu_conv_calls: int = 0  # convolutions with the CPU kernel's own transient bytes
    fused_dropout_calls: int = 0  # dropout calls run as CUDA's native_dropout (bool mask)
    cudnn_lstm_calls: int = 0  # nn.LSTM calls replayed as cuDNN's RNN kernels
    kernel_sink: Callable | None = None  # told the kernels a replayed library call runs (flops/kernel_time.py)

    def __post_init__(self):
        super().__init__()
        self.replays_cpu_kernels = self.memory_kernels and self.target_device == "cpu"
        self.replays_cuda_kernels = self.target_device == "cuda"
        self._clones: dict[Any, Callable] = {}
        self.autocast_rules: dict[str, str] = {}
        if self.autocast_dtype is not None:
            self.autocast_rules = autocast_policy.autocast_policy(self.target_device, self.autocast_dtype)

    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self.autocast_enabled and self.autocast_dtype is not None:
            rule = self.autocast_rules.get(name)
            if rule == autocast_policy.LOWER:
                args = tuple(_cast_floating(a, self.autocast_dtype, self.weight_cache) for a in args)
                kwargs = {k: _cast_floating(v, self.autocast_dtype, self.weight_cache) for k, v in kwargs.items()}
            elif rule == autocast_policy.FP32:
                args = tuple(_cast_floating(a, torch.float32, None) for a in args)
                kwargs = {k: _cast_floating(v, torch.float32, None) for k, v in kwargs.items()}
        if name == "scaled_dot_product_attention":
            a = _sdpa_arguments(args, kwargs)
            backend = self.sdpa_override or SDPA_BACKEND_CHOOSERS[self.target_device](
                a["query"], a["key"], a["attn_mask"], a["dropout_p"], a["is_causal"], a["enable_gqa"])
            self.sdpa_backends_used[backend] = self.sdpa_backends_used.get(backend, 0) + 1
            return run_sdpa(backend, func, args, kwargs)
        if name == "lstm" and self.replays_cpu_kernels and cpu_lstm.applies(args, kwargs):
            self.cpu_lstm_calls += 1
            return cpu_lstm.run(args)
        if self.replays_cuda_kernels and name == "dropout":
            fused = fused_dropout_arguments(func, args, kwargs)
            if fused is not None:
                self.fused_dropout_calls += 1
                return torch.native_dropout(fused[0], fused[1], True)[0]
        if name == "lstm" and self.replays_cuda_kernels and self.memory_kernels and cuda_lstm.applies(args, kwargs):
            self.cudnn_lstm_calls += 1
            return cuda_lstm.run(args, self.kernel_sink)
        if self.replays_cpu_kernels and cpu_conv.applies(name, args, kwargs):
            self.cpu_conv_calls += 1
            return cpu_conv.run(name, func, args, kwargs)
        if name == "linear" and _adds_bias_in_place(args, kwargs):
            input_, weight, bias = _linear_arguments(args, kwargs)
            return torch.matmul(input_, weight.t()).add_(bias)
        if name in _REENTER_FUNCTIONS and isinstance(func, types.FunctionType):
            with self:  # see the body's own ops (its linear, bmm, softmax)
                return self._unguarded(func)(*args, **kwargs)
        return func(*args, **kwargs)

    def _unguarded(self, func: types.FunctionType) -> Callable:
        """FUNC with its own has_torch_function check off (so it does not hand itself back to this mode)."""
        clone = self._clones.get(func)
        if clone is None:
            namespace = dict(func.__globals__)
            namespace["has_torch_function"] = lambda *_: False
            namespace["has_torch_function_unary"] = lambda *_: False
            namespace["has_torch_function_variadic"] = lambda *_: False
            namespace["handle_torch_function"] = None
            clone = types.FunctionType(func.__code__, namespace, func.__name__, func.__defaults__, func.__closure__)
            clone.__kwdefaults__ = func.__kwdefaults__
            self._clones[func] = clone
        return clone

    def autocast(self):
        return _AutocastRegion(self)

    def recompute_in_backward(self):
        """While active, every torch.utils.checkpoint call (the tool's, the model's own, the user's; reentrant
        or not) recomputes under this mode, with autocast as it was in the forward: see `_CheckpointPatch`."""
        return _CheckpointPatch(self)


def _in_backward() -> bool:
    """True while autograd's engine runs a backward node (where checkpoint recomputes)."""
    return torch._C._current_autograd_node() is not None


class _Recompute:
    """Re-enters MODE with the forward's autocast state and a fresh weight cache. Backward is called from
    inside the mode's own handler (loss.backward() is a torch function), where the mode is switched off,
    so the recomputation in backward would otherwise run without it."""

    def __init__(self, mode: TargetFunctionMode, autocast_enabled: bool):
        self.mode, self.autocast_enabled = mode, autocast_enabled

    def __enter__(self):
        self.saved = (self.mode.autocast_enabled, self.mode.weight_cache)
        self.mode.autocast_enabled, self.mode.weight_cache = self.autocast_enabled, {}
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        self.mode.autocast_enabled, self.mode.weight_cache = self.saved
        return False


class _Nested:
    """Enter FIRST, then SECOND; exit in reverse (a lazy ExitStack of two)."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __enter__(self):
        self.first.__enter__()
        try:
            self.second.__enter__()
        except BaseException:
            self.first.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            suppressed = self.second.__exit__(*exc)
        finally:
            self.first.__exit__(*exc)
        return suppressed


class _CheckpointPatch:
    """torch.utils.checkpoint recomputes inside backward, and backward runs inside this mode's own handler
    (loss.backward() is a torch function), where the mode is off; so the target's attention kernel and the
    autocast emulation would be missing from the recomputation (a different number or shape of saved
    tensors: CheckpointError). While this is active, checkpoint's two paths are
    wrapped in the module's globals (restored on exit, also on error):
    - non-reentrant: every context_fn (the default no-op or the caller's) gets `_Recompute` added to its
      recomputation context;
    - reentrant: CheckpointFunction's run_function, when called again in backward, runs under `_Recompute`.
    """

    def __init__(self, mode: TargetFunctionMode):
        self.mode = mode

    # torch >= 2.14 routes every non-reentrant call through the _impl (args and kwargs as a tuple and a dict,
    # options by keyword); older torch through the generator itself (options by position).
    GENERATOR_NAMES = ("_checkpoint_without_reentrant_generator_impl", "_checkpoint_without_reentrant_generator")

    def __enter__(self):
        import torch.utils.checkpoint as checkpoint_module
        self.module = checkpoint_module
        self.generator_name = next(name for name in self.GENERATOR_NAMES if hasattr(checkpoint_module, name))
        self.saved = (getattr(checkpoint_module, self.generator_name), checkpoint_module.CheckpointFunction)
        original_generator, original_function = self.saved
        mode = self.mode

        def with_recompute(context_fn, debug):
            mode.checkpoint_calls += 1
            debug_on = checkpoint_module._checkpoint_debug_enabled
            if debug if debug_on is None else debug_on:  # debug mode insists on the default context_fn
                return context_fn

            def composed():  # called in the forward: the autocast state is the forward's
                forward_context, recompute_context = context_fn()
                return forward_context, _Nested(_Recompute(mode, mode.autocast_enabled), recompute_context)
            return composed

        if self.generator_name.endswith("_impl"):
            def generator(fn, args, kwargs, *, context_fn=checkpoint_module.noop_context_fn, debug=False, **options):
                return original_generator(fn, args, kwargs, context_fn=with_recompute(context_fn, debug), debug=debug,
                                          **options)
        else:
            def generator(fn, preserve_rng_state=True, context_fn=checkpoint_module.noop_context_fn,
                          determinism_check=checkpoint_module._DEFAULT_DETERMINISM_MODE, debug=False, early_stop=True,
                          *args, **kwargs):
                return original_generator(fn, preserve_rng_state, with_recompute(context_fn, debug), determinism_check,
                                          debug, early_stop, *args, **kwargs)

        class CheckpointFunction(original_function):
            @staticmethod
            def forward(ctx, run_function, preserve_rng_state, *args):
                autocast_enabled = mode.autocast_enabled
                mode.checkpoint_calls += 1

                def run_under_mode(*inner):
                    if not _in_backward():  # the forward itself, under the mode already
                        return run_function(*inner)
                    with _Recompute(mode, autocast_enabled):
                        return run_function(*inner)
                return original_function.forward(ctx, run_under_mode, preserve_rng_state, *args)

        setattr(checkpoint_module, self.generator_name, generator)
        checkpoint_module.CheckpointFunction = CheckpointFunction
        return self

    def __exit__(self, *exc):
        setattr(self.module, self.generator_name, self.saved[0])
        self.module.CheckpointFunction = self.saved[1]
        return False


class _AutocastRegion:
    """Like `with torch.autocast(...)`: casts on, and the weight-cast cache emptied on exit."""

    def __init__(self, mode: TargetFunctionMode):
        self.mode = mode

    def __enter__(self):
        self.mode.autocast_enabled = self.mode.autocast_dtype is not None
        return self

    def __exit__(self, *exc):
        self.mode.autocast_enabled = False
        self.mode.weight_cache.clear()
        return False
