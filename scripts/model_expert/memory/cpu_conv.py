"""Convolutions as the CPU runs them: what oneDNN allocates inside, asked of the real kernel.

On the CPU, a convolution's kernel reorders the weight and writes a second output-sized buffer before
its result (measured for a 3x3 conv: one extra output plus the reordered weight, linear in the
batch). Its backward does the same for the gradients. Neither shows at the dispatcher, so the meta
estimate missed 32-41 % of a CNN's inference peak. Here each conv1d/2d/3d call on the CPU target is
asked of the real kernel once per shape (cpu_kernels.py): the forward's transient bytes are held
during the call, the backward's while that backward runs.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .cpu_kernels import HoldUntilBackward, KernelBytes, ScratchInBackward, linear_in_batch, outside_every_mode, watched

FUNCTIONS = {"conv1d": F.conv1d, "conv2d": F.conv2d, "conv3d": F.conv3d}
EXACT_BATCH_LIMIT = 8  # asked at the batch itself up to here; linear beyond (measured linear: output-sized buffers)
_PARAMETERS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_OPTION_DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}  # F.conv1d/2d/3d's own


def _bound(args: tuple, kwargs: dict) -> dict:
    values = dict(zip(_PARAMETERS, args))
    values.update(kwargs)
    return values


def applies(name: str, args: tuple, kwargs: dict) -> bool:
    if name not in FUNCTIONS:
        return False
    values = _bound(args, kwargs)
    input_, weight = values.get("input"), values.get("weight")
    return (isinstance(input_, torch.Tensor) and isinstance(weight, torch.Tensor) and input_.device.type == "meta"
            and input_.dim() == weight.dim() and input_.is_floating_point())  # batched input (dim 0 is the batch)


@functools.lru_cache(maxsize=None)
def _kernel_bytes_at(name: str, input_shape: tuple, weight_shape: tuple, has_bias: bool, options: tuple,
                     dtype: torch.dtype, input_grad: bool, weight_grad: bool, grad_enabled: bool) -> KernelBytes:
    """One real call (and its backward, with grad) on zeros, watched by the CPU allocator."""
    function = FUNCTIONS[name]
    with outside_every_mode(), torch.set_grad_enabled(grad_enabled):
        x = torch.zeros(input_shape, dtype=dtype, requires_grad=input_grad and grad_enabled)
        w = torch.zeros(weight_shape, dtype=dtype, requires_grad=weight_grad and grad_enabled)
        b = torch.zeros(weight_shape[0], dtype=dtype, requires_grad=weight_grad and grad_enabled) if has_bias else None
        output, peak, _ = watched(lambda: function(x, w, b, *options))
        transient = max(peak - output.numel() * output.element_size(), 0)
        backward_transient = 0
        wanting = [t for t in (x, w, b) if t is not None and t.requires_grad]
        if wanting:
            seed = torch.ones_like(output)
            _, backward_peak, backward_kept = watched(lambda: torch.autograd.grad(output, wanting, seed))
            backward_transient = max(backward_peak - backward_kept, 0)
    return KernelBytes(workspace=0, transient=transient, backward_transient=backward_transient)


def run(name: str, function, args: tuple, kwargs: dict) -> torch.Tensor:
    """The meta call, with the real kernel's transient bytes around it and around its backward."""
    values = _bound(args, kwargs)
    input_, weight, bias = values["input"], values["weight"], values.get("bias")
    options = tuple(values.get(key, default) for key, default in _OPTION_DEFAULTS.items())
    options = tuple(tuple(o) if isinstance(o, list) else o for o in options)

    def at(batch: int) -> KernelBytes:
        return _kernel_bytes_at(name, (batch, *input_.shape[1:]), tuple(weight.shape), bias is not None, options,
                                input_.dtype, input_.requires_grad, weight.requires_grad, torch.is_grad_enabled())
    sizes = linear_in_batch(at, input_.shape[0], EXACT_BATCH_LIMIT)
    backward_scratch: list[torch.Tensor] = []
    in_graph = torch.is_grad_enabled() and sizes.backward_transient and (input_.requires_grad or weight.requires_grad)
    if in_graph:
        if input_.requires_grad:
            values["input"] = HoldUntilBackward.apply(input_, None, backward_scratch)
        else:
            values["weight"] = HoldUntilBackward.apply(weight, None, backward_scratch)
    scratch = torch.empty(sizes.transient, dtype=torch.uint8, device=input_.device)
    output = function(**values)
    del scratch
    if in_graph:
        output = ScratchInBackward.apply(output, sizes.backward_transient, backward_scratch)
    return output


def describe() -> str:
    return ("convolutions on the CPU target: the transient bytes the real kernel allocates (weight reorders, a "
            "second output-sized buffer) in forward and backward, asked of it on zeros of the same sizes "
            f"(at the batch itself up to {EXACT_BATCH_LIMIT}, linear beyond)")
