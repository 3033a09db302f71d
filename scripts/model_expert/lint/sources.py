"""Which classes are the model's own (torch / library / user files), and reading one function's source
into a syntax tree."""

from __future__ import annotations

import ast
import inspect
import linecache
import os
import sysconfig
import textwrap
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .rules import RULES


# Which classes are the model's own.

def _path_kind(path: str | None) -> str:
    """'torch', 'library' (site-/dist-packages) or 'user' for a source file path."""
    if not path:
        return "user"
    real = os.path.realpath(path)
    torch_dir = os.path.realpath(os.path.dirname(torch.__file__))
    if real == torch_dir or real.startswith(torch_dir + os.sep):
        return "torch"
    parts = real.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return "library"
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    if real.startswith(stdlib + os.sep):
        return "library"
    return "user"


def _class_file(cls: type) -> str | None:
    forward = _unwrap_function(cls.__dict__.get("forward"))  # through @torch.no_grad() and other wrappers
    code = getattr(forward, "__code__", None)
    if code is not None:
        return code.co_filename
    try:
        return inspect.getfile(cls)
    except (TypeError, OSError):
        return None


def class_kind(cls: type) -> str:
    """'torch', 'library' or 'user'; torch.* modules count as torch whatever their file."""
    module = getattr(cls, "__module__", "") or ""
    if module == "torch" or module.startswith("torch."):
        return "torch"
    if module == "builtins" or cls in (object, nn.Module):
        return "torch"
    return _path_kind(_class_file(cls))


def _function_kind(function: Callable) -> str:
    code = getattr(function, "__code__", None)
    module = getattr(function, "__module__", "") or ""
    if module == "torch" or module.startswith("torch."):
        return "torch"
    return _path_kind(code.co_filename if code is not None else None)


# Reading one function.

@dataclass
class Finding:
    rule: str
    file: str | None
    line: int | None
    code: str | None
    where: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        rule = RULES[self.rule]
        message = rule.why if not self.detail else f"{self.detail}: {rule.why}"
        return {"rule": self.rule, "severity": rule.severity, "title": rule.title, "file": self.file,
                "line": self.line, "code": self.code, "where": self.where, "message": message, "fix": rule.fix}


@dataclass
class ParsedFunction:
    function: Callable
    tree: ast.FunctionDef | ast.AsyncFunctionDef
    file: str
    first_line: int  # file line of the snippet's first line (a decorator, if any)

    def file_line(self, node: ast.AST) -> int:
        return self.first_line + node.lineno - 1


def parse_function(function: Callable) -> ParsedFunction:
    """Source of one function as a syntax tree with absolute line numbers. Raises OSError/SyntaxError."""
    lines, first_line = inspect.getsourcelines(function)
    source = "".join(lines)
    file = inspect.getsourcefile(function) or function.__code__.co_filename
    if source[:1] in (" ", "\t"):
        # An indented method: parse it inside `if 1:` (no dedent, which breaks on under-indented strings).
        module = ast.parse("if 1:\n" + source)
        tree = module.body[0].body[0]
        ast.increment_lineno(tree, -1)
    else:
        tree = ast.parse(textwrap.dedent(source)).body[0]
    if not isinstance(tree, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise SyntaxError(f"source of {function.__qualname__} is not a def (a lambda or an assignment)")
    return ParsedFunction(function=function, tree=tree, file=os.path.abspath(file), first_line=first_line)


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _unwrap_function(value: Any) -> Callable | None:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    value = inspect.unwrap(value) if callable(value) else value
    return value if isinstance(value, types.FunctionType) else None


def _closure_values(function: Callable) -> dict[str, Any]:
    """Names a nested function sees from its enclosing scope (empty cells skipped)."""
    values = {}
    code = getattr(function, "__code__", None)
    for name, cell in zip(code.co_freevars if code else (), getattr(function, "__closure__", None) or ()):
        try:
            values[name] = cell.cell_contents
        except ValueError:
            pass
    return values


def _class_line(cls: type, method: str) -> tuple[str | None, int | None, str | None]:
    function = _unwrap_function(cls.__dict__.get(method))
    try:
        parsed = parse_function(function) if function is not None else None
    except (OSError, TypeError, SyntaxError):
        parsed = None
    if parsed is None:
        return None, None, None
    line = parsed.file_line(parsed.tree)  # the `def` line (after any @staticmethod)
    return parsed.file, line, linecache.getline(parsed.file, line).strip() or None


def _relative(path: str | None) -> str:
    if not path:
        return "-"
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative
