"""Every lint rule (severity, why, fix) in one table, and the tables of calls and attributes the
source rules react to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


SEVERITIES = ("RISK", "CAUTION", "INFO")  # most to least severe


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str  # one of SEVERITIES
    title: str
    why: str
    fix: str


RULES: dict[str, Rule] = {rule.id: rule for rule in (
    # ---- static: read from the source ----
    Rule("tensor-to-python", "RISK", ".item() / .tolist() / float(t) / int(t) in forward",
         "turns a tensor into Python numbers: anything computed from them carries no gradient, and on a GPU "
         "it waits for the device (a sync every step)",
         "keep the value as a tensor (x.sum(), not x.sum().item()); use .item() only for logging, outside forward"),
    Rule("tensor-to-numpy", "RISK", ".numpy() in forward",
         "NumPy arrays are outside autograd: the result and everything derived from it has no gradient "
         "(and .cpu().numpy() copies off the GPU and syncs)",
         "do the computation with torch operations on the tensor itself"),
    Rule("detach", "CAUTION", ".detach() in forward",
         "no gradient flows back through the detached branch: the parameters before it get no gradient "
         "from this path",
         "remove .detach() unless the stop-gradient is intended (a target network, a straight-through trick); "
         "if intended, add a comment saying so"),
    Rule("data-access", "RISK", ".data access in forward",
         ".data reads or writes the tensor behind autograd's back: no gradient through it, and in-place "
         "changes are invisible to the version counter, so backward can silently use wrong values",
         "use the tensor itself; for a deliberate no-gradient update use `with torch.no_grad():` outside forward"),
    Rule("grad-disabled", "CAUTION", "gradient disabled inside forward",
         "torch.no_grad() / torch.inference_mode() / torch.set_grad_enabled(False) in forward: everything "
         "computed inside has no gradient, so the parameters used there never train",
         "move the block out of forward, or remove it; if it computes a fixed target on purpose, say so in a comment"),
    Rule("parameter-in-place", "RISK", "parameter mutated in place in forward",
         "changing a parameter inside forward (add_, copy_, +=, item assignment, .data writes) rewrites the "
         "weights on every call, outside the optimizer; autograd either raises 'a leaf Variable that requires "
         "grad is being used in an in-place operation' or, through .data/no_grad, computes gradients for "
         "values that no longer exist",
         "compute a new tensor (w = self.weight * scale) instead; update weights only in the optimizer step"),
    Rule("tensor-attribute-in-place", "CAUTION", "tensor attribute mutated in place in forward",
         "an in-place update of a plain tensor attribute (not a buffer) inside forward is state that survives "
         "between calls, is not saved in the state dict and bumps autograd's version counter",
         "register it as a buffer (register_buffer) and update it under torch.no_grad(), or compute a new tensor"),
    Rule("tensor-rewrap", "RISK", "torch.tensor(...) of a tensor",
         "torch.tensor / torch.Tensor(...) copy the values into a new leaf tensor: the graph to the inputs is cut",
         "use the tensor directly, or torch.stack / torch.cat / .to(dtype) which keep the graph"),
    Rule("tensor-branch", "CAUTION", "Python branch on a tensor value",
         "`if`/`while`/ternary on a tensor's value reads it back to Python (a device sync every call), "
         "picks a path per batch rather than per sample, breaks torch.compile/jit tracing, and the condition "
         "itself gets no gradient",
         "use torch.where / masking to compute both paths, or branch on shapes and flags, not values"),
    Rule("zero-gradient-op", "INFO", "zero-gradient operation on the output path",
         "argmax/argmin/round/sign/floor/ceil/trunc have a zero (or no) gradient: what reaches the output "
         "through them does not train the layers before them",
         "use a differentiable relaxation (softmax, Gumbel-softmax, straight-through estimator) if those "
         "layers should learn from this path"),
    # ---- dynamic: measured by running the model once ----
    Rule("device-mismatch", "RISK", "parameters and inputs on different devices",
         "tensors on different devices cannot be combined: forward raises, or silent copies happen every step",
         "move the model and the inputs to one device (model.to(device); inputs.to(device))"),
    Rule("mixed-parameter-dtypes", "CAUTION", "parameters of several floating dtypes",
         "mixing float dtypes among parameters makes operations upcast or fail with dtype errors, and "
         "optimizer states follow each parameter's dtype",
         "cast the model once (model.to(dtype)) or use torch.autocast for mixed precision"),
    Rule("input-dtype-mismatch", "CAUTION", "floating inputs in a dtype other than the parameters'",
         "a float input whose dtype differs from the weights either fails (Linear: 'expected both to be the same "
         "dtype') or is upcast, costing memory and time",
         "cast the inputs to the parameters' dtype, or run under torch.autocast"),
    Rule("custom-function-gradcheck", "RISK", "custom autograd.Function fails gradcheck",
         "its backward does not match finite differences of its forward (float64): gradients through it are wrong",
         "fix backward so it returns d(output)/d(input) for each input, or use torch operations and let "
         "autograd derive the backward"),
)}


# Which calls and attributes the static rules react to (one table each).

# `<expr>.<method>(...)` -> rule.
METHOD_RULES = {
    "item": "tensor-to-python", "tolist": "tensor-to-python",
    "numpy": "tensor-to-numpy",
    "detach": "detach", "detach_": "detach",
}
# Python builtins that turn a tensor into a Python number, like .item(): float(t), int(t), bool(t).
PYTHON_NUMBER_BUILTINS = ("float", "int", "bool", "complex")
# Zero-gradient operations, as tensor methods and as torch functions; reported only when they reach a return.
ZERO_GRADIENT_NAMES = ("argmax", "argmin", "round", "sign", "sgn", "floor", "ceil", "trunc")
# torch callables (by dotted name; aliases resolved through the function's globals) -> rule.
TORCH_CALL_RULES = {
    "torch.no_grad": "grad-disabled",
    "torch.inference_mode": "grad-disabled",
    "torch.set_grad_enabled": "grad-disabled",  # only with a literal False argument
    "torch.tensor": "tensor-rewrap",
    "torch.Tensor": "tensor-rewrap",
    "torch.FloatTensor": "tensor-rewrap",
    "torch.DoubleTensor": "tensor-rewrap",
    "torch.HalfTensor": "tensor-rewrap",
    "torch.LongTensor": "tensor-rewrap",
    **{f"torch.{name}": "zero-gradient-op" for name in ZERO_GRADIENT_NAMES},
}
# In-place methods that are not a change of values.
NOT_VALUE_MUTATIONS = {"requires_grad_", "retain_grad", "share_memory_", "pin_memory", "record_stream"}
# Tensor attributes and methods that read metadata, not values: a branch on them is a branch on shapes.
METADATA_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "requires_grad", "is_leaf", "grad_fn", "layout",
                       "is_cuda", "is_sparse", "is_quantized", "is_meta", "names", "training"}
METADATA_METHODS = {"size", "dim", "ndimension", "numel", "nelement", "element_size", "is_floating_point",
                    "is_complex", "is_contiguous", "data_ptr", "get_device", "stride", "storage_offset", "type",
                    "is_signed", "has_names"}
# Attributes of a tensor that are tensors (any other attribute of an expression is not followed:
# `config.flag`, `output.logits` are not assumed to be tensors).
TENSOR_VALUE_ATTRIBUTES = {"T", "mT", "H", "mH", "real", "imag", "grad", "data"}
# Methods that read values whatever the receiver (tensors, NumPy arrays): a branch on them is value-dependent.
VALUE_REDUCTIONS = {"sum", "any", "all", "mean", "max", "min", "amax", "amin", "norm", "prod", "std", "var",
                    "count_nonzero", "allclose", "equal", "item", "isnan", "isinf", "isfinite", "nonzero"}
# Builtins that turn a tensor argument into a Python value (a value-dependent result).
VALUE_BUILTINS = {"float", "int", "bool", "abs", "round", "min", "max", "sum", "any", "all"}
# torch functions that answer metadata questions (besides every torch.is_*).
METADATA_TORCH_FUNCTIONS = {"numel", "get_default_dtype", "finfo", "iinfo", "result_type", "promote_types",
                            "can_cast", "get_autocast_gpu_dtype", "get_autocast_dtype"}
NON_TENSOR_ANNOTATIONS = {"bool", "int", "float", "str", "Optional", "None", "Literal", "dict", "list", "tuple"}

_MISSING = object()


def _torch_objects() -> dict[int, str]:
    """id(object) -> dotted name, for resolving aliases like `from torch import no_grad`."""
    objects = {}
    for dotted in TORCH_CALL_RULES:
        value: Any = torch
        for part in dotted.split(".")[1:]:
            value = getattr(value, part, _MISSING)
        if value is not _MISSING:
            objects[id(value)] = dotted
    return objects


_TORCH_OBJECTS = _torch_objects()
