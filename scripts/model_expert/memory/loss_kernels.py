"""Loss kernels as the device runs them: what they allocate that their meta kernels do not.

A loss is one aten op whose meta kernel returns only the reduced scalar, but the real kernels (the same
device-generic code in aten/src/ATen/native/Loss.cpp on CPU and CUDA; Loss.cu's binary_cross_entropy
follows the same pattern) write the unreduced per-element loss first. Measured against the CPU allocator
(torch.profiler, profile_memory=True), for a reduced loss over N elements at the output's dtype:

- mse_loss, smooth_l1_loss: the structured op's output is allocated input-sized (N) and then reduced
  into, so the returned scalar keeps an N-element storage for as long as the loss tensor lives (through
  backward); the per-element loss is a second N-element temporary, freed before the op returns;
- huber_loss: one N-element temporary (empty_like, reduced, freed); the output is a scalar;
- binary_cross_entropy: `loss = empty_like(input)`, reduced, then `loss.resize_as_(reduced)`: the scalar
  keeps its N-element storage (resize never shrinks a storage).

With reduction="none" the meta output is already N elements and nothing is missing. The other losses are
composites the estimate sees op by op, with meta kernels that allocate what the real ones do: l1_loss
(sub, abs, mean), cross_entropy (log_softmax + nll_loss, label smoothing and probability targets as
their own ops), nll_loss, binary_cross_entropy_with_logits (its decomposition: log_sigmoid's buffer,
(1 - target) * input), and Hugging Face's shifted LM loss (the fp32 upcast of the logits, the padded
labels, cross_entropy); each is checked against the CPU allocator in tests/test_memory_measured.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

aten = torch.ops.aten

REDUCTION_NONE = 0  # at::Reduction::None


@dataclass(frozen=True)
class LossKernel:
    output_storage_elements: int  # per element of the unreduced loss: the storage the returned scalar keeps
    transient_elements: int       # per element of the unreduced loss: allocated and freed inside the op
    source: str


LOSS_KERNELS: dict[object, LossKernel] = {
    aten.mse_loss: LossKernel(1, 1, "Loss.cpp TORCH_IMPL_FUNC(mse_loss_out): input-sized output reduced into, "
                                    "plus the per-element loss"),
    aten.smooth_l1_loss: LossKernel(1, 1, "Loss.cpp TORCH_IMPL_FUNC(smooth_l1_loss_out): as mse_loss"),
    aten.huber_loss: LossKernel(0, 1, "Loss.cpp huber_loss: empty_like(input), then apply_loss_reduction"),
    aten.binary_cross_entropy: LossKernel(1, 0, "Loss.cpp / Loss.cu binary_cross_entropy: empty_like(input), "
                                                "reduced, then resize_as_ (the storage stays)"),
}


def _reduction(func, args, kwargs) -> int:
    """The op's reduction argument (its schema's default, Mean, when not given)."""
    schema = func._schema
    for index, argument in enumerate(schema.arguments):
        if argument.name == "reduction":
            if "reduction" in kwargs:
                return int(kwargs["reduction"])
            if index < len(args):
                return int(args[index])
            return int(argument.default_value) if argument.default_value is not None else 1
    return REDUCTION_NONE


def rule_for(func, args, kwargs) -> LossKernel | None:
    """The loss kernel's rule when FUNC is a reduced loss on meta tensors, else None."""
    kernel = LOSS_KERNELS.get(getattr(func, "overloadpacket", None))
    if kernel is None or not args or not isinstance(args[0], torch.Tensor) or args[0].device.type != "meta":
        return None
    return kernel if _reduction(func, args, kwargs) != REDUCTION_NONE else None


def unreduced_elements(args) -> int:
    """Elements of the per-element loss: input and target broadcast together."""
    shapes = [tuple(a.shape) for a in args[:2] if isinstance(a, torch.Tensor)]
    return int(torch.Size(torch.broadcast_shapes(*shapes)).numel())


def run(func, args, kwargs, kernel: LossKernel, register) -> torch.Tensor:
    """Call the meta kernel; return its scalar on a storage as large as the real kernel's, and pass REGISTER
    the per-element temporary while both are alive (so the peak sees them together)."""
    out = func(*args, **kwargs)
    elements = unreduced_elements(args)
    if kernel.output_storage_elements:
        held = torch.empty(elements * kernel.output_storage_elements, dtype=out.dtype, device=out.device)
        out = held.resize_(out.shape)  # resize_ keeps the storage, as the real kernel's resize_as_ does
    register(out)
    if kernel.transient_elements:
        scratch = torch.empty(elements * kernel.transient_elements, dtype=out.dtype, device=out.device)
        register(scratch)
        del scratch
    return out


def describe(calls: dict[str, int]) -> str:
    used = ", ".join(f"{name} x{count}" for name, count in sorted(calls.items()))
    return (f"loss kernels ({used}): the per-element loss the real kernel writes before reducing is counted, "
            "and mse_loss / smooth_l1_loss / binary_cross_entropy keep an input-sized storage under the returned "
            "scalar while the loss lives (memory/loss_kernels.py; the same ATen code on CPU and CUDA)")
