"""Is each padding mask honoured, the way the caller means it, whatever the amount of padding?

Three measurements per mask:
- which convention the model honours: `true_is_padding` (torch's key_padding_mask) when the output is blind to
  the data at the positions True/1 marks, `false_is_padding` (Hugging Face's attention_mask, 1 = keep) when it
  is blind to the data at the positions False/0 marks. A reading counts only when it is not hollow: the output
  must move when the data at the kept positions changes, and be finite there (NaN compares as changed);
- which convention the caller means: `--mask NAME=...`, else the caller's own mask values (padding sits where
  each row's length ends), else the name (`attention_mask` keeps with 1, `*padding_mask` pads with True).
  The two differing is an inverted mask;
- padding-amount invariance: the same real items with no, some and much padding (random data under the
  mask) must give every sample the same output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..errors import UserError
from .core import Comparison, Harness, can_vary, compare, finding, fresh_copies, fresh_like, replaced
from .lengths import MAX_INPUT_ELEMENTS

CONVENTIONS = ("true_is_padding", "false_is_padding")
# What a mask of each dtype most likely means when nothing else tells (keyed by "is bool").
USUAL_CONVENTION = {True: "true_is_padding", False: "false_is_padding"}
SOURCES = ("--mask", "data", "name")

# Inputs that are training targets, not data: a loss reads them at padded positions by design
# (Hugging Face expects -100 there), so a mask does not cover them.
TARGET_INPUT_NAMES = {"labels", "label", "targets", "target"}
# A loss output (Hugging Face's output.loss) averages over positions, padded ones included unless the
# labels mark them -100: that is the labels' contract, not the mask's, so it is not compared.
LOSS_SUFFIX = "loss"


def parse_declared(declared: list[str]) -> dict[str, str | None]:
    """--mask NAME or NAME=true_is_padding|false_is_padding -> {name: convention or None}."""
    parsed: dict[str, str | None] = {}
    for text in declared:
        name, _, convention = text.partition("=")
        if convention and convention not in CONVENTIONS:
            raise UserError(f"--mask {text}: the convention must be true_is_padding or false_is_padding, "
                            f"not {convention!r}")
        parsed[name] = convention or parsed.get(name)
    return parsed


def name_convention(name: str) -> str | None:
    """What a mask's name says: *padding_mask (torch's key_padding_mask) pads with True, attention_mask keeps with 1."""
    low = name.lower()
    if low.endswith("padding_mask") or low.endswith("pad_mask"):
        return "true_is_padding"
    if low.endswith("attention_mask") or low.endswith("keep_mask") or low.endswith("valid_mask"):
        return "false_is_padding"
    return None


def _is_zero_one(tensor: torch.Tensor) -> bool:
    return tensor.numel() > 0 and bool(((tensor == 0) | (tensor == 1)).all())


def is_mask(name: str, tensor: torch.Tensor, declared: set[str], from_spec: bool = False) -> bool:
    """Bool tensors, the inputs --mask declares, and integer or floating 0/1 tensors named *mask* (a spec's
    drawn values mean nothing, so there the name decides)."""
    if name in declared or tensor.dtype == torch.bool:
        return True
    if "mask" not in name.lower() or tensor.dim() == 0:
        return False
    return from_spec or _is_zero_one(tensor)


def find_masks(harness: Harness, declared: list[str]) -> list[str]:
    names = set(parse_declared(declared))
    unknown = [name for name in names if name not in harness.tensors]
    if unknown:
        raise UserError(f"--mask {', '.join(unknown)} is not an input; the tensor inputs are "
                        f"{', '.join(harness.tensors) or 'none'}")
    return [name for name, tensor in harness.tensors.items() if is_mask(name, tensor, names, harness.from_spec)]


def covered_inputs(harness: Harness, mask_name: str, masks: list[str]) -> list[str]:
    """Data inputs whose leading dims are the mask's dims: by the dims' names where all are named, else by shape."""
    mask = harness.tensors[mask_name]
    mask_axes = harness.axis_names(mask_name)
    covered = []
    for name, tensor in harness.tensors.items():
        if name in masks or name in TARGET_INPUT_NAMES or tensor.dim() < mask.dim() or mask.dim() == 0:
            continue
        if all(mask_axes):
            matches = harness.axis_names(name)[:mask.dim()] == mask_axes
        else:
            matches = tuple(tensor.shape[:mask.dim()]) == tuple(mask.shape)
        if matches:
            covered.append(name)
    return covered


def made_up_padding(shape: torch.Size, side: str = "right") -> torch.Tensor:
    """True at padded positions: row i (leading dims flattened) keeps a run of varied length, each >= 1,
    at the start (padding on the right) or at the end (padding on the left)."""
    length = shape[-1]
    rows = 1
    for size in shape[:-1]:
        rows *= size
    if rows == 1:
        kept = torch.tensor([max(1, (length + 1) // 2)])
    else:
        kept = torch.tensor([max(1, round(length * (i + 1) / (rows + 1))) for i in range(rows)])
    padded = torch.arange(length).unsqueeze(0) >= kept.unsqueeze(1)
    if side == "left":
        padded = padded.flip(-1)
    return padded.reshape(shape)


def data_convention(mask: torch.Tensor) -> str | None:
    """The convention the caller's own mask values show, or None. Padding sits where a row's length ends: a row
    that is one run of each value ends in padding; a row that is all one value (a full-length sample) is all kept,
    which also tells left padding (full rows 1, rows ending in 1) from right padding."""
    if mask.dim() == 0 or mask.shape[-1] < 2:
        return None
    rows = mask.reshape(-1, mask.shape[-1]).bool()
    runs = (rows[:, 1:] != rows[:, :-1]).sum(dim=1)
    full = runs == 0
    mixed = runs == 1
    if bool((runs > 1).any()) or not bool(mixed.any()):
        return None  # scattered marks (not lengths) or no row with padding: the values tell nothing
    if bool(full.any()):
        kept_values = rows[full][:, 0].unique()
        if kept_values.numel() == 1:
            return "false_is_padding" if bool(kept_values[0]) else "true_is_padding"
    tails = rows[mixed][:, -1].unique()
    if tails.numel() == 1:
        return "true_is_padding" if bool(tails[0]) else "false_is_padding"
    return None


def caller_convention(harness: Harness, mask_name: str, declared: dict[str, str | None]) -> tuple[str | None, str | None]:
    """(convention, source): --mask NAME=..., else the caller's own mask values (not a spec's drawn ones), else the name."""
    if declared.get(mask_name):
        return declared[mask_name], "--mask"
    if not harness.from_spec:
        found = data_convention(harness.tensors[mask_name])
        if found:
            return found, "data"
    found = name_convention(mask_name)
    return (found, "name") if found else (None, None)


def _encode(padded: torch.Tensor, convention: str, like: torch.Tensor) -> torch.Tensor:
    marks = padded if convention == "true_is_padding" else ~padded
    return marks.to(dtype=like.dtype, device=like.device)


def hypotheses(harness: Harness, mask_name: str,
               side: str = "right") -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], bool]:
    """convention -> (mask tensor, padded positions), and whether the padding was made up here.

    A caller's mask that pads something is used as given, read both ways; a spec's mask is drawn, not
    meaningful, so it and any mask that pads nothing get lengths-based padding instead."""
    mask = harness.tensors[mask_name]
    marks = mask.bool()
    pads_something = bool(marks.any()) and not bool(marks.all())
    if pads_something and not harness.from_spec:
        return {"true_is_padding": (mask, marks), "false_is_padding": (mask, ~marks)}, False
    padded = made_up_padding(mask.shape, side).to(mask.device)
    return {convention: (_encode(padded, convention, mask), padded) for convention in CONVENTIONS}, True


def _padded_everywhere(padded: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast the mask's positions over the data's trailing dims."""
    view = padded.reshape(tuple(padded.shape) + (1,) * (like.dim() - padded.dim()))
    return view.expand_as(like)


