"""Every run of the user's model goes through `preserved(module)`.

On exit, normal or not (an exception, Ctrl-C), the model is as it was: parameter and buffer values
bit-identical, the same tensors in the same slots, train/eval mode, requires_grad, .grad,
registered hooks (module and global), and the global RNG states (torch, CUDA, Python, NumPy).
"""

from __future__ import annotations

import contextlib
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.modules import module as _module_impl

# Per-module hook dicts of nn.Module (torch >= 2.4). Ones a version lacks are skipped.
_MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
    "_global_buffer_registration_hooks",
)


@dataclass
class _TensorSlot:
    owner: nn.Module
    kind: str  # "_parameters" or "_buffers"
    name: str
    tensor: torch.Tensor | None
    saved_value: torch.Tensor | None  # a copy of the data (None on meta: no data to lose)
    requires_grad: bool
    grad: torch.Tensor | None
    saved_grad_value: torch.Tensor | None


@dataclass
class ModelSnapshot:
    modules: list[tuple[nn.Module, bool, dict[str, dict]]] = field(default_factory=list)
    slots: list[_TensorSlot] = field(default_factory=list)
    global_hooks: dict[str, dict] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    grad_enabled: bool = True
    default_dtype: torch.dtype = torch.float32


def _copy_or_none(tensor: torch.Tensor | None) -> torch.Tensor | None:
    if tensor is None or tensor.device.type == "meta":
        return None
    return tensor.detach().clone()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        state["numpy"] = numpy.random.get_state()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        sys.modules["numpy"].random.set_state(state["numpy"])


def take_snapshot(model: nn.Module, copy_values: bool = True) -> ModelSnapshot:
    """Record everything a run could change. `copy_values=False` skips the data copies (meta models)."""
    snap = ModelSnapshot(rng=_rng_state(), grad_enabled=torch.is_grad_enabled(),
                         default_dtype=torch.get_default_dtype())
    for name in _GLOBAL_HOOK_DICTS:
        hooks = getattr(_module_impl, name, None)
        if hooks is not None:
            snap.global_hooks[name] = dict(hooks)
    for module in model.modules():
        hook_dicts = {name: dict(getattr(module, name)) for name in _MODULE_HOOK_DICTS
                      if getattr(module, name, None) is not None}
        snap.modules.append((module, module.training, hook_dicts))
        for kind in ("_parameters", "_buffers"):
            for name, tensor in getattr(module, kind).items():
                grad = tensor.grad if (tensor is not None and kind == "_parameters") else None
                snap.slots.append(_TensorSlot(
                    owner=module, kind=kind, name=name, tensor=tensor,
                    saved_value=_copy_or_none(tensor) if copy_values else None,
                    requires_grad=bool(tensor is not None and tensor.requires_grad),
                    grad=grad,
                    saved_grad_value=_copy_or_none(grad) if copy_values else None,
                ))
    return snap


def restore_snapshot(snap: ModelSnapshot) -> None:
    """Put back what `take_snapshot` recorded. Safe to call after a half-finished run."""
    torch.set_grad_enabled(snap.grad_enabled)
    torch.set_default_dtype(snap.default_dtype)
    for name, saved in snap.global_hooks.items():
        hooks = getattr(_module_impl, name)
        hooks.clear()
        hooks.update(saved)
    for module, training, hook_dicts in snap.modules:
        module.training = training
        for name, saved in hook_dicts.items():
            hooks = getattr(module, name)
            hooks.clear()
            hooks.update(saved)
    with torch.no_grad():
        for slot in snap.slots:
            getattr(slot.owner, slot.kind)[slot.name] = slot.tensor
            tensor = slot.tensor
            if tensor is None:
                continue
            if slot.saved_value is not None and not torch.equal(tensor.data, slot.saved_value):
                tensor.data.copy_(slot.saved_value)
            if slot.kind == "_parameters":
                tensor.requires_grad_(slot.requires_grad)
                if slot.grad is not None and slot.saved_grad_value is not None:
                    slot.grad.copy_(slot.saved_grad_value)
                tensor.grad = slot.grad
    _restore_rng(snap.rng)


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[ModelSnapshot]:
    """Run the body, then restore the model and the global state, whatever happened."""
    on_meta = all(t.device.type == "meta" for t in _tensors(model))
    snap = take_snapshot(model, copy_values=not on_meta)
    try:
        yield snap
    finally:
        restore_snapshot(snap)


def _tensors(model: nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()
