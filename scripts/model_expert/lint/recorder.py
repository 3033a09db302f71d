"""The runtime recorder: one forward with every custom torch.autograd.Function call recorded
(its inputs' shapes and kinds), for gradcheck."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.autograd.function import Function


@dataclass
class RecordedArgument:
    kind: str  # 'float', 'other-tensor', 'value'
    shape: tuple[int, ...] = ()
    dtype: torch.dtype | None = None
    requires_grad: bool = False
    value: Any = None  # a CPU copy of a small non-floating tensor, or the Python value


@dataclass
class RecordedCall:
    cls: type
    calls: int = 0
    arguments: list[RecordedArgument] = field(default_factory=list)
    kwargs: dict[str, RecordedArgument] = field(default_factory=dict)


MAX_RECORDED_INTEGER_ELEMENTS = 65536


def _record_argument(value: Any) -> RecordedArgument:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point():
            return RecordedArgument("float", tuple(value.shape), value.dtype, value.requires_grad)
        copy = None
        if value.device.type != "meta" and value.numel() <= MAX_RECORDED_INTEGER_ELEMENTS:
            copy = value.detach().to("cpu", copy=True)
        return RecordedArgument("other-tensor", tuple(value.shape), value.dtype, False, copy)
    return RecordedArgument("value", value=value)


class FunctionRecorder:
    """Wraps Function.apply for the duration of a `with`: every subclass's first call is recorded."""

    def __init__(self) -> None:
        self.calls: dict[type, RecordedCall] = {}

    def __enter__(self) -> "FunctionRecorder":
        self._original = Function.__dict__["apply"]  # a classmethod, or (torch >= 2.14) a C classmethod_descriptor
        original = self._original
        recorder = self

        def apply(cls, *args, **kwargs):
            record = recorder.calls.get(cls)
            if record is None:
                record = recorder.calls[cls] = RecordedCall(cls, 0, [_record_argument(a) for a in args],
                                                            {k: _record_argument(v) for k, v in kwargs.items()})
            record.calls += 1
            return original.__get__(None, cls)(*args, **kwargs)

        Function.apply = classmethod(apply)  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc_info) -> None:
        Function.apply = self._original  # type: ignore[method-assign]
