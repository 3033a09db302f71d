"""gradcheck of the recorded custom autograd.Functions: float64, small shapes, the numerical Jacobian
against backward."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..inputs import DTYPE_NAMES
from .recorder import MAX_RECORDED_INTEGER_ELEMENTS, RecordedCall


GRADCHECK_MAX_ELEMENTS = 512  # float input elements; the numerical Jacobian costs 2 forwards per element
GRADCHECK_TINY_DIM = 3


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def tiny_shapes(shapes: list[tuple[int, ...]], cap: int = GRADCHECK_TINY_DIM) -> list[tuple[int, ...]]:
    """Every size above `cap` becomes `cap`: equal sizes stay equal, so shapes that matched still match."""
    return [tuple(min(size, cap) for size in shape) for shape in shapes]


def _gradcheck_inputs(record: RecordedCall, shrink: bool, generator: torch.Generator, only_traced: bool):
    """Float64 random arguments for one recorded call: (args, kwargs). Floating tensors require grad:
    all of them, or with `only_traced` those that required grad in the traced call."""
    arguments = list(record.arguments) + list(record.kwargs.values())
    float_shapes = [a.shape for a in arguments if a.kind == "float"]
    shapes = iter(tiny_shapes(float_shapes) if shrink else float_shapes)
    built = []
    for argument in arguments:
        if argument.kind == "float":
            tensor = torch.randn(next(shapes), dtype=torch.float64, generator=generator)
            tensor.requires_grad_(argument.requires_grad or not only_traced)
            built.append(tensor)
        elif argument.kind == "other-tensor":
            if argument.value is None:
                raise ValueError(f"a {DTYPE_NAMES.get(argument.dtype, argument.dtype)} argument of shape "
                                 f"{list(argument.shape)} was not recorded (meta or over {MAX_RECORDED_INTEGER_ELEMENTS} elements)")
            if shrink and any(s > GRADCHECK_TINY_DIM for s in argument.shape):
                raise ValueError("a non-floating argument cannot be shrunk with the float ones")
            built.append(argument.value.clone())
        else:
            built.append(argument.value)
    positional = built[:len(record.arguments)]
    keywords = dict(zip(record.kwargs, built[len(record.arguments):]))
    return positional, keywords


def _floating_outputs(value: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(value, torch.Tensor):
        return (value,) if value.is_floating_point() else ()
    if isinstance(value, (tuple, list)):
        return tuple(t for v in value for t in _floating_outputs(v))
    return ()


def jacobian_max_abs_error(function: Callable[..., tuple[torch.Tensor, ...]], inputs: list[torch.Tensor],
                           eps: float = 1e-6) -> float:
    """max |analytical - numerical| over the Jacobian; numerical = central differences (f(x+eps)-f(x-eps))/2eps,
    analytical = one backward per output element (through the Function's own backward)."""
    outputs = function(*inputs)
    worst = 0.0
    for output_index, output in enumerate(outputs):
        flat = output.reshape(-1)
        rows = []  # analytical Jacobian rows: d flat[j] / d (all inputs, flattened)
        for j in range(flat.numel()):
            grads = torch.autograd.grad(flat[j], inputs, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(x) if g is None else g).reshape(-1) for x, g in zip(inputs, grads)]))
        analytical = torch.stack(rows) if rows else torch.zeros(0)
        columns = []
        with torch.no_grad():
            for input_index, x in enumerate(inputs):
                base = x.detach()
                for k in range(base.numel()):
                    shifted = []
                    for sign in (1.0, -1.0):
                        moved = base.clone()
                        moved.view(-1)[k] += sign * eps
                        args = [moved if i == input_index else t.detach() for i, t in enumerate(inputs)]
                        shifted.append(function(*args)[output_index].reshape(-1))
                    columns.append((shifted[0] - shifted[1]) / (2 * eps))
        if rows and columns:
            numerical = torch.stack(columns, dim=1)
            worst = max(worst, float((analytical - numerical).abs().max()))
    return worst


