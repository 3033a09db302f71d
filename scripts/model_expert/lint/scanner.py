"""The AST scanner: each of the model's own classes' forward, and what it calls, read for operations
that cut or corrupt the autograd graph (rules.py says which)."""

from __future__ import annotations

import ast
import builtins
import inspect
import linecache
import types
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.autograd.function import Function

from .rules import METADATA_ATTRIBUTES, METADATA_METHODS, METADATA_TORCH_FUNCTIONS, METHOD_RULES, NON_TENSOR_ANNOTATIONS, NOT_VALUE_MUTATIONS, PYTHON_NUMBER_BUILTINS, TENSOR_VALUE_ATTRIBUTES, TORCH_CALL_RULES, VALUE_BUILTINS, VALUE_REDUCTIONS, ZERO_GRADIENT_NAMES, _MISSING, _TORCH_OBJECTS
from .sources import Finding, ParsedFunction, _closure_values, _dotted, _function_kind, _unwrap_function, class_kind, parse_function


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
