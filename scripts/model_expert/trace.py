"""Shape walk-through: every module call in order with input/output shapes, dtypes, devices, parameters.

`--vary NAME=V1,V2` traces twice with a named input dim at two sizes and marks which output dims
scale with it; tensors with two or more scaling dims (attention scores over a sequence) are flagged
as growing quadratically, and so is every module whose FLOPs grow faster than linearly.
"""

from __future__ import annotations

import argparse
import inspect
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from . import cli, render
from .errors import UserError
from .flops.counting import EXTRA_FLOP_FORMULAS
from .guard import preserved
from .inputs import ModelInputs, describe_value
from .runner import call_model


@dataclass
class _OpenCall:
    index: int
    path: str
    module: nn.Module
    depth: int
    inputs: list[dict[str, Any]]


def _describe_call_inputs(args: tuple, kwargs: dict) -> list[dict[str, Any]]:
    rows = []
    for position, value in enumerate(args):
        rows.extend(describe_value(f"args[{position}]", value))
    for key, value in kwargs.items():
        rows.extend(describe_value(key, value))
    return rows


def _describe_output(value: Any) -> list[dict[str, Any]]:
    if hasattr(value, "to_tuple") and hasattr(value, "keys"):  # Hugging Face ModelOutput
        value = {key: value[key] for key in value.keys()}
    return describe_value("out", value)


class _IntermediateRecorder(TorchDispatchMode):
    """Records the output shape of every aten op, with the innermost module running it."""

    def __init__(self, stack: list[_OpenCall], flop_registry: dict | None = None):
        super().__init__()
        self.stack = stack
        self.flop_registry = flop_registry or {}
        self.ops: list[dict[str, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = [list(t.shape) for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]
        input_shapes = [list(t.shape) for t in torch.utils._pytree.tree_leaves((args, kwargs))
                        if isinstance(t, torch.Tensor)]
        formula = self.flop_registry.get(func.overloadpacket)
        flops = int(formula(*args, **(kwargs or {}), out_val=out)) if formula is not None else 0
        self.ops.append({"op": str(func.overloadpacket.__name__), "module": self.stack[-1].path if self.stack else "",
                         "shapes": shapes, "input_shapes": input_shapes, "flops": flops})
        return out


def trace_calls(model: nn.Module, inputs: ModelInputs, model_name: str, record_ops: bool = False,
                count_flops: bool = False) -> dict[str, Any]:
    """Run forward once with hooks on every module; returns the calls in the order they ran."""
    paths = {id(m): p for p, m in model.named_modules()}
    own_params = {id(m): sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()}
    total_params = {id(m): sum(p.numel() for p in m.parameters()) for m in model.modules()}
    open_calls: list[_OpenCall] = []
    calls: list[dict[str, Any]] = []
    counter = [0]

    def pre_hook(module, args, kwargs):
        path = paths.get(id(module), "?")
        open_calls.append(_OpenCall(index=len(calls), path=path, module=module, depth=len(open_calls),
                                    inputs=_describe_call_inputs(args, kwargs)))
        calls.append({})  # reserve the slot: calls are listed in the order they started
        counter[0] += 1

    def post_hook(module, args, kwargs, output):
        if not open_calls or open_calls[-1].module is not module:
            return
        call = open_calls.pop()
        calls[call.index] = {
            "index": call.index, "module": call.path or "(root)", "type": type(module).__name__, "depth": call.depth,
            "inputs": call.inputs, "outputs": _describe_output(output),
            "own_parameters": own_params.get(id(module), 0), "parameters": total_params.get(id(module), 0),
        }

    handles = []
    for module in model.modules():
        handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
    # flops.EXTRA_FLOP_FORMULAS adds the CPU fused attention kernels FlopCounterMode counts as zero.
    flop_counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) if count_flops else None
    recorder = (_IntermediateRecorder(open_calls, flop_counter.flop_registry if flop_counter else None)
                if record_ops else None)
    try:
        with torch.no_grad() if not torch.is_grad_enabled() else _null():
            if flop_counter is not None:
                flop_counter.__enter__()
            if recorder is not None:
                recorder.__enter__()
            try:
                output = call_model(model, inputs, model_name)
            finally:
                if recorder is not None:
                    recorder.__exit__(None, None, None)
                if flop_counter is not None:
                    flop_counter.__exit__(None, None, None)
    finally:
        for handle in handles:
            handle.remove()
    result: dict[str, Any] = {"calls": [c for c in calls if c], "outputs": _describe_output(output)}
    if recorder is not None:
        result["ops"] = recorder.ops
    if flop_counter is not None:
        per_module = flop_counter.get_flop_counts()
        root = type(model).__name__
        result["module_flops"] = {_flop_path(name, root): sum(v.values()) for name, v in per_module.items()}
    return result


def _flop_path(name: str, root: str) -> str:
    """FlopCounterMode names modules 'Root.child.sub'; ours are 'child.sub' with '(root)' for the model."""
    if name in ("Global", root):
        return "(root)"
    return name[len(root) + 1:] if name.startswith(root + ".") else name


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _parse_vary(text: str) -> tuple[str, int, int]:
    name, sep, values = text.partition("=")
    parts = values.split(",")
    if not sep or not name.isidentifier() or len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"bad --vary '{text}'; write NAME=V1,V2 with a named input dim, e.g. --vary T=64,128")
    first, second = int(parts[0]), int(parts[1])
    if first == second or first <= 0 or second <= 0:
        raise UserError(f"bad --vary '{text}': V1 and V2 must be two different positive sizes")
    return name, first, second