def outputs_over_positions(harness: Harness, mask_name: str,
                           outputs: list[tuple[str, torch.Tensor]]) -> dict[str, list[list[int]]]:
    """Outputs that hold a value per masked position -> for each mask axis, the output axes that carry it.

    last_hidden_state [B, T, H] under a [B, T] mask carries T once; attention weights [B, heads, T, T] carry it
    twice (queries and keys). Their padded positions are garbage by design (a padded query sees what it likes)
    and are not compared: only real queries x real keys are. An axis carries a mask axis when it grows with that
    axis's named dim; without names, the output's leading dims must be the mask's shape."""
    mask = harness.tensors[mask_name]
    names = harness.axis_names(mask_name)
    carried: dict[str, list[list[int]]] = {}
    for name, tensor in outputs:
        axes: list[list[int]] | None = []
        for dim_name in names:
            grown = harness.output_axes(dim_name) if dim_name else None
            found = (grown or {}).get(name, [])
            if not found:
                axes = None
                break
            axes.append(list(found))
        if axes is None and tuple(tensor.shape[:mask.dim()]) == tuple(mask.shape):
            axes = [[axis] for axis in range(mask.dim())]
        if axes and len({a for group in axes for a in group}) == sum(len(group) for group in axes):
            carried[name] = axes
    return carried


