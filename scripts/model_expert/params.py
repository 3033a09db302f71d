"""Parameter counts: per-module tree, total/trainable/frozen, shared weights once, buffers, bytes by dtype."""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

from torch import nn
from torch.nn.utils import prune

from . import cli, render
from .guard import preserved
from .inputs import DTYPE_NAMES


def _dtype_name(dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def count_parameters(model: nn.Module, depth: int = 2, top_k: int = 10) -> dict[str, Any]:
    """Counts with every tensor counted once, however many modules or names share it."""
    # All names of every parameter (tied weights have several), first name = owner.
    names_by_id: dict[int, list[str]] = defaultdict(list)
    tensor_by_id: dict[int, nn.Parameter] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_by_id[id(parameter)].append(name)
        tensor_by_id[id(parameter)] = parameter
    owner_name = {pid: names[0] for pid, names in names_by_id.items()}

    total = trainable = 0
    bytes_by_dtype: dict[str, int] = defaultdict(int)
    for pid, parameter in tensor_by_id.items():
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
        bytes_by_dtype[_dtype_name(parameter.dtype)] += parameter.numel() * parameter.element_size()

    shared = [{"parameter": names[0], "shape": list(tensor_by_id[pid].shape), "count": tensor_by_id[pid].numel(),
               "shared_with": names[1:]} for pid, names in names_by_id.items() if len(names) > 1]

    buffers_seen: dict[int, Any] = {}
    for name, buffer in model.named_buffers(remove_duplicate=False):
        buffers_seen.setdefault(id(buffer), (name, buffer))
    buffer_rows = [{"name": name, "shape": list(b.shape), "dtype": _dtype_name(b.dtype), "count": b.numel(),
                    "bytes": b.numel() * b.element_size()} for name, b in buffers_seen.values()]

    modules = []
    for path, module in model.named_modules():
        level = 0 if path == "" else path.count(".") + 1
        if level > depth:
            continue
        subtree_ids = {id(p) for p in module.parameters()}
        own = [p for n, p in module.named_parameters(recurse=False)]
        modules.append({
            "name": path or "(root)",
            "type": type(module).__name__,
            "depth": level,
            "parameters": sum(tensor_by_id[i].numel() for i in subtree_ids),
            "trainable": sum(tensor_by_id[i].numel() for i in subtree_ids if tensor_by_id[i].requires_grad),
            "own_parameters": sum(p.numel() for p in own),
        })

    # Heaviest layers: modules that own parameters directly, counting each tensor at its first owner.
    owned_by_module: dict[str, int] = defaultdict(int)
    module_types: dict[str, str] = {}
    for path, module in model.named_modules():
        module_types[path] = type(module).__name__
    for pid, name in owner_name.items():
        owned_by_module[name.rpartition(".")[0]] += tensor_by_id[pid].numel()
    top = sorted(owned_by_module.items(), key=lambda item: (-item[1], item[0]))[:top_k]
    top_layers = [{"name": path or "(root)", "type": module_types.get(path, "?"), "parameters": n,
                   "percent": 100.0 * n / total if total else 0.0} for path, n in top]

    return {
        "model": type(model).__name__,
        "total": total,
        "trainable": trainable,
        "frozen": total - trainable,
        "parameter_bytes": sum(bytes_by_dtype.values()),
        "bytes_by_dtype": dict(sorted(bytes_by_dtype.items())),
        "shared": shared,
        "buffers": {"count": sum(r["count"] for r in buffer_rows), "bytes": sum(r["bytes"] for r in buffer_rows),
                    "tensors": buffer_rows},
        "depth": depth,
        "modules": modules,
        "top_layers": top_layers,
    }


def pruning_masks(model: nn.Module) -> dict[str, Any] | None:
    """Weights torch.nn.utils.prune's masks zero: `weight_orig` is stored whole (and counted in the total);
    the forward uses weight_orig * weight_mask. None when nothing is pruned; counts None on meta (no values)."""
    tensors = []
    for path, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if not isinstance(hook, prune.BasePruningMethod):
                continue
            mask = getattr(module, f"{hook._tensor_name}_mask")
            name = f"{path}.{hook._tensor_name}" if path else hook._tensor_name
            masked = None if mask.device.type == "meta" else int((mask == 0).sum())
            tensors.append({"parameter": f"{name}_orig", "count": mask.numel(), "masked": masked})
    if not tensors:
        return None
    known = all(t["masked"] is not None for t in tensors)
    return {"tensors": tensors, "count": sum(t["count"] for t in tensors),
            "masked": sum(t["masked"] for t in tensors) if known else None}


INIT_METHODS = ("_init_weights", "init_weights", "initialize_weights", "reset_parameters", "_reset_parameters")


def own_initialisers(model: nn.Module) -> list[str]:
    """'Class.method' for the initialisers the model's classes (not torch's) define: per module, those of the
    most derived class that defines one."""
    found: list[str] = []
    for module in model.modules():
        for cls in type(module).__mro__:
            if (cls.__module__ or "").split(".")[0] in ("torch", "builtins"):
                continue
            names = [f"{cls.__name__}.{name}" for name in INIT_METHODS if name in vars(cls)]
            if names:
                found += [name for name in names if name not in found]
                break
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_model_arguments(parser)
    cli.add_input_arguments(parser)  # used only to materialise lazy modules (one forward)
    parser.add_argument("--depth", type=int, default=2, help="module tree depth to list (default: 2)")
    parser.add_argument("--top", type=int, default=10, help="how many parameter-heavy layers to list (default: 10)")
    cli.add_output_arguments(parser)


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    if args.depth < 0 or args.top < 0:
        raise cli.UserError("--depth and --top must be 0 or more")
    loaded = cli.open_session(args, inputs_required=False).loaded
    with preserved(loaded.module):
        data = count_parameters(loaded.module, depth=args.depth, top_k=args.top)
        data["pruning"] = pruning_masks(loaded.module)
        data["own_initialisers"] = own_initialisers(loaded.module)
    return {"target": args.target, "device": args.device, **data}


def _summary_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = [["Total parameters", render.count(data["total"])],
            ["Trainable", render.count(data["trainable"])],
            ["Frozen", render.count(data["frozen"])],
            ["Parameter memory", f"{render.count(data['parameter_bytes'])} bytes ({render.mib(data['parameter_bytes'])})"]]
    for dtype, size in data["bytes_by_dtype"].items():
        rows.append([f"  {dtype}", f"{render.count(size)} bytes"])
    pruning = data.get("pruning")
    if pruning:
        if pruning["masked"] is None:
            rows.append(["Zeroed by pruning masks", "unknown on meta (the masks hold no values; use --device cpu)"])
        else:
            rows.append(["Zeroed by pruning masks", f"{render.count(pruning['masked'])} of {render.count(pruning['count'])} "
                                                    f"pruned weights ({len(pruning['tensors'])} tensors)"])
            rows.append(["Total without them", f"{render.count(data['total'] - pruning['masked'])} (what torchinfo counts)"])
    rows.append(["Buffers", f"{render.count(data['buffers']['count'])} values, {render.count(data['buffers']['bytes'])} bytes"])
    return rows


def _module_rows(data: dict[str, Any]) -> list[list[str]]:
    return [[m["name"], m["type"],  # the full path: tabulate strips indentation, so children would read as siblings
             render.count(m["parameters"]), render.count(m["trainable"])] for m in data["modules"]]


def render_table(data: dict[str, Any], args: argparse.Namespace) -> str:
    parts = [f"Parameters of {data['model']} ({data['target']})", "",
             render.table(_summary_rows(data), []), "",
             render.table(_module_rows(data), ["module", "type", "parameters", "trainable"]), "",
             f"Top {len(data['top_layers'])} layers by parameters",
             render.table([[t["name"], t["type"], render.count(t["parameters"]), f"{t['percent']:.1f}%"]
                           for t in data["top_layers"]], ["layer", "type", "parameters", "share"])]
    if data["shared"]:
        parts += ["", "Shared (tied) parameters, counted once",
                  render.table([[s["parameter"], render.shape(s["shape"]), render.count(s["count"]), ", ".join(s["shared_with"])]
                                for s in data["shared"]], ["parameter", "shape", "parameters", "shared with"])]
    return "\n".join(parts)


def render_markdown(data: dict[str, Any], args: argparse.Namespace) -> str:
    parts = [f"### Parameters: {data['model']}", "",
             render.markdown_table(_summary_rows(data), ["quantity", "value"]), "",
             render.markdown_table([[f"`{m['name']}`", m["type"], render.count(m["parameters"]), render.count(m["trainable"])]
                                    for m in data["modules"]], ["module", "type", "parameters", "trainable"])]
    if data["shared"]:
        parts += ["", "Shared (tied) parameters, counted once:", ""] + [
            f"- `{s['parameter']}` {render.shape(s['shape'])} shared with {', '.join('`' + n + '`' for n in s['shared_with'])}"
            for s in data["shared"]]
    return "\n".join(parts)


CAPABILITY = cli.Capability(
    name="params", version=1,
    description="Count parameters: per-module tree, trainable/frozen, tied weights once, buffers, bytes by dtype.",
    add_arguments=add_arguments, analyse=analyse, render_table=render_table, render_markdown=render_markdown)
