"""Autograd lint: read the model's own `forward` code for operations that cut or corrupt the graph,
then run it once to check devices, dtypes and every custom `torch.autograd.Function` (gradcheck).

What is scanned (a written rule, printed with the results):
  * the classes in the MRO of every module in `model.modules()` whose source file lies outside
    torch and outside site-packages/dist-packages; `--scan-libraries` adds third-party library
    classes (Hugging Face, timm, ...). torch's own classes are never scanned.
  * in each such class, its own `forward`, and the methods (`self.helper(...)`) and module-level
    functions of the user's files that it calls, `--follow-depth` levels deep (default 2).
  * a class whose source cannot be read (defined by exec, in a REPL) is listed as skipped with the reason.

The forward runs once, inside guard.preserved; if it raises, the script follows the CLI contract (one
line, exit 2) and the line says what the source read found; `--static-only` lists it without running.

Static rules are heuristics on the syntax tree: they name the line and the reason; the dynamic
checks measure. Every rule, its severity, why it matters and the fix live in RULES, once.
"""

from __future__ import annotations

import argparse
import ast
import builtins
import inspect
import linecache
import os
import sysconfig
import textwrap
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.autograd.function import Function

from . import cli, render
from .errors import UserError
from .target import NoInputsError
from .guard import preserved
from .inputs import DTYPE_NAMES, ModelInputs
from .runner import ModelCallError, call_model, shape_text

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


# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
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


