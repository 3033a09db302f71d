"""Device and dtype checks: do the inputs and the parameters sit on one device, in one dtype."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..inputs import DTYPE_NAMES, ModelInputs
from .sources import Finding


def _dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def _input_tensors(inputs: ModelInputs) -> list[tuple[str, torch.Tensor]]:
    found = []

    def visit(where: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            found.append((where, value))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(f"{where}[{i}]", item)
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(f"{where}.{key}", item)

    for position, value in enumerate(inputs.args):
        visit(f"args[{position}]", value)
    for key, value in inputs.kwargs.items():
        visit(key, value)
    return found


def check_devices(model: nn.Module, inputs: ModelInputs) -> tuple[str, str, list[Finding]]:
    """Every parameter, buffer and input tensor on one device."""
    devices: dict[str, list[str]] = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        devices.setdefault(str(tensor.device), []).append(name)
    for name, tensor in _input_tensors(inputs):
        devices.setdefault(str(tensor.device), []).append(f"input {name}")
    if len(devices) <= 1:
        return "ok", f"all on {next(iter(devices), 'no device')}", []
    detail = "; ".join(f"{device}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} ({len(names)})"
                       for device, names in devices.items())
    return "problem", detail, [Finding("device-mismatch", None, None, None, "model and inputs", detail)]


def check_dtypes(model: nn.Module, inputs: ModelInputs) -> tuple[str, str, list[Finding]]:
    """One floating dtype among the parameters; floating inputs in that dtype."""
    parameter_dtypes: dict[torch.dtype, int] = {}
    for parameter in model.parameters():
        if parameter.is_floating_point():
            parameter_dtypes[parameter.dtype] = parameter_dtypes.get(parameter.dtype, 0) + 1
    findings = []
    details = []
    if len(parameter_dtypes) > 1:
        text = ", ".join(f"{_dtype_name(d)} ({n} tensors)" for d, n in parameter_dtypes.items())
        findings.append(Finding("mixed-parameter-dtypes", None, None, None, "parameters", f"parameters are {text}"))
        details.append(f"parameters: {text}")
    elif parameter_dtypes:
        (dtype,) = parameter_dtypes
        details.append(f"parameters: {_dtype_name(dtype)}")
        odd = [(n, t) for n, t in _input_tensors(inputs) if t.is_floating_point() and t.dtype != dtype]
        for name, tensor in odd:
            findings.append(Finding("input-dtype-mismatch", None, None, None, f"input {name}",
                                    f"input {name} is {_dtype_name(tensor.dtype)}, parameters are {_dtype_name(dtype)}"))
        floating = [t for _, t in _input_tensors(inputs) if t.is_floating_point()]
        details.append(f"floating inputs: {len(floating)}, {len(odd)} in another dtype")
    else:
        details.append("no floating parameters")
    return ("problem" if findings else "ok"), "; ".join(details), findings
