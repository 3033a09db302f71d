"""Is each padding mask honoured? Change the data at padded positions; the output must not move.

The convention is read off the model: `true_is_padding` (torch's key_padding_mask) when the output is
blind to the padded data with True/1 marking padding, `false_is_padding` (Hugging Face's
attention_mask, 1 = keep) when it is blind with False/0 marking padding. Neither: not honoured.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UserError
from .core import Harness, can_vary, compare, finding, fresh_like, replaced

CONVENTIONS = ("true_is_padding", "false_is_padding")
# What a mask of each dtype most likely means when the model honours neither convention.
USUAL_CONVENTION = {True: "true_is_padding", False: "false_is_padding"}  # keyed by "is bool"
EMPTY_SAMPLE_MEANING = ("a sample whose positions are all padding (an empty dataset) gives NaN outputs "
                        "(eval-mode nn.MultiheadAttention's fast path returns NaN for fully-masked rows); "
                        "NaN scores poison a ranking and its loss")


# Inputs that are training targets, not data: a loss reads them at padded positions by design
# (Hugging Face expects -100 there), so a mask does not cover them.
TARGET_INPUT_NAMES = {"labels", "label", "targets", "target"}
# A loss output (Hugging Face's output.loss) averages over positions, padded ones included unless the
# labels mark them -100: that is the labels' contract, not the mask's, so it is not compared.
LOSS_SUFFIX = "loss"


def is_mask(name: str, tensor: torch.Tensor, declared: set[str]) -> bool:
    """Bool tensors, integer tensors named *mask*, and the inputs --mask declares."""
    if name in declared:
        return True
    if tensor.dtype == torch.bool:
        return True
    return not tensor.is_floating_point() and "mask" in name.lower()


def find_masks(harness: Harness, declared: list[str]) -> list[str]:
    unknown = [name for name in declared if name not in harness.tensors]
    if unknown:
        raise UserError(f"--mask {', '.join(unknown)} is not an input; the tensor inputs are "
                        f"{', '.join(harness.tensors) or 'none'}")
    return [name for name, tensor in harness.tensors.items() if is_mask(name, tensor, set(declared))]


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


def _encode(padded: torch.Tensor, convention: str, like: torch.Tensor) -> torch.Tensor:
    marks = padded if convention == "true_is_padding" else ~padded
    return marks.to(dtype=like.dtype, device=like.device)


def hypotheses(harness: Harness, mask_name: str,
               side: str = "right") -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], bool]:
    """convention -> (mask tensor, padded positions), and whether the padding was made up here.

    A factory's mask that pads something is the user's own (used as given, read both ways); a spec's mask
    is drawn, not meaningful, so it and any mask that pads nothing get lengths-based padding instead."""
    mask = harness.tensors[mask_name]
    marks = mask.bool()
    pads_something = bool(marks.any()) and not bool(marks.all())
    if pads_something and not harness.from_spec:
        return {"true_is_padding": (mask, marks), "false_is_padding": (mask, ~marks)}, False
    padded = made_up_padding(mask.shape, side).to(mask.device)
    return {convention: (_encode(padded, convention, mask), padded) for convention in CONVENTIONS}, True


def _padded_everywhere(padded: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast the mask's padded positions over the data's trailing dims."""
    view = padded.reshape(tuple(padded.shape) + (1,) * (like.dim() - padded.dim()))
    return view.expand_as(like)


def outputs_over_positions(harness: Harness, mask_name: str,
                           outputs: list[tuple[str, torch.Tensor]]) -> dict[str, list[int]]:
    """Outputs that hold a value per masked position -> the output axes that carry the mask's axes.

    last_hidden_state [B, T, H] or a key cache [B, heads, T, d] under a [B, T] mask: their padded
    positions are garbage by design and are not compared. An axis carries a mask axis when it grows
    with that axis's named dim; without names, the output's leading dims must be the mask's shape."""
    mask = harness.tensors[mask_name]
    names = harness.axis_names(mask_name)
    carried: dict[str, list[int]] = {}
    for name, tensor in outputs:
        axes: list[int] | None = []
        for dim_name in names:
            grown = harness.output_axes(dim_name) if dim_name else None
            found = (grown or {}).get(name, [])
            if len(found) != 1:
                axes = None
                break
            axes.append(found[0])
        if axes is None and tuple(tensor.shape[:mask.dim()]) == tuple(mask.shape):
            axes = list(range(mask.dim()))
        if axes and sorted(axes) == axes and len(set(axes)) == len(axes):
            carried[name] = axes
    return carried