class FunctionScanner:
    """Applies the static rules to one parsed function of one class (or a module-level helper)."""

    def __init__(self, parsed: ParsedFunction, owner: type | None, instances: list[nn.Module], where: str):
        self.parsed = parsed
        self.owner = owner
        self.instances = instances
        self.where = where
        self.namespace = {**vars(builtins), **getattr(parsed.function, "__globals__", {}),
                          **_closure_values(parsed.function)}
        arguments = parsed.tree.args
        positional = arguments.posonlyargs + arguments.args
        self.self_name = positional[0].arg if owner is not None and positional else None
        self.tensor_names: set[str] = set()
        self.parameter_names: set[str] = set()  # loop variables over .parameters()
        self.module_names: set[str] = set()  # loop variables over a ModuleList / Sequential of self
        self.aliases: dict[str, list[str]] = {}  # local name -> self attribute chain
        self.findings: list[Finding] = []
        self.calls_to_follow: list[tuple[Callable, type | None]] = []
        self.autograd_functions: dict[type, int] = {}  # Function subclass -> file line of its .apply
        self._seed_tensor_names(positional[1:] if self.self_name else positional, arguments)

    # ---- names that hold tensors ----
    def _seed_tensor_names(self, positional: list[ast.arg], arguments: ast.arguments) -> None:
        defaults = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
        pairs = list(zip(positional, defaults)) + list(zip(arguments.kwonlyargs, arguments.kw_defaults))
        for arg, default in pairs:
            if isinstance(default, ast.Constant) and isinstance(default.value, (bool, int, float, str)):
                continue  # a flag or a size, not a tensor
            if arg.annotation is not None:
                names = {n.id for n in ast.walk(arg.annotation) if isinstance(n, ast.Name)}
                names |= {n.attr for n in ast.walk(arg.annotation) if isinstance(n, ast.Attribute)}
                text = ast.unparse(arg.annotation)
                if "Tensor" not in text and names and names <= NON_TENSOR_ANNOTATIONS:
                    continue
            self.tensor_names.add(arg.arg)

    def _resolve(self, node: ast.AST) -> Any:
        """The object a Name/Attribute chain of modules and classes names (no code runs), else _MISSING."""
        if isinstance(node, ast.Name):
            return self.namespace.get(node.id, _MISSING)
        if isinstance(node, ast.Attribute):
            base = self._resolve(node.value)
            if isinstance(base, (types.ModuleType, type)):
                return getattr(base, node.attr, _MISSING)
        return _MISSING

    def _torch_name(self, node: ast.AST) -> str | None:
        value = self._resolve(node)
        if value is not _MISSING:
            try:
                return _TORCH_OBJECTS.get(id(value))
            except TypeError:
                return None
        dotted = _dotted(node)
        return dotted if dotted in TORCH_CALL_RULES else None

    def _is_torch_namespace(self, node: ast.AST) -> bool:
        value = self._resolve(node)
        if isinstance(value, types.ModuleType):
            return value.__name__ == "torch" or value.__name__.startswith("torch.")
        dotted = _dotted(node) or ""
        return dotted in ("torch", "F") or dotted.startswith("torch.")

    def _self_chain(self, node: ast.AST) -> list[str] | None:
        """self.a.b -> ['a', 'b']; a local alias of one -> its chain; else None."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        if self.self_name and node.id == self.self_name:
            return parts[::-1]
        if node.id in self.aliases:
            return self.aliases[node.id] + parts[::-1]
        return None

    def _instance_values(self, chain: list[str]) -> Iterator[tuple[Any, nn.Module | None, str]]:
        """(value, owning module, last name) of self.<chain> in every instance, read without running code."""
        for instance in self.instances:
            value: Any = instance
            owner: nn.Module | None = None
            for name in chain:
                if isinstance(value, nn.Module):
                    owner = value
                    for store in (value._parameters, value._buffers, value._modules, value.__dict__):
                        if name in store:
                            value = store[name]
                            break
                    else:
                        value = _MISSING
                else:
                    value = _MISSING
                if value is _MISSING:
                    break
            if value is not _MISSING:
                yield value, owner, chain[-1] if chain else ""

    def _chain_kind(self, chain: list[str]) -> str | None:
        """'parameter' > 'tensor' > 'buffer' > 'module' across instances; None when unknown or not a tensor."""
        kinds = set()
        for value, owner, name in self._instance_values(chain):
            if isinstance(value, nn.Parameter):
                kinds.add("parameter")
            elif isinstance(value, torch.Tensor):
                kinds.add("buffer" if owner is not None and owner._buffers.get(name) is value else "tensor")
            elif isinstance(value, nn.Module):
                kinds.add("module")
        for kind in ("parameter", "tensor", "buffer", "module"):
            if kind in kinds:
                return kind
        return None

    def is_tensor_expr(self, node: ast.AST | None) -> bool:
        """Heuristic: does this expression hold (or depend on the values of) a tensor?"""
        if node is None:
            return False
        if isinstance(node, ast.Name):
            return node.id in self.tensor_names or node.id in self.parameter_names
        if isinstance(node, ast.Constant):
            return False
        if isinstance(node, ast.Attribute):
            if node.attr in METADATA_ATTRIBUTES:
                return False
            chain = self._self_chain(node)
            if chain is not None:
                return self._chain_kind(chain) in ("parameter", "tensor", "buffer")
            return node.attr in TENSOR_VALUE_ATTRIBUTES and self.is_tensor_expr(node.value)
        if isinstance(node, ast.Subscript):
            return self.is_tensor_expr(node.value)
        if isinstance(node, ast.Starred):
            return self.is_tensor_expr(node.value)
        if isinstance(node, ast.BinOp):
            return self.is_tensor_expr(node.left) or self.is_tensor_expr(node.right)
        if isinstance(node, ast.UnaryOp):
            return self.is_tensor_expr(node.operand)
        if isinstance(node, ast.BoolOp):
            return any(self.is_tensor_expr(v) for v in node.values)
        if isinstance(node, ast.Compare):
            if all(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
                return False
            return any(self.is_tensor_expr(v) for v in [node.left, *node.comparators])
        if isinstance(node, ast.IfExp):
            return self.is_tensor_expr(node.body) or self.is_tensor_expr(node.orelse)
        if isinstance(node, (ast.Tuple, ast.List)):
            return any(self.is_tensor_expr(e) for e in node.elts)
        if isinstance(node, ast.Call):
            return self._is_tensor_call(node)
        if isinstance(node, ast.NamedExpr):
            return self.is_tensor_expr(node.value)
        return False

    def _is_tensor_call(self, node: ast.Call) -> bool:
        """torch functions, tensor methods, value reductions and submodule calls give tensors; other
        callables (the user's helpers, library functions) are not assumed to."""
        func = node.func
        if isinstance(func, ast.Name):
            if func.id in VALUE_BUILTINS and self.namespace.get(func.id) is getattr(builtins, func.id):
                return any(self.is_tensor_expr(a) for a in node.args)
            return func.id in self.module_names
        if not isinstance(func, ast.Attribute):
            return False
        if self._is_torch_namespace(func.value):
            return not (func.attr.startswith("is_") or func.attr in METADATA_TORCH_FUNCTIONS)
        if func.attr in METADATA_METHODS:
            return False
        if func.attr in VALUE_REDUCTIONS or self.is_tensor_expr(func.value):
            return True
        chain = self._self_chain(func)
        return chain is not None and self._chain_kind(chain) == "module"  # a submodule's forward

    def _bind_targets(self, target: ast.AST, tensor: bool) -> bool:
        changed = False
        for node in ast.walk(target):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and tensor and node.id not in self.tensor_names:
                self.tensor_names.add(node.id)
                changed = True
        return changed

    def _propagate_names(self) -> None:
        """Mark local names holding tensors, parameters (loops over .parameters()) and self aliases."""
        for _ in range(6):  # to a fixed point; straight-line code needs one or two passes
            changed = False
            for node in ast.walk(self.parsed.tree):
                if isinstance(node, ast.Assign):
                    if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                        chain = self._self_chain(node.value)
                        if chain is not None and node.targets[0].id not in self.aliases:
                            self.aliases[node.targets[0].id] = chain
                            changed = True
                    for target in node.targets:
                        changed |= self._bind_targets(target, self.is_tensor_expr(node.value))
                elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                    changed |= self._bind_targets(node.target, self.is_tensor_expr(node.value))
                elif isinstance(node, ast.NamedExpr):
                    changed |= self._bind_targets(node.target, self.is_tensor_expr(node.value))
                elif isinstance(node, (ast.For, ast.comprehension)):
                    iterated = node.iter
                    if isinstance(iterated, ast.Call) and isinstance(iterated.func, ast.Attribute) \
                            and iterated.func.attr in ("parameters", "named_parameters"):
                        target = node.target
                        if iterated.func.attr == "named_parameters" and isinstance(target, ast.Tuple) and len(target.elts) == 2:
                            target = target.elts[1]
                        if isinstance(target, ast.Name) and target.id not in self.parameter_names:
                            self.parameter_names.add(target.id)
                            changed = True
                    else:
                        chain = self._self_chain(iterated)
                        if chain is not None and isinstance(node.target, ast.Name) \
                                and self._chain_kind(chain) == "module" and node.target.id not in self.module_names:
                            self.module_names.add(node.target.id)
                            changed = True
                        changed |= self._bind_targets(node.target, self.is_tensor_expr(iterated))
                elif isinstance(node, (ast.With, ast.AsyncWith)):
                    for item in node.items:
                        if item.optional_vars is not None:
                            changed |= self._bind_targets(item.optional_vars, self.is_tensor_expr(item.context_expr))
            if not changed:
                break

    # ---- reporting ----
    def add(self, rule: str, node: ast.AST, detail: str = "") -> None:
        line = self.parsed.file_line(node)
        code = linecache.getline(self.parsed.file, line).strip() or None
        self.findings.append(Finding(rule=rule, file=self.parsed.file, line=line, code=code,
                                     where=self.where, detail=detail))

    def _buffer_bookkeeping(self, statement: ast.stmt) -> bool:
        """An in-place update or reassignment of a registered buffer (running statistics, EMA)."""
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call) \
                and isinstance(statement.value.func, ast.Attribute) and statement.value.func.attr.endswith("_"):
            targets = [statement.value.func.value]
        elif isinstance(statement, (ast.AugAssign, ast.AnnAssign)):
            targets = [statement.target]
        elif isinstance(statement, ast.Assign):
            targets = list(statement.targets)
        else:
            return False
        for target in targets:
            while True:  # buffer[...], buffer.data, buffer.mul_(m).add_(...)
                if isinstance(target, ast.Subscript) or (isinstance(target, ast.Attribute) and target.attr == "data"):
                    target = target.value
                elif isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute) \
                        and target.func.attr.endswith("_"):
                    target = target.func.value
                else:
                    break
            chain = self._self_chain(target)
            if not chain or self._chain_kind(chain) != "buffer":
                return False
        return True

    def _bookkeeping_blocks(self) -> set[int]:
        """ids of `torch.no_grad()` calls whose `with` body only updates buffers: ignored by rule
        (that is how running statistics are kept; nothing computed there feeds the output)."""
        ignored = set()
        for node in ast.walk(self.parsed.tree):
            if isinstance(node, (ast.With, ast.AsyncWith)) and node.body \
                    and all(self._buffer_bookkeeping(statement) for statement in node.body):
                for item in node.items:
                    ignored.add(id(item.context_expr))
        return ignored

    def scan(self) -> list[Finding]:
        self._propagate_names()
        bookkeeping = self._bookkeeping_blocks()
        for decorator in self.parsed.tree.decorator_list:
            self._check_call_like(decorator)
        for node in ast.walk(self.parsed.tree):
            if isinstance(node, ast.Call):
                if id(node) not in bookkeeping:
                    self._check_call(node)
            elif isinstance(node, ast.Attribute) and node.attr == "data":
                self._check_data(node)
            elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
                if self.is_tensor_expr(node.test):
                    kind = {ast.If: "if", ast.While: "while", ast.IfExp: "conditional expression"}[type(node)]
                    self.add("tensor-branch", node, f"`{kind} {ast.unparse(node.test)}` reads a tensor value")
            elif isinstance(node, ast.AugAssign):
                self._check_in_place_target(node.target, node, "augmented assignment")
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Subscript):
                        self._check_in_place_target(target.value, node, "item assignment")
                    elif isinstance(target, ast.Attribute) and target.attr == "data":
                        self._check_in_place_target(target, node, ".data assignment")
        self._check_zero_gradient_returns()
        return self._deduplicated()

    def _deduplicated(self) -> list[Finding]:
        """One finding per (rule, line); a .data access on a line already reported as an in-place update is that."""
        in_place_lines = {f.line for f in self.findings if f.rule in ("parameter-in-place", "tensor-attribute-in-place")}
        seen: set[tuple[str, int | None]] = set()
        kept = []
        for finding in sorted(self.findings, key=lambda f: (f.line or 0, f.rule)):
            if finding.rule == "data-access" and finding.line in in_place_lines:
                continue
            if (finding.rule, finding.line) not in seen:
                seen.add((finding.rule, finding.line))
                kept.append(finding)
        return kept

    def _check_call_like(self, node: ast.AST) -> None:
        """A decorator: `@torch.no_grad()` or `@torch.no_grad`."""
        target = node.func if isinstance(node, ast.Call) else node
        name = self._torch_name(target)
        if name and TORCH_CALL_RULES[name] == "grad-disabled" and name != "torch.set_grad_enabled":
            self.add("grad-disabled", node, f"@{name} on {self.where}")

    def _check_call(self, node: ast.Call) -> None:
        func = node.func
        torch_name = self._torch_name(func)
        if torch_name:
            rule = TORCH_CALL_RULES[torch_name]
            if rule == "grad-disabled":
                if torch_name != "torch.set_grad_enabled" or (
                        node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value is False):
                    self.add(rule, node, f"{ast.unparse(node)}")
            elif rule == "tensor-rewrap":
                if node.args and self.is_tensor_expr(node.args[0]):
                    self.add(rule, node, f"{torch_name}({ast.unparse(node.args[0])}) copies a tensor")
            return
        if (isinstance(func, ast.Name) and func.id in PYTHON_NUMBER_BUILTINS
                and self.namespace.get(func.id, getattr(builtins, func.id)) is getattr(builtins, func.id)
                and node.args and self.is_tensor_expr(node.args[0])):
            self.add("tensor-to-python", node, f"{func.id}() of `{ast.unparse(node.args[0])}`")
        if not isinstance(func, ast.Attribute):
            self._follow(node)
            return
        if func.attr in METHOD_RULES and not self._is_torch_namespace(func.value):
            self.add(METHOD_RULES[func.attr], node, f".{func.attr}() on `{ast.unparse(func.value)}`")
        elif func.attr == "apply":
            cls = self._resolve(func.value)
            if isinstance(cls, type) and issubclass(cls, Function):
                self.autograd_functions.setdefault(cls, self.parsed.file_line(node))
        elif func.attr.endswith("_") and not func.attr.startswith("_") and func.attr not in NOT_VALUE_MUTATIONS:
            receiver = func.value
            while isinstance(receiver, ast.Subscript):
                receiver = receiver.value
            self._check_in_place_target(receiver, node, f".{func.attr}()")
        self._follow(node)

    def _check_data(self, node: ast.Attribute) -> None:
        self.add("data-access", node, f"`{ast.unparse(node)}`")

    def _check_in_place_target(self, target: ast.AST, node: ast.AST, how: str) -> None:
        while isinstance(target, ast.Subscript):
            target = target.value
        if isinstance(target, ast.Attribute) and target.attr == "data":
            target = target.value
        if isinstance(target, ast.Name) and target.id in self.parameter_names:
            self.add("parameter-in-place", node, f"{how} on parameter `{target.id}` (a loop over .parameters())")
            return
        chain = self._self_chain(target)
        if not chain:
            return
        kind = self._chain_kind(chain)
        # Buffers updated in place are running statistics (BatchNorm's pattern): ignored by rule.
        # Non-tensor attributes (counters, caches) and unknown ones: not autograd's business, ignored.
        if kind == "parameter":
            self.add("parameter-in-place", node, f"{how} on parameter self.{'.'.join(chain)}")
        elif kind == "tensor":
            self.add("tensor-attribute-in-place", node, f"{how} on tensor attribute self.{'.'.join(chain)}")

    def _follow(self, node: ast.Call) -> None:
        """Remember self.method(...) and user-file functions to scan next."""
        func = node.func
        if isinstance(func, ast.Attribute) and self.owner is not None and isinstance(func.value, ast.Name) \
                and func.value.id == self.self_name:
            try:
                value = inspect.getattr_static(self.owner, func.attr)
            except AttributeError:
                return
            function = _unwrap_function(value)
            if function is not None and func.attr != "forward":
                self.calls_to_follow.append((function, self.owner))
        elif isinstance(func, ast.Name):
            value = self.namespace.get(func.id)
            function = _unwrap_function(value) if isinstance(value, types.FunctionType) else None
            if function is not None:
                self.calls_to_follow.append((function, None))

    # ---- zero-gradient ops that reach a return ----
    def _zero_gradient_calls(self, node: ast.AST) -> list[ast.Call]:
        found = []
        for sub in self._walk_values(node):
            if isinstance(sub, ast.Call):
                func = sub.func
                name = self._torch_name(func)
                if name and TORCH_CALL_RULES[name] == "zero-gradient-op":
                    found.append(sub)
                elif isinstance(func, ast.Attribute) and func.attr in ZERO_GRADIENT_NAMES \
                        and not self._is_torch_namespace(func.value) and self.is_tensor_expr(func.value):
                    found.append(sub)
        return found

    def _walk_values(self, node: ast.AST) -> Iterator[ast.AST]:
        """ast.walk, skipping subscript indices (an argmax used as an index passes gradient to what it indexes)."""
        stack = [node]
        while stack:
            current = stack.pop()
            yield current
            if isinstance(current, ast.Subscript):
                stack.append(current.value)
            else:
                stack.extend(ast.iter_child_nodes(current))

    def _check_zero_gradient_returns(self) -> None:
        sources: dict[str, set[ast.Call]] = {}

        def reaching(expression: ast.AST) -> set[ast.Call]:
            found = set(self._zero_gradient_calls(expression))
            for sub in self._walk_values(expression):
                if isinstance(sub, ast.Name) and sub.id in sources:
                    found |= sources[sub.id]
            return found

        for _ in range(6):
            changed = False
            for node in ast.walk(self.parsed.tree):
                if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                    reached = reaching(node.value)
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        for name in ast.walk(target):
                            if isinstance(name, ast.Name) and reached - sources.get(name.id, set()):
                                sources.setdefault(name.id, set()).update(reached)
                                changed = True
            if not changed:
                break
        reported: set[int] = set()
        for node in ast.walk(self.parsed.tree):
            if isinstance(node, ast.Return) and node.value is not None:
                for call in reaching(node.value):
                    if id(call) not in reported:
                        reported.add(id(call))
                        self.add("zero-gradient-op", call, f"`{ast.unparse(call)}` reaches the return value")


