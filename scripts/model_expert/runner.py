"""Running the user's forward (and loss) with failures pinned to the module that raised."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .errors import UserError
from .inputs import DTYPE_NAMES, ModelInputs, describe_value

LossFunction = Callable[[Any], torch.Tensor]


def shape_text(value: Any) -> str:
    """float32[4,10,512] for a tensor; tuples and dicts element-wise; other values by type."""
    rows = describe_value("x", value)
    if not rows:
        return type(value).__name__
    return ", ".join(f"{r['dtype']}[{','.join(map(str, r['shape']))}]" for r in rows)


class ModelCallError(UserError):
    """Forward or loss failed; the message names the innermost module that was running."""


@contextlib.contextmanager
def module_stack(model: nn.Module) -> Iterator[list[tuple[str, nn.Module, tuple, dict]]]:
    """Track the modules currently inside forward (innermost last). Hooks are removed on exit."""
    stack: list[tuple[str, nn.Module, tuple, dict]] = []
    handles = []

    def push(path):
        def hook(module, args, kwargs):
            stack.append((path, module, args, kwargs))
        return hook

    def pop(module, args, kwargs, output):
        if stack and stack[-1][1] is module:
            stack.pop()

    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(push(path), with_kwargs=True))
        handles.append(module.register_forward_hook(pop, with_kwargs=True))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def describe_failure(stack, error: BaseException, model_name: str) -> str:
    first = (str(error).strip().splitlines() or ["(no message)"])[0]
    if not stack:
        return f"forward of {model_name} failed: {type(error).__name__}: {first}"
    path, module, args, kwargs = stack[-1]
    given = [shape_text(a) for a in args] + [f"{k}={shape_text(v)}" for k, v in kwargs.items()]
    params = ", ".join(f"{n} {DTYPE_NAMES.get(p.dtype, p.dtype)}[{','.join(map(str, p.shape))}]"
                       for n, p in module.named_parameters(recurse=False))
    where = path or "(the model itself)"
    return (f"forward failed in module '{where}' ({type(module).__name__}) given ({'; '.join(given)})"
            f"{' with parameters ' + params if params else ''}: {type(error).__name__}: {first}")


def call_model(model: nn.Module, inputs: ModelInputs, model_name: str = "the model") -> Any:
    """model(*args, **kwargs), with a failure turned into a one-line ModelCallError."""
    with module_stack(model) as stack:
        try:
            return model(*inputs.args, **inputs.kwargs)
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as error:
            raise ModelCallError(describe_failure(list(stack), error, model_name)) from error


def floating_leaves(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() or value.is_complex() else []
    if isinstance(value, dict) or hasattr(value, "items") and hasattr(value, "keys"):
        return [t for v in value.values() for t in floating_leaves(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in floating_leaves(v)]
    return []


# Which default loss this process backpropagated: the scripts name it in their header and JSON.
DEFAULT_LOSS_TEXT = {"output.loss": "default: output.loss", "mean": "default: mean of outputs"}
default_losses_used: set[str] = set()


def loss_description(loss_option: str | None) -> str | None:
    """What was backpropagated: the --loss option, else the default(s) used, else None (no loss ran)."""
    if loss_option:
        return loss_option
    return "; ".join(DEFAULT_LOSS_TEXT[kind] for kind in sorted(default_losses_used)) or None


def default_loss(output: Any) -> torch.Tensor:
    """`output.loss` when present (Hugging Face), else the sum of the means of the floating outputs."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    if isinstance(loss, torch.Tensor):
        default_losses_used.add("output.loss")
        return loss
    default_losses_used.add("mean")
    leaves = [t for t in floating_leaves(output) if t.requires_grad or t.grad_fn is not None] or floating_leaves(output)
    if not leaves:
        raise UserError("the model's output has no floating-point tensor to backpropagate; pass --loss file.py:fn "
                        "where fn(output) returns a scalar")
    total = leaves[0].float().mean()
    for leaf in leaves[1:]:
        total = total + leaf.float().mean()
    return total


def takes_batch(loss_fn: Callable[..., Any]) -> bool:
    """Whether a --loss function takes (output, batch) rather than (output)."""
    try:
        parameters = inspect.signature(loss_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def compute_loss(loss_fn: LossFunction | None, output: Any, origin: str = "--loss", batch: Any = None) -> torch.Tensor:
    """loss_fn(output), or loss_fn(output, batch) for a two-parameter loss (BATCH: the --data batch)."""
    if loss_fn is None:
        return default_loss(output)
    two_parameters = takes_batch(loss_fn)
    if two_parameters and batch is None:
        raise UserError(f"{origin} function takes (output, batch) but there is no batch: give --data FILE.py:FN "
                        f"(an iterable of batches with the labels) or a one-parameter loss")
    try:
        loss = loss_fn(output, batch) if two_parameters else loss_fn(output)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as error:
        first = (str(error).strip().splitlines() or ["(no message)"])[0]
        raise UserError(f"{origin} function raised {type(error).__name__}: {first}") from error
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise UserError(f"{origin} function returned {shape_text(loss)}; it must return a scalar tensor")
    return loss.reshape(())


def run_backward(loss: torch.Tensor, model_name: str = "the model") -> None:
    """loss.backward(), with a loss that reaches no parameter and a failing backward turned into one-line errors."""
    if not loss.requires_grad:
        raise UserError("the loss does not require grad: no parameter of the model reaches it "
                        "(all frozen, or the output is detached); check requires_grad and the --loss function")
    try:
        loss.backward()
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as error:
        first = (str(error).strip().splitlines() or ["(no message)"])[0]
        raise ModelCallError(f"backward of {model_name} failed: {type(error).__name__}: {first}") from error