FUSED_ATTENTION_PREFIX = "_scaled_dot_product"  # aten's fused attention kernels (flash, efficient, cuDNN, CPU)


def _dim_label(size_small: int, size_large: int, name: str, small: int, large: int) -> tuple[str, str | None]:
    """How one dim moves when NAME goes small -> large: constant, proportional (k·NAME) or affine (NAME+c)."""
    if size_small == size_large:
        return str(size_small), None
    if size_small * large == size_large * small:
        factor = size_small / small
        label = name if factor == 1 else (f"{factor:g}·{name}")
        return label, "linear"
    if size_large - size_small == large - small:
        offset = size_small - small
        return f"{name}{offset:+d}", "linear"
    return f"{size_small}→{size_large}", "other"


def _compare_shapes(rows_small, rows_large, name, small, large) -> list[dict[str, Any]]:
    compared = []
    for a, b in zip(rows_small, rows_large):
        if len(a["shape"]) != len(b["shape"]):
            compared.append({"name": a["name"], "symbolic": f"{render.shape(a['shape'])}→{render.shape(b['shape'])}",
                             "scaling_dims": [], "growth": "rank changes"})
            continue
        labels, scaling = [], []
        for axis, (x, y) in enumerate(zip(a["shape"], b["shape"])):
            label, kind = _dim_label(x, y, name, small, large)
            labels.append(label)
            if kind:
                scaling.append(axis)
        growth = "constant" if not scaling else ("linear" if len(scaling) == 1 else
                                                  ("quadratic" if len(scaling) == 2 else f"order {len(scaling)}"))
        compared.append({"name": a["name"], "symbolic": "[" + ", ".join(labels) + "]", "scaling_dims": scaling,
                         "growth": growth})
    return compared