# --------------------------------------------------------------------------------------------
# Scanning the model's classes.

def model_classes(model: nn.Module) -> tuple[dict[type, list[nn.Module]], list[type]]:
    """Instances per class (over every module's MRO) and the classes in first-seen order."""
    instances: dict[type, list[nn.Module]] = {}
    for module in model.modules():
        for cls in type(module).__mro__:
            instances.setdefault(cls, []).append(module)
    return instances, list(instances)


def scan_model(model: nn.Module, scan_libraries: bool = False, follow_depth: int = 2) -> dict[str, Any]:
    """Apply the static rules to the model's own classes. Pure reading: nothing of the model runs."""
    instances, classes = model_classes(model)
    findings: list[Finding] = []
    scanned: list[dict[str, Any]] = []
    ignored: dict[str, list[str]] = {"torch": [], "library": []}
    autograd_functions: dict[type, tuple[str, int]] = {}
    done: set[Any] = set()  # code objects already read (a forward inherited by several classes: once)
    for cls in classes:
        if cls in (object, nn.Module):
            continue
        kind = class_kind(cls)
        name = f"{cls.__module__}.{cls.__qualname__}"
        if kind == "torch" or (kind == "library" and not scan_libraries):
            ignored[kind].append(name)
            continue
        entry: dict[str, Any] = {"name": cls.__qualname__, "module": cls.__module__, "file": None,
                                 "status": "scanned", "reason": None, "functions": []}
        forward = _unwrap_function(cls.__dict__.get("forward"))
        if forward is None:
            entry["status"] = "no-forward"
            entry["reason"] = "defines no forward of its own (its methods are read when a forward calls them)"
            scanned.append(entry)
            continue
        queue: list[tuple[Callable, type | None, int]] = [(forward, cls, 0)]
        while queue:
            function, owner, depth = queue.pop(0)
            code = function.__code__
            if code in done:
                continue
            done.add(code)
            where = function.__qualname__  # Class.method, or a module-level function's name
            function_kind = _function_kind(function)
            if function is not forward and (function_kind == "torch" or (function_kind == "library" and not scan_libraries)):
                continue
            try:
                parsed = parse_function(function)
            except (OSError, TypeError, SyntaxError) as error:
                if function is forward:
                    entry["status"] = "skipped"
                    entry["reason"] = f"source unavailable: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
                    entry["file"] = code.co_filename
                else:
                    entry["functions"].append({"name": where, "line": None, "status": "skipped",
                                               "reason": f"source unavailable: {error}"})
                continue
            if function is forward:
                entry["file"] = parsed.file
            owner_instances = instances.get(owner, []) if owner is not None else []
            scanner = FunctionScanner(parsed, owner, owner_instances, where)
            findings.extend(scanner.scan())
            entry["functions"].append({"name": where, "line": parsed.file_line(parsed.tree), "status": "scanned",
                                       "reason": None})
            for fn_class, line in scanner.autograd_functions.items():
                autograd_functions.setdefault(fn_class, (parsed.file, line))
            if depth < follow_depth:
                queue.extend((f, o, depth + 1) for f, o in scanner.calls_to_follow)
        scanned.append(entry)
    return {"findings": findings, "classes_scanned": scanned,
            "classes_ignored": [{"name": n, "reason": _IGNORE_REASONS[k]} for k, names in ignored.items() for n in names],
            "static_functions": autograd_functions}