GRADCHECK_FALLBACK_MAX_ELEMENTS = 1024  # when shrinking fails, the traced shapes are used up to this size


def _gradcheck_once(record: RecordedCall, shrink: bool, only_traced: bool, seed: int) -> dict[str, Any]:
    """One gradcheck; raises ValueError/RuntimeError-like errors for the caller to report."""
    positional, keywords = _gradcheck_inputs(record, shrink, torch.Generator().manual_seed(seed), only_traced)
    slots = [i for i, a in enumerate(positional) if isinstance(a, torch.Tensor) and a.requires_grad]
    key_slots = [k for k, a in keywords.items() if isinstance(a, torch.Tensor) and a.requires_grad]
    differentiable = [positional[i] for i in slots] + [keywords[k] for k in key_slots]

    def call(*tensors):
        args, kwargs = list(positional), dict(keywords)
        for i, tensor in zip(slots, tensors[:len(slots)]):
            args[i] = tensor
        for k, tensor in zip(key_slots, tensors[len(slots):]):
            kwargs[k] = tensor
        return _floating_outputs(record.cls.apply(*args, **kwargs))

    with torch.random.fork_rng(devices=[]):
        if not call(*differentiable):
            raise ValueError("it returns no floating-point tensor")
        passed = torch.autograd.gradcheck(call, tuple(differentiable), eps=1e-6, atol=1e-5, rtol=1e-3,
                                          raise_exception=False)
        error = jacobian_max_abs_error(call, differentiable)
    return {"gradcheck": "passed" if passed else "failed", "max_abs_error": error,
            "shapes": [list(t.shape) for t in differentiable],
            "arguments": slots + key_slots}


def gradcheck_function(record: RecordedCall, seed: int = 0) -> dict[str, Any]:
    """torch.autograd.gradcheck (float64) on one custom Function, with the max abs Jacobian error.

    Every floating argument is checked; if that fails but the arguments that needed a gradient in the
    traced call pass, the verdict is 'passed' for how the model uses it, with the others named."""
    result: dict[str, Any] = {"name": record.cls.__qualname__, "calls": record.calls, "gradcheck": "skipped",
                              "max_abs_error": None, "reason": None, "shapes": None}
    arguments = [*record.arguments, *record.kwargs.values()]
    float_count = sum(_numel(a.shape) for a in arguments if a.kind == "float")
    if float_count == 0:
        result["reason"] = "no floating-point tensor argument to differentiate"
        return result
    shrinks = [False] if float_count <= GRADCHECK_MAX_ELEMENTS else (
        [True, False] if float_count <= GRADCHECK_FALLBACK_MAX_ELEMENTS else [True])
    traced_differs = any(a.requires_grad for a in arguments if a.kind == "float") and \
        not all(a.requires_grad for a in arguments if a.kind == "float")
    last_error = None
    for shrink in shrinks:
        try:
            outcome = _gradcheck_once(record, shrink, only_traced=False, seed=seed)
            notes = []
            if outcome["gradcheck"] == "failed" and traced_differs:
                traced = _gradcheck_once(record, shrink, only_traced=True, seed=seed)
                if traced["gradcheck"] == "passed":
                    extra = sorted(set(outcome["arguments"]) - set(traced["arguments"]), key=str)
                    notes.append(f"passes for the arguments that needed a gradient in the traced call; the "
                                 f"gradient for argument(s) {', '.join(map(str, extra))} is wrong or absent")
                    outcome = traced
        except Exception as exc:  # the user's Function on inputs we made up: report, don't crash
            last_error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
            continue
        if shrink:
            notes.insert(0, f"inputs shrunk to dims <= {GRADCHECK_TINY_DIM} "
                            f"(the traced call had {float_count:,} float elements)")
        result.update(gradcheck=outcome["gradcheck"], max_abs_error=outcome["max_abs_error"],
                      shapes=outcome["shapes"], reason="; ".join(notes) or None)
        return result
    result["reason"] = f"could not run it on float64 inputs: {last_error}"
    return result