def _kept_positions(outputs: list[tuple[str, torch.Tensor]], per_position: dict[str, list[int]],
                    padded: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    kept = []
    for name, tensor in outputs:
        if name in per_position and not name.endswith(LOSS_SUFFIX):
            view = [1] * tensor.dim()
            for mask_axis, output_axis in enumerate(per_position[name]):
                view[output_axis] = padded.shape[mask_axis]
            tensor = torch.where(padded.reshape(view).expand_as(tensor), torch.zeros_like(tensor), tensor)
        kept.append((name, tensor))
    return [(name, tensor) for name, tensor in kept if not name.endswith(LOSS_SUFFIX)]


def _leak_per_convention(harness: Harness, mask_name: str, variable: list[str],
                         options: dict[str, tuple[torch.Tensor, torch.Tensor]], per_position: dict[str, list[int]],
                         seed: int) -> tuple[dict[str, float], dict[str, bool]]:
    """Per convention: how far the (kept) outputs move when the data at padded positions changes."""
    generator = torch.Generator().manual_seed(seed)
    changes: dict[str, float] = {}
    honoured: dict[str, bool] = {}
    for convention, (mask_tensor, padded) in options.items():
        inputs = replaced(harness.inputs, harness.locations, {mask_name: mask_tensor})
        reference = _kept_positions(harness.run(inputs), per_position, padded)
        changed = {}
        for name in variable:
            tensor = harness.tensors[name]
            changed[name] = torch.where(_padded_everywhere(padded, tensor), fresh_like(tensor, generator), tensor)
        result = compare(reference, _kept_positions(harness.run(replaced(inputs, harness.locations, changed)),
                                                    per_position, padded))
        changes[convention], honoured[convention] = result.max_abs_change, result.within_tolerance
    return changes, honoured


def check_mask(harness: Harness, mask_name: str, masks: list[str], seed: int = 0) -> tuple[dict[str, Any], list[dict]]:
    data_inputs = covered_inputs(harness, mask_name, masks)
    mask = harness.tensors[mask_name]
    entry: dict[str, Any] = {"input": mask_name, "data_inputs": data_inputs, "convention": None, "honoured": None,
                             "max_abs_change": None, "all_padded": None, "padding_made_up": None}
    if not data_inputs:
        return entry, [finding("INFO", "mask", f"mask `{mask_name}` {list(mask.shape)} covers no data input (none has "
                               f"leading dims {list(mask.shape)}); its padding could not be checked", input=mask_name)]
    if mask.dim() == 0 or mask.shape[-1] < 2:
        return entry, [finding("INFO", "mask", f"mask `{mask_name}` has a last dim of size {mask.shape[-1] if mask.dim() else 0}; "
                               "there is nothing to pad", input=mask_name)]
    variable = [name for name in data_inputs if can_vary(harness.tensors[name])]
    per_position = outputs_over_positions(harness, mask_name, harness.run(harness.inputs))
    entry["outputs_compared_at_kept_positions_only"] = sorted(per_position)
    options, made_up = hypotheses(harness, mask_name)
    entry["padding_made_up"], entry["padding_side"] = made_up, "right" if made_up else "given"
    changes, honoured = _leak_per_convention(harness, mask_name, variable, options, per_position, seed)
    if made_up and all(honoured.values()):
        # A causal model never sees right padding from kept positions; left padding tells the conventions apart.
        options, _ = hypotheses(harness, mask_name, side="left")
        changes, honoured = _leak_per_convention(harness, mask_name, variable, options, per_position, seed)
        entry["padding_side"] = "left"
    findings: list[dict] = []
    fitting = [c for c in CONVENTIONS if honoured[c]]
    if len(fitting) == 1:
        entry.update(convention=fitting[0], honoured=True, max_abs_change=changes[fitting[0]])
    elif len(fitting) == 2:
        entry.update(honoured=True, max_abs_change=max(changes.values()))
        findings.append(finding("INFO", "mask", f"the output does not depend on {_names(data_inputs)} at the positions "
                                f"`{mask_name}` marks either way; its convention cannot be told", input=mask_name))
    else:
        least = min(CONVENTIONS, key=lambda c: changes[c])
        entry.update(honoured=False, max_abs_change=changes[least])
        findings.append(finding(
            "RISK", "mask",
            f"padding mask `{mask_name}` is not honoured: changing {_names(data_inputs)} at padded positions moves the "
            f"output by up to {changes[least]:.3g} under either convention (true_is_padding {changes['true_is_padding']:.3g}, "
            f"false_is_padding {changes['false_is_padding']:.3g})",
            fix=f"apply `{mask_name}` wherever padded positions could reach the output: in attention "
                f"(key_padding_mask / attention_mask) and in pooling (sum over kept positions / their count, "
                f"not .mean over all)", input=mask_name))
    convention = entry["convention"] or USUAL_CONVENTION[mask.dtype == torch.bool]
    entry["all_padded"], entry["all_padded_error"] = all_padded(harness, mask_name, options[convention][0], convention)
    if entry["all_padded"] == "nan":
        findings.append(finding("CAUTION", "all_padded", f"`{mask_name}`: {EMPTY_SAMPLE_MEANING}",
                                fix="drop empty samples before the model, or keep one position unmasked "
                                    "and zero it after pooling", input=mask_name))
    elif entry["all_padded"] == "error":
        findings.append(finding("CAUTION", "all_padded", f"`{mask_name}`: a sample whose positions are all padding makes the "
                                f"forward fail ({entry['all_padded_error']})", input=mask_name))
    return entry, findings


def all_padded(harness: Harness, mask_name: str, mask_tensor: torch.Tensor, convention: str) -> tuple[str, str | None]:
    """Run with the first sample's positions all padding: 'finite', 'nan' or 'error' (and the error)."""
    mask = mask_tensor.clone()
    first_row = (0,) * (mask.dim() - 1)
    mask[first_row] = _encode(torch.ones(mask.shape[-1], dtype=torch.bool), convention, mask)
    outputs, error = harness.try_run(replaced(harness.inputs, harness.locations, {mask_name: mask}))
    if outputs is None:
        return "error", error
    finite = all(bool(torch.isfinite(tensor).all()) for _, tensor in outputs)
    return ("finite" if finite else "nan"), None


def _names(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def analyse_masks(harness: Harness, declared: list[str]) -> tuple[list[dict[str, Any]], list[dict]]:
    masks = find_masks(harness, declared)
    entries, findings = [], []
    for name in masks:
        entry, found = check_mask(harness, name, masks)
        entries.append(entry)
        findings.extend(found)
    return entries, findings