_IGNORE_REASONS = {
    "torch": "torch's own class (never scanned)",
    "library": "third-party library class (site-packages); --scan-libraries to read it",
}


# --------------------------------------------------------------------------------------------
# Dynamic checks: one forward, recording custom autograd.Function calls.

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


# --------------------------------------------------------------------------------------------
# The whole analysis.

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


# --------------------------------------------------------------------------------------------
# CLI.

def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_model_arguments(parser)
    cli.add_input_arguments(parser)
    group = parser.add_argument_group("lint")
    group.add_argument("--scan-libraries", action="store_true",
                       help="also read classes from site-packages/dist-packages (Hugging Face, timm, ...); "
                            "torch's own classes are never read")
    group.add_argument("--follow-depth", type=int, default=2, metavar="N",
                       help="how many levels of self.method(...) / helper-function calls to follow from forward (default: 2)")
    group.add_argument("--static-only", action="store_true", help="only read the source; do not run the model")
    cli.add_output_arguments(parser)


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    if args.follow_depth < 0:
        raise UserError(f"--follow-depth must be 0 or more, not {args.follow_depth}")
    inputs = None
    no_inputs_reason = None
    if args.static_only:
        loaded = cli.load_model(args.target, kwargs=cli.parse_kwargs_json(args.kwargs), config=args.config,
                                checkpoint=args.checkpoint, device=args.device)
    else:
        try:
            session = cli.open_session(args)
        except NoInputsError as error:  # the runtime checks are skipped, and the review says why
            loaded = cli.load_model(args.target, kwargs=cli.parse_kwargs_json(args.kwargs), config=args.config,
                                    checkpoint=args.checkpoint, device=args.device)
            no_inputs_reason = f"no inputs ({error})"
        else:
            loaded = session.loaded
            inputs = session.build_inputs()
    data = lint_model(loaded.module, inputs, model_name=loaded.name, scan_libraries=args.scan_libraries,
                      follow_depth=args.follow_depth, no_inputs_reason=no_inputs_reason,
                      run_forward=not args.static_only)
    return {"target": args.target, "device": args.device, **data}