def vary_analysis(session: cli.Session, name: str, small: int, large: int) -> dict[str, Any]:
    if name not in session.input_source.resizable_dims and name != "B":
        raise UserError(f"--vary {name}: no input dim is named {name}; named dims are "
                        f"{', '.join(session.input_source.resizable_dims) or 'none'} (name one with --input, e.g. float32[B=8,{name}=128,512])")
    runs = []
    for size in (small, large):
        inputs = session.build_inputs(extra_overrides={name: size})
        runs.append(trace_calls(session.model, inputs, session.loaded.name, record_ops=True, count_flops=True))
    first, second = runs
    same_graph = [c["module"] for c in first["calls"]] == [c["module"] for c in second["calls"]]
    scaling_calls = []
    if same_graph:
        for a, b in zip(first["calls"], second["calls"]):
            outs = _compare_shapes(a["outputs"], b["outputs"], name, small, large)
            if any(o["scaling_dims"] for o in outs):
                scaling_calls.append({"index": a["index"], "module": a["module"], "type": a["type"], "outputs": outs})
    # Intermediates (aten op outputs) with two or more dims that scale: attention scores and the like.
    # Views, copies and masks of the same tensor are grouped per module and symbolic shape.
    # The attention-score FLOPs: ops that make or read such a tensor (Q·Kᵀ, scores·V), per module.
    quadratic_ops: dict[tuple[str, str], set[str]] = defaultdict(set)
    score_flops: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def grows_faster_than_linear(op: str, sa, sb) -> tuple[bool, str]:
        row = _compare_shapes([{"name": op, "shape": sa}], [{"name": op, "shape": sb}], name, small, large)[0]
        return row["growth"] not in ("constant", "linear", "rank changes"), row["symbolic"]

    if len(first["ops"]) == len(second["ops"]):
        for a, b in zip(first["ops"], second["ops"]):
            module = a["module"] or "(root)"
            touches_scores = a["op"].startswith(FUSED_ATTENTION_PREFIX)  # scores made and used inside the kernel
            for sa, sb in zip(a["shapes"], b["shapes"]):
                faster, symbolic = grows_faster_than_linear(a["op"], sa, sb)
                if faster:
                    quadratic_ops[(module, symbolic)].add(a["op"])
                    touches_scores = True
            for sa, sb in zip(a.get("input_shapes", []), b.get("input_shapes", [])):
                touches_scores = touches_scores or (len(sa) == len(sb) and grows_faster_than_linear(a["op"], sa, sb)[0])
            if touches_scores and a.get("flops") and b.get("flops"):
                score_flops[module][0] += a["flops"]
                score_flops[module][1] += b["flops"]
    ratio = large / small
    flop_growth = []
    for module, flops_small in first["module_flops"].items():
        flops_large = second["module_flops"].get(module, 0)
        if flops_small > 0 and flops_large > 0:
            exponent = math.log(flops_large / flops_small) / math.log(ratio)
            row = {"module": module, "flops_small": flops_small, "flops_large": flops_large,
                   "exponent": round(exponent, 3), "superlinear": exponent > 1.05}
            scores_small, scores_large = score_flops.get(module, (0, 0))
            if scores_small and scores_large:  # reported on their own: the total mixes them with linear projections
                row.update({"score_flops_small": scores_small, "score_flops_large": scores_large,
                            "score_exponent": round(math.log(scores_large / scores_small) / math.log(ratio), 3)})
            flop_growth.append(row)
    quadratic_tensors = [{"module": c["module"], "output": o["name"], "symbolic": o["symbolic"]}
                         for c in scaling_calls for o in c["outputs"] if o["growth"] not in ("constant", "linear")]
    return {
        "dim": name, "sizes": [small, large], "same_call_graph": same_graph,
        "scaling_calls": scaling_calls,
        "quadratic_tensors": quadratic_tensors,
        "quadratic_intermediates": [{"module": m, "symbolic": sym, "ops": sorted(ops)}
                                    for (m, sym), ops in sorted(quadratic_ops.items())],
        "flop_growth": flop_growth,
        "superlinear_modules": [g["module"] for g in flop_growth if g["superlinear"]],
    }


# F.dropout / torch.dropout / F.alpha_dropout ... written in a forward: train-mode behaviour no module shows
_FUNCTIONAL_DROPOUT = re.compile(r"\b(?:F|functional|nn\.functional|torch)\.(?:feature_alpha_|alpha_)?dropout(?:[123]d)?\s*\(")


def train_mode_modules(model: nn.Module) -> dict[str, Any]:
    """What model.eval() switches: dropout modules, dropout inside torch modules (nn.RNN/GRU/LSTM between layers,
    nn.MultiheadAttention on the weights), functional dropout written in the user's forward methods (counted in
    their source), and BatchNorm (running statistics instead of the batch's)."""
    dropout, inner, batchnorm, functional = [], [], [], []
    seen: set[type] = set()
    for path, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            dropout.append({"module": path, "type": type(module).__name__, "p": module.p})
        elif isinstance(getattr(module, "dropout", None), float) and module.dropout > 0:
            inner.append({"module": path, "type": type(module).__name__, "p": module.dropout})
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            batchnorm.append({"module": path, "type": type(module).__name__})
        cls = type(module)
        if cls in seen or cls.__module__.startswith("torch."):
            continue
        seen.add(cls)
        try:
            calls = len(_FUNCTIONAL_DROPOUT.findall(inspect.getsource(cls.forward)))
        except (OSError, TypeError):
            continue
        if calls:
            functional.append({"class": cls.__name__, "calls": calls})
    return {"dropout_modules": dropout, "inner_dropout": inner, "functional_dropout": functional,
            "batchnorm_modules": batchnorm}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_model_arguments(parser)
    cli.add_input_arguments(parser)
    parser.add_argument("--max-depth", type=int, default=None, help="list calls nested at most this deep (default: all)")
    parser.add_argument("--vary", metavar="NAME=V1,V2", help="re-trace with a named dim at two sizes; mark what scales")
    cli.add_output_arguments(parser)


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    vary = _parse_vary(args.vary) if args.vary else None
    session = cli.open_session(args)
    with preserved(session.model):
        inputs = session.build_inputs()
        traced = trace_calls(session.model, inputs, session.loaded.name)
        varied = vary_analysis(session, *vary) if vary else None
    calls = traced["calls"]
    if args.max_depth is not None:
        calls = [c for c in calls if c["depth"] <= args.max_depth]
    data = {"target": args.target, "model": type(session.model).__name__, "device": args.device,
            "training": session.model.training, "inputs": inputs.describe(session.model.forward), "outputs": traced["outputs"],
            "calls": calls, "call_count": len(traced["calls"]), "train_mode": train_mode_modules(session.model)}
    if varied is not None:
        data["vary"] = varied
    return data