def _padded_over_output(tensor: torch.Tensor, axes: list[list[int]], padded: torch.Tensor) -> torch.Tensor:
    """True where any position axis of the output sits at a padded position (a padded query or a padded key)."""
    result = torch.zeros(tensor.shape, dtype=torch.bool, device=tensor.device)
    batch_axes = [group[0] for group in axes[:-1]]
    for position_axis in axes[-1]:
        order = batch_axes + [position_axis]
        view = [1] * tensor.dim()
        for mask_axis, output_axis in enumerate(order):
            view[output_axis] = padded.shape[mask_axis]
        permuted = padded.permute(*sorted(range(len(order)), key=lambda i: order[i]))
        result = result | permuted.reshape(view).expand_as(tensor)
    return result


def _kept_positions(outputs: list[tuple[str, torch.Tensor]], per_position: dict[str, list[list[int]]],
                    padded: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    kept = []
    for name, tensor in outputs:
        if name.endswith(LOSS_SUFFIX):
            continue
        if name in per_position:
            tensor = torch.where(_padded_over_output(tensor, per_position[name], padded), torch.zeros_like(tensor),
                                 tensor)
        kept.append((name, tensor))
    return kept


def _data_changed(harness: Harness, variable: list[str], where: torch.Tensor, generator: torch.Generator,
                  base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: torch.where(_padded_everywhere(where, harness.tensors[name]),
                              fresh_like(harness.tensors[name], generator), harness.tensors[name])
            for name in variable} | base


def _reading(harness: Harness, mask_name: str, variable: list[str], mask_tensor: torch.Tensor, padded: torch.Tensor,
             per_position: dict[str, list[list[int]]], seed: int) -> dict[str, Any]:
    """One convention's reading: does changing the data at its padded positions move the kept outputs (leak),
    does changing the data at its kept positions move them (live), are they finite."""
    generator = torch.Generator().manual_seed(seed)
    base = {mask_name: mask_tensor}
    inputs = replaced(harness.inputs, harness.locations, base)
    reference = _kept_positions(harness.run(inputs), per_position, padded)
    leak = compare(reference, _kept_positions(harness.run(replaced(
        inputs, harness.locations, _data_changed(harness, variable, padded, generator, base))), per_position, padded),
        nan_equal=False)
    live = compare(reference, _kept_positions(harness.run(replaced(
        inputs, harness.locations, _data_changed(harness, variable, ~padded, generator, base))), per_position, padded),
        nan_equal=False)
    nonfinite = [name for name, tensor in reference if not bool(torch.isfinite(tensor).all())]
    hollow = live.within_tolerance and not nonfinite
    return {"leak": leak, "live": live, "nonfinite": nonfinite, "hollow": hollow,
            "honoured": leak.within_tolerance and not hollow and not nonfinite}


def _readings(harness, mask_name, variable, options, per_position, seed) -> dict[str, dict[str, Any]]:
    return {convention: _reading(harness, mask_name, variable, mask_tensor, padded, per_position, seed)
            for convention, (mask_tensor, padded) in options.items()}


# ---- padding-amount invariance ---------------------------------------------------------------------

def _resized(tensor: torch.Tensor, axis: int, real: list[torch.Tensor], length: int,
             generator: torch.Generator) -> torch.Tensor:
    """TENSOR with its axis AXIS (after the rows' leading dims) rebuilt at LENGTH: row r's real items first, in
    order, then fresh values of the same kind."""
    rows_shape = tuple(tensor.shape[:axis])
    flat = tensor.reshape((-1,) + tuple(tensor.shape[axis:]))
    out = fresh_like(tensor, generator, (flat.shape[0], length) + tuple(flat.shape[2:]))
    for row, kept in enumerate(real):
        out[row, :kept.numel()] = flat[row, kept]
    return out.reshape(rows_shape + (length,) + tuple(tensor.shape[axis + 1:]))


def _layout(harness: Harness, mask_name: str, resized: list[str], mask_tensor: torch.Tensor, padded: torch.Tensor,
            convention: str, length: int, seed: int):
    """The inputs with the same real items of every row, right-padded to LENGTH."""
    axis = mask_tensor.dim() - 1
    rows = padded.reshape(-1, padded.shape[-1])
    real = [torch.nonzero(~row).flatten() for row in rows]
    generator = torch.Generator().manual_seed(seed)
    new_padded = (torch.arange(length).unsqueeze(0) >= torch.tensor([k.numel() for k in real]).unsqueeze(1))
    new_padded = new_padded.reshape(tuple(padded.shape[:-1]) + (length,)).to(padded.device)
    new = {mask_name: _encode(new_padded, convention, mask_tensor)}
    for name in resized:
        new[name] = _resized(harness.tensors[name], axis, real, length, generator)
    return replaced(harness.inputs, harness.locations, new), new_padded


def _position_axes(small: torch.Tensor, large: torch.Tensor, small_length: int, large_length: int) -> list[int] | None:
    """The output axes that follow the padded length (size SMALL_LENGTH in one run, LARGE_LENGTH in the other);
    None when the shapes differ otherwise (the output cannot be compared position by position)."""
    if small.dim() != large.dim():
        return None
    axes = []
    for axis, (a, b) in enumerate(zip(small.shape, large.shape)):
        if a == b:
            continue
        if a == small_length and b == large_length:
            axes.append(axis)
        else:
            return None
    return axes


def _common(tensor: torch.Tensor, axes: list[int], length: int) -> torch.Tensor:
    for axis in axes:
        tensor = tensor.narrow(axis, 0, length)
    return tensor


def padding_invariance(harness: Harness, mask_name: str, data_inputs: list[str], mask_tensor: torch.Tensor,
                       padded: torch.Tensor, convention: str, seed: int = 0) -> dict[str, Any]:
    """Run the same real items of every row with no, some and much padding; compare every sample's output."""
    mask = harness.tensors[mask_name]
    length_name = harness.axis_names(mask_name)[-1]
    resized = list(data_inputs) + [name for name in harness.tensors if name in TARGET_INPUT_NAMES
                                   and tuple(harness.tensors[name].shape[:mask.dim()]) == tuple(mask.shape)]
    if length_name:
        others = [name for name in harness.dims[length_name].axes if name != mask_name and name not in resized]
        if others or any(len(axes) > 1 for name, axes in harness.dims[length_name].axes.items() if name != mask_name):
            return {"padding_invariant": None, "reason": f"`{length_name}` is also an axis of "
                    f"{', '.join(f'`{n}`' for n in others) or 'a square input'}, which cannot be padded here"}
    rows = padded.reshape(-1, padded.shape[-1])
    counts = [max(int((~row).sum()), 0) for row in rows]
    if min(counts) == 0:
        return {"padding_invariant": None, "reason": "a row has no real item"}
    longest, given = max(counts), mask.shape[-1]
    elements = sum(harness.tensors[n].numel() for n in resized + [mask_name])
    much = 4 * given if elements * 4 <= MAX_INPUT_ELEMENTS else 2 * given
    lengths = sorted({longest, given, much})
    runs = {}
    for length in lengths:
        inputs, new_padded = _layout(harness, mask_name, resized, mask_tensor, padded, convention, length, seed + length)
        outputs, error = harness.try_run(inputs)
        if outputs is None:
            return {"padding_invariant": None, "reason": f"the forward fails with {length} positions"}
        runs[length] = dict((n, t) for n, t in outputs if not n.endswith(LOSS_SUFFIX))
    shortest = min(counts)
    worst: dict[str, float] = {}
    moved: list[str] = []
    compared = []
    reference = runs[lengths[0]]
    for name, tensor in reference.items():
        for length in lengths[1:]:
            other = runs[length].get(name)
            if other is None:
                break
            axes = _position_axes(tensor, other, lengths[0], length)
            if axes is None:
                break
            a, b = _common(tensor, axes, shortest), _common(other, axes, shortest)
            change = compare([(name, a)], [(name, b)], nan_equal=False)
            worst[name] = max(worst.get(name, 0.0), change.max_abs_change)
            if not change.within_tolerance and name not in moved:
                moved.append(name)
        else:
            compared.append(name)
    result: dict[str, Any] = {"padding_invariant": not moved if compared else None, "padded_lengths": lengths,
                              "real_items": counts, "outputs_compared": compared,
                              "max_abs_change": max((worst[n] for n in compared), default=None)}
    if moved:
        name = max(moved, key=lambda n: worst[n])
        result["output"] = name
        result["example"] = _example(runs, name, lengths, counts, mask)
    return result


def _example(runs: dict[int, dict[str, torch.Tensor]], name: str, lengths: list[int], counts: list[int],
             mask: torch.Tensor) -> dict[str, Any] | None:
    """The row that moved most, with the least and the most padding, when the output is one number per row."""
    low, high = runs[lengths[0]][name], runs[lengths[-1]][name]
    rows = len(counts)
    if low.numel() != rows or high.numel() != rows:
        return None
    moved = (low.flatten().double() - high.flatten().double()).abs().nan_to_num(float("inf"))
    row = int(moved.argmax())
    return {"real_items": counts[row], "less_padding": lengths[0] - counts[row], "value_less": float(low.flatten()[row]),
            "more_padding": lengths[-1] - counts[row], "value_more": float(high.flatten()[row])}


# ---- a sample that is all padding ------------------------------------------------------------------

class _FirstNonFinite(TorchDispatchMode):
    """Records the first op whose output holds NaN while its inputs held none."""

    def __init__(self) -> None:
        super().__init__()
        self.op: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.op is None:
            try:
                if _has_nonfinite(out) and not _has_nonfinite((args, kwargs)):
                    self.op = func.overloadpacket.__name__
            except Exception:  # nested or exotic tensors: their values cannot be read here
                pass
        return out


def _has_nonfinite(value: Any) -> bool:
    """Any NaN (infinities are how additive masks say 'blocked', so they do not count)."""
    return any(isinstance(t, torch.Tensor) and t.is_floating_point() and not t.is_nested and t.numel()
               and bool(torch.isnan(t).any()) for t in tree_leaves(value))


ATTENTION_OPS = ("softmax", "attention", "multi_head", "transformer_encoder", "transformer_decoder")


def _all_padded_fix(op: str | None) -> str:
    if op and any(word in op for word in ATTENTION_OPS):
        return ("drop empty samples before the model, or leave one position of an empty sample unmasked for the "
                "attention and zero that sample's output after it")
    return ("drop empty samples before the model, or divide the pooled sum by the kept count clamped to at least "
            "one (an empty sample then pools to zero)")


def nonfinite_cause(op: str | None) -> str:
    """Words for the op that made the first NaN."""
    if op is None:
        return "its cause was not located"
    if any(word in op for word in ATTENTION_OPS):
        return (f"attention over a row whose keys are all masked (`{op}`: a softmax over no key divides zero by "
                "zero; torch's fused attention kernels return NaN there)")
    if op.startswith("div") or op in ("mean", "true_divide", "reciprocal"):
        return f"a division by a zero count (`{op}`): the pooling divides by the number of kept items, and there are none"
    if op.startswith("log"):
        return f"the log of zero (`{op}`)"
    return f"first produced by `{op}`"


def all_padded(harness: Harness, mask_name: str, mask_tensor: torch.Tensor, convention: str) -> dict[str, Any]:
    """Run with the first sample's positions all padding: 'finite', 'nan' or 'error', which output, and the cause."""
    mask = mask_tensor.clone()
    first_row = (0,) * (mask.dim() - 1)
    mask[first_row] = _encode(torch.ones(mask.shape[-1], dtype=torch.bool), convention, mask)
    inputs = replaced(harness.inputs, harness.locations, {mask_name: mask})
    outputs, error = harness.try_run(inputs)
    if outputs is None:
        return {"all_padded": "error", "all_padded_error": error}
    bad = [name for name, tensor in outputs if not bool(torch.isfinite(tensor).all())]
    if not bad:
        return {"all_padded": "finite", "all_padded_error": None}
    op = _first_nonfinite_op(harness, inputs, hooked=False) or _first_nonfinite_op(harness, inputs, hooked=True)
    return {"all_padded": "nan", "all_padded_error": None, "all_padded_output": bad[0],
            "all_padded_op": op, "all_padded_cause": nonfinite_cause(op)}


def _first_nonfinite_op(harness: Harness, inputs, hooked: bool) -> str | None:
    """The first op that made a NaN/inf from finite inputs. torch's fused fast paths (nested tensors) cannot be
    read op by op; with HOOKED, no-op forward hooks switch them off so the same computation runs op by op."""
    recorder = _FirstNonFinite()
    handles = [module.register_forward_hook(lambda *_: None) for module in harness.model.modules()] if hooked else []
    harness.model.eval()
    copies = fresh_copies(inputs)
    try:
        with torch.no_grad(), recorder:
            harness.model(*copies.args, **copies.kwargs)
    except Exception:  # an op the recorder cannot follow: no cause from this run
        return None
    finally:
        for handle in handles:
            handle.remove()
    return recorder.op


# ---- the check -------------------------------------------------------------------------------------

def _names(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _moved_output(comparison: Comparison) -> str | None:
    return comparison.moved[0] if comparison.moved else None


def check_mask(harness: Harness, mask_name: str, masks: list[str], declared: dict[str, str | None] | None = None,
               seed: int = 0) -> tuple[dict[str, Any], list[dict]]:
    declared = declared or {}
    data_inputs = covered_inputs(harness, mask_name, masks)
    mask = harness.tensors[mask_name]
    caller, source = caller_convention(harness, mask_name, declared)
    entry: dict[str, Any] = {"input": mask_name, "data_inputs": data_inputs, "convention": None, "honoured": None,
                             "max_abs_change": None, "all_padded": None, "padding_made_up": None,
                             "caller_convention": caller, "convention_source": source, "inverted": None,
                             "padding_invariant": None, "output": None}
    if not data_inputs:
        return entry, [finding("INFO", "mask", f"mask `{mask_name}` {list(mask.shape)} covers no data input (none has "
                               f"leading dims {list(mask.shape)}); its padding could not be checked", input=mask_name)]
    if mask.dim() == 0 or mask.shape[-1] < 2:
        return entry, [finding("INFO", "mask", f"mask `{mask_name}` has a last dim of size {mask.shape[-1] if mask.dim() else 0}; "
                               "there is nothing to pad", input=mask_name)]
    if not harness.deterministic:
        return entry, [finding("INFO", "mask", f"two eval forwards on the same inputs differ (random numbers drawn in "
                               f"forward), so whether padding under `{mask_name}` moves the output cannot be told apart "
                               "from the randomness; not checked", input=mask_name)]
    variable = [name for name in data_inputs if can_vary(harness.tensors[name])]
    per_position = outputs_over_positions(harness, mask_name, harness.run(harness.inputs))
    entry["outputs_compared_at_kept_positions_only"] = sorted(per_position)
    options, made_up = hypotheses(harness, mask_name)
    entry["padding_made_up"], entry["padding_side"] = made_up, "right" if made_up else "given"
    readings = _readings(harness, mask_name, variable, options, per_position, seed)
    if made_up and all(r["honoured"] for r in readings.values()):
        # A causal model never sees right padding from kept positions; left padding tells the conventions apart.
        left, _ = hypotheses(harness, mask_name, side="left")
        left_readings = _readings(harness, mask_name, variable, left, per_position, seed)
        if not all(r["honoured"] for r in left_readings.values()):
            options, readings = left, left_readings
            entry["padding_side"] = "left"
    findings: list[dict] = []
    fitting = [c for c in CONVENTIONS if readings[c]["honoured"]]
    changes = {c: readings[c]["leak"].max_abs_change for c in CONVENTIONS}
    if len(fitting) == 1:
        entry.update(convention=fitting[0], honoured=True, max_abs_change=changes[fitting[0]])
    elif len(fitting) == 2:
        entry.update(honoured=True, max_abs_change=max(changes.values()))
        findings.append(finding("INFO", "mask", f"the output does not depend on {_names(data_inputs)} at the positions "
                                f"`{mask_name}` marks either way; its convention cannot be told", input=mask_name))
    else:
        findings += _unhonoured(entry, readings, caller, mask, mask_name, data_inputs, changes)
    if entry["convention"] and caller:
        entry["inverted"] = entry["convention"] != caller
        if entry["inverted"]:
            entry["output"] = entry["output"] or _first_output(harness)
            findings.append(finding(
                "RISK", "mask", f"padding mask `{mask_name}` is inverted: the caller marks padding as "
                f"{_convention_words(caller)} ({_source_words(source)}), the model honours {_convention_words(entry['convention'])}: "
                f"it reads the padded items of {_names(data_inputs)} and ignores the real ones (`{entry['output']}`)",
                fix=f"flip `{mask_name}` where it enters the model (`~{mask_name}` for a bool mask, `1 - {mask_name}` for "
                    f"0/1), or build it with the model's convention; torch's key_padding_mask is True at padding, "
                    f"Hugging Face's attention_mask is 1 at real tokens",
                input=mask_name, output=entry["output"]))
    convention = entry["convention"] or caller or USUAL_CONVENTION[mask.dtype == torch.bool]
    mask_tensor, padded = options[convention]
    if entry["inverted"]:
        entry["padding_invariance"] = {"padding_invariant": None, "reason": "the mask is inverted"}
    elif entry["convention"]:
        invariance = padding_invariance(harness, mask_name, data_inputs, mask_tensor, padded, convention, seed)
        entry["padding_invariant"] = invariance["padding_invariant"]
        entry["padding_invariance"] = invariance
        if invariance["padding_invariant"] is False:
            entry["output"] = entry["output"] or invariance["output"]
            findings.append(_invariance_finding(mask_name, invariance))
    padded_run = all_padded(harness, mask_name, mask_tensor, convention)
    entry.update(padded_run)
    if entry["all_padded"] == "nan":
        findings.append(finding(
            "CAUTION", "all_padded", f"`{mask_name}`: a sample whose positions are all padding gives NaN in "
            f"`{padded_run['all_padded_output']}`: {padded_run['all_padded_cause']}; NaN scores poison a ranking "
            "and its loss", fix=_all_padded_fix(padded_run["all_padded_op"]), input=mask_name, output=padded_run["all_padded_output"]))
    elif entry["all_padded"] == "error":
        findings.append(finding("CAUTION", "all_padded", f"`{mask_name}`: a sample whose positions are all padding makes "
                                f"the forward fail ({entry['all_padded_error']})", input=mask_name))
    return entry, findings


def _unhonoured(entry: dict[str, Any], readings: dict[str, dict[str, Any]], caller: str | None, mask: torch.Tensor,
                mask_name: str, data_inputs: list[str], changes: dict[str, float]) -> list[dict]:
    """No convention is honoured: non-finite, hollow, or leaking; the findings."""
    likely = caller or USUAL_CONVENTION[mask.dtype == torch.bool]
    reading = readings[likely]
    if reading["nonfinite"]:
        output = reading["nonfinite"][0]
        entry.update(honoured=False, output=output, nonfinite_outputs=reading["nonfinite"])
        return [finding("RISK", "mask", f"`{output}` is not finite at real positions with `{mask_name}` read as "
                        f"{likely}: its padding cannot be checked and the output is unusable",
                        fix="find the op that makes the NaN (all-masked attention rows, 0/0 in pooling)",
                        input=mask_name, output=output)]
    if all(r["hollow"] and r["leak"].within_tolerance for r in readings.values()):
        entry.update(honoured=None)
        return [finding("CAUTION", "mask", f"`{mask_name}` could not be checked: no output depends on "
                        f"{_names(data_inputs)} at the real positions (under either convention), so padding cannot "
                        "move it either", input=mask_name)]
    leaking = [c for c in CONVENTIONS if not readings[c]["leak"].within_tolerance]
    least = min(leaking, key=lambda c: changes[c])
    output = _moved_output(readings[least]["leak"])
    entry.update(honoured=False, max_abs_change=changes[least], output=output)
    return [finding(
        "RISK", "mask",
        f"padding mask `{mask_name}` is not honoured: changing {_names(data_inputs)} at padded positions moves "
        f"`{output}` by up to {changes[least]:.3g} under either convention (true_is_padding "
        f"{changes['true_is_padding']:.3g}, false_is_padding {changes['false_is_padding']:.3g})",
        fix=f"apply `{mask_name}` wherever padded positions could reach the output: in attention "
            f"(key_padding_mask / attention_mask) and in pooling (sum over kept positions / their count, "
            f"not .mean over all)", input=mask_name, output=output)]


def _invariance_finding(mask_name: str, invariance: dict[str, Any]) -> dict:
    output, example = invariance["output"], invariance.get("example")
    lengths = invariance["padded_lengths"]
    if example:
        less = f"{example['less_padding']} padded items" if example["less_padding"] else "no padding"
        told = (f"the same {example['real_items']}-item sample gives `{output}` = {example['value_less']:.4g} with "
                f"{less} and {example['value_more']:.4g} with {example['more_padding']} padded items")
    else:
        told = f"`{output}` moves by up to {invariance['max_abs_change']:.3g}"
    return finding(
        "RISK", "mask", f"the amount of padding changes the answer under `{mask_name}`: {told} (the same real items "
        f"padded to {', '.join(map(str, lengths))} positions); the padded items are counted somewhere, e.g. a pooling "
        "that divides by the padded length",
        fix=f"divide by the number of kept items (`{mask_name}`'s kept positions summed, clamped to >= 1), not by the "
            "padded length, and keep padded positions out of every sum, max and normalisation",
        input=mask_name, output=output)


def _convention_words(convention: str) -> str:
    return {"true_is_padding": "True/1 (true_is_padding)", "false_is_padding": "False/0 (false_is_padding)"}[convention]


def _source_words(source: str | None) -> str:
    return {"data": "its own mask values: padding where each row's length ends", "name": "the input's name",
            "--mask": "--mask"}.get(source or "", "")


def _first_output(harness: Harness) -> str:
    return harness.run(harness.inputs)[0][0]


def analyse_masks(harness: Harness, declared: list[str]) -> tuple[list[dict[str, Any]], list[dict]]:
    conventions = parse_declared(declared)
    masks = find_masks(harness, declared)
    entries, findings = [], []
    for name in masks:
        entry, found = check_mask(harness, name, masks, conventions)
        entries.append(entry)
        findings.extend(found)
    return entries, findings
