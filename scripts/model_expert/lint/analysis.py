"""The whole lint: the scanner, then one guarded forward with the recorder, gradcheck and the
device/dtype checks."""

from __future__ import annotations

import inspect
import linecache
from typing import Any, Callable

import torch
from torch import nn

from ..errors import UserError
from ..guard import preserved
from ..inputs import ModelInputs
from ..runner import ModelCallError, call_model, shape_text
from .device_dtype import _input_tensors, check_devices, check_dtypes
from .gradcheck import gradcheck_function
from .recorder import FunctionRecorder, RecordedCall
from .rules import RULES, SEVERITIES
from .scanner import scan_model
from .sources import Finding, _class_line, _path_kind, _relative, _unwrap_function


def lint_model(model: nn.Module, inputs: ModelInputs | None, model_name: str = "the model",
               scan_libraries: bool = False, follow_depth: int = 2, no_inputs_reason: str | None = None,
               run_forward: bool = True) -> dict[str, Any]:
    """Static scan + dynamic checks. The model is run (once) only inside `preserved`."""
    static = scan_model(model, scan_libraries=scan_libraries, follow_depth=follow_depth)
    findings: list[Finding] = list(static["findings"])
    dynamic: list[dict[str, Any]] = []
    recorded: dict[type, RecordedCall] = {}

    if inputs is None or not run_forward:
        reason = "--static-only" if not run_forward else (no_inputs_reason or "no inputs")
        for check in ("devices", "dtypes", "forward", "custom-functions"):
            dynamic.append({"check": check, "status": "skipped", "detail": reason})
    else:
        for check, function in DYNAMIC_CHECKS.items():
            status, detail, new = function(model, inputs)
            dynamic.append({"check": check, "status": status, "detail": detail})
            findings.extend(new)
        with preserved(model):
            with FunctionRecorder() as recorder:
                try:
                    with torch.enable_grad():
                        call_model(model, inputs, model_name)
                except ModelCallError as error:
                    # The CLI contract: a failed run is one line and exit 2. Point at what the source read found.
                    raise UserError(f"{error}{_static_hint(static['findings'])}") from error
            dynamic.append({"check": "forward", "status": "ok",
                            "detail": f"ran once with {', '.join(shape_text(t) for _, t in _input_tensors(inputs)) or 'no tensors'}"})
            recorded = recorder.calls

    custom_functions = []
    own_recorded = {cls: record for cls, record in recorded.items() if _class_kind_for_function(cls, scan_libraries)}
    static_functions: dict[type, tuple[str, int]] = static["static_functions"]
    for cls in list(own_recorded) + [c for c in static_functions if c not in own_recorded]:
        record = own_recorded.get(cls)
        if record is None:
            entry = {"name": cls.__qualname__, "calls": 0, "gradcheck": "skipped",
                     "max_abs_error": None, "shapes": None,
                     "reason": ("not called during the forward with these inputs, so no argument shapes were recorded"
                                if inputs is not None and run_forward else "the forward was not run")}
        else:
            with preserved(model):
                entry = gradcheck_function(record)
        file, line, code = _class_line(cls, "backward")
        if file is None and cls in static_functions:
            file, line = static_functions[cls]
            code = linecache.getline(file, line).strip() or None
        entry["file"], entry["line"] = file, line
        custom_functions.append(entry)
        if entry["gradcheck"] == "failed":
            findings.append(Finding("custom-function-gradcheck", file, line, code, cls.__qualname__,
                                    f"{cls.__qualname__}: max |analytical - numerical| = {entry['max_abs_error']:.3g}"))
    if inputs is not None and run_forward:
        passed = sum(f["gradcheck"] == "passed" for f in custom_functions)
        failed = sum(f["gradcheck"] == "failed" for f in custom_functions)
        skipped = sum(f["gradcheck"] == "skipped" for f in custom_functions)
        dynamic.append({"check": "custom-functions", "status": "problem" if failed else "ok",
                        "detail": f"{len(custom_functions)} custom autograd.Function(s): {passed} passed, "
                                  f"{failed} failed, {skipped} skipped"})
    ordered = sorted((f.as_dict() for f in findings),
                     key=lambda f: (SEVERITIES.index(f["severity"]), f["file"] or "", f["line"] or 0, f["rule"]))
    counts = {severity: sum(f["severity"] == severity for f in ordered) for severity in SEVERITIES}
    return {"model": type(model).__name__, "scan_libraries": scan_libraries, "follow_depth": follow_depth,
            "counts": counts, "findings": ordered,
            "classes_scanned": static["classes_scanned"], "classes_ignored": static["classes_ignored"],
            "custom_functions": custom_functions, "dynamic": dynamic}


def _static_hint(findings: list[Finding]) -> str:
    """'; reading the source found 2 RISK, 1 CAUTION (first: parameter-in-place at f.py:14); ...' or ''."""
    serious = sorted((f for f in findings if RULES[f.rule].severity != "INFO"),
                     key=lambda f: (SEVERITIES.index(RULES[f.rule].severity), f.line or 0))
    if not serious:
        return ""
    counts = ", ".join(f"{n} {severity}" for severity in SEVERITIES[:2]
                       if (n := sum(RULES[f.rule].severity == severity for f in serious)))
    first = serious[0]
    return (f"; reading the source found {counts} (first: {first.rule} at {_relative(first.file)}:{first.line}); "
            f"rerun with --static-only to list them")


def _class_kind_for_function(cls: type, scan_libraries: bool) -> bool:
    """A recorded Function is checked when it is the user's own (or a library's, with --scan-libraries)."""
    kind = _path_kind(_class_file_for_function(cls))
    module = cls.__module__ or ""
    if module == "torch" or module.startswith("torch."):
        return False
    return kind == "user" or (kind == "library" and scan_libraries)


def _class_file_for_function(cls: type) -> str | None:
    for method in ("forward", "backward"):
        function = _unwrap_function(cls.__dict__.get(method))
        if function is not None:
            return function.__code__.co_filename
    try:
        return inspect.getfile(cls)
    except (TypeError, OSError):
        return None


DYNAMIC_CHECKS: dict[str, Callable[[nn.Module, ModelInputs], tuple[str, str, list[Finding]]]] = {
    "devices": check_devices,
    "dtypes": check_dtypes,
}