def _tensors_text(rows: list[dict[str, Any]]) -> str:
    return "; ".join(f"{r['dtype']}{render.shape(r['shape'])}" for r in rows) or "-"


def _symbolic_for(data: dict[str, Any]) -> dict[int, str]:
    symbolic = {}
    for call in data.get("vary", {}).get("scaling_calls", []):
        symbolic[call["index"]] = "; ".join(o["symbolic"] + (" (quadratic)" if o["growth"] == "quadratic" else "")
                                            for o in call["outputs"])
    return symbolic


def _call_rows(data: dict[str, Any]) -> list[list[str]]:
    symbolic = _symbolic_for(data)
    rows = []
    for call in data["calls"]:
        row = [str(call["index"]), "  " * call["depth"] + call["module"], call["type"], _tensors_text(call["inputs"]),
               _tensors_text(call["outputs"]), render.count(call["own_parameters"])]
        if "vary" in data:
            row.append(symbolic.get(call["index"], ""))
        rows.append(row)
    return rows


def _headers(data: dict[str, Any]) -> list[str]:
    headers = ["#", "module", "type", "inputs", "outputs", "own params"]
    if "vary" in data:
        headers.append(f"scales with {data['vary']['dim']}")
    return headers


def _vary_lines(data: dict[str, Any]) -> list[str]:
    vary = data.get("vary")
    if not vary:
        return []
    small, large = vary["sizes"]
    lines = [f"Varying {vary['dim']}: {small} -> {large}"]
    if not vary["same_call_graph"]:
        lines.append(f"  the sequence of module calls changes with {vary['dim']}; per-call comparison skipped")
    for tensor in vary["quadratic_tensors"]:
        lines.append(f"  QUADRATIC output of {tensor['module']}: {tensor['output']} {tensor['symbolic']}")
    for item in vary["quadratic_intermediates"]:
        lines.append(f"  QUADRATIC intermediate in {item['module']}: {item['symbolic']} "
                     f"({len(item['ops'])} ops: {', '.join(item['ops'][:4])}{', ...' if len(item['ops']) > 4 else ''})")
    for growth in vary["flop_growth"]:
        if growth["superlinear"]:
            lines.append(f"  FLOPs of {growth['module']} grow as {vary['dim']}^{growth['exponent']:.2f}"
                         + (f"; its attention-score FLOPs as {vary['dim']}^{growth['score_exponent']:.2f}"
                            if "score_exponent" in growth else ""))
    return lines


def render_table(data: dict[str, Any], args: argparse.Namespace) -> str:
    header = [f"Trace of {data['model']} ({data['target']}), {data['call_count']} module calls, "
              f"{'train' if data['training'] else 'eval'} mode, device {data['device']}",
              f"inputs:  {', '.join(r['name'] + ' ' + r['dtype'] + render.shape(r['shape']) for r in data['inputs'])}",
              f"outputs: {', '.join(r['name'] + ' ' + r['dtype'] + render.shape(r['shape']) for r in data['outputs'])}", ""]
    return "\n".join(header + [render.table(_call_rows(data), _headers(data))] + ([""] + _vary_lines(data) if "vary" in data else []))


def render_markdown(data: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [[r[0], f"`{r[1].strip()}`", r[2], f"`{r[3]}`", f"`{r[4]}`", *r[5:]] for r in _call_rows(data)]
    parts = [f"### Shape trace: {data['model']}", "", render.markdown_table(rows, _headers(data))]
    if "vary" in data:
        parts += [""] + [f"- {line.strip()}" for line in _vary_lines(data)]
    return "\n".join(parts)


CAPABILITY = cli.Capability(
    name="trace", version=1,
    description="Walk the forward pass: every module call in order with shapes, dtypes, devices; --vary finds what scales.",
    add_arguments=add_arguments, analyse=analyse, render_table=render_table, render_markdown=render_markdown)