def _relative(path: str | None) -> str:
    if not path:
        return "-"
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def _location(finding: dict[str, Any]) -> str:
    return f"{_relative(finding['file'])}:{finding['line']}" if finding["file"] else finding["where"]


def _summary_line(data: dict[str, Any]) -> str:
    counts = data["counts"]
    scanned = [c for c in data["classes_scanned"] if c["status"] == "scanned"]
    skipped = [c for c in data["classes_scanned"] if c["status"] == "skipped"]
    return (f"{counts['RISK']} RISK, {counts['CAUTION']} CAUTION, {counts['INFO']} INFO; "
            f"{len(scanned)} own class(es) read, {len(skipped)} without source, "
            f"{len(data['classes_ignored'])} library/torch class(es) not read")


def _function_rows(data: dict[str, Any]) -> list[list[str]]:
    return [[f["name"], f["gradcheck"], "-" if f["max_abs_error"] is None else render.sci(f["max_abs_error"]),
             f["reason"] or ""] for f in data["custom_functions"]]


def render_table(data: dict[str, Any], args: argparse.Namespace) -> str:
    parts = [f"Autograd lint of {data['model']} ({data['target']})", _summary_line(data), ""]
    if data["findings"]:
        parts.append(render.table([[f["severity"], f["rule"], _location(f), f["code"] or f["where"]]
                                   for f in data["findings"]], ["severity", "rule", "where", "code"]))
        parts.append("")
        for number, finding in enumerate(data["findings"], 1):
            parts.append(f"{number}. [{finding['severity']}] {finding['rule']} at {_location(finding)} ({finding['where']})")
            parts.append(f"   why: {finding['message']}")
            parts.append(f"   fix: {finding['fix']}")
    else:
        parts.append("No findings.")
    skipped = [c for c in data["classes_scanned"] if c["status"] == "skipped"]
    if skipped:
        parts += ["", "Classes not read:"] + [f"  {c['module']}.{c['name']}: {c['reason']}" for c in skipped]
    if data["custom_functions"]:
        parts += ["", "Custom autograd.Functions (gradcheck, float64)",
                  render.table(_function_rows(data), ["function", "gradcheck", "max abs error", "note"])]
    parts += ["", "Dynamic checks", render.table([[d["check"], d["status"], d["detail"]] for d in data["dynamic"]],
                                                 ["check", "status", "detail"])]
    return "\n".join(parts)


def render_markdown(data: dict[str, Any], args: argparse.Namespace) -> str:
    parts = [f"### Autograd lint: {data['model']}", "", _summary_line(data), ""]
    if data["findings"]:
        parts.append(render.markdown_table(
            [[f["severity"], f"`{f['rule']}`", f"`{_location(f)}`", f"`{f['code']}`" if f["code"] else f["where"],
              f["message"], f["fix"]] for f in data["findings"]],
            ["severity", "rule", "where", "code", "why", "fix"]))
    else:
        parts.append("No findings.")
    if data["custom_functions"]:
        parts += ["", "Custom autograd.Functions (gradcheck in float64):", "",
                  render.markdown_table(_function_rows(data), ["function", "gradcheck", "max abs error", "note"])]
    parts += ["", render.markdown_table([[d["check"], d["status"], d["detail"]] for d in data["dynamic"]],
                                        ["dynamic check", "status", "detail"])]
    return "\n".join(parts)


CAPABILITY = cli.Capability(
    name="lint", version=1,
    description="Autograd lint: read the model's own forward code for graph cuts (.item(), .detach(), no_grad, "
                "in-place parameter updates, tensor-valued branches ...), check devices and dtypes, and gradcheck "
                "custom autograd.Functions.",
    add_arguments=add_arguments, analyse=analyse, render_table=render_table, render_markdown=render_markdown)
