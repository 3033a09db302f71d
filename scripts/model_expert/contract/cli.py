"""The `contract` capability: options, the analysis (data only) and its renderers."""

from __future__ import annotations

import argparse
from typing import Any

from .. import cli, render
from ..errors import UserError
from ..guard import preserved
from .batch import analyse_batch
from .core import TOLERANCE_RULE, RELATIVE_TOLERANCE_FP32, Harness, finding
from .determinism import analyse_determinism
from .lengths import analyse_lengths
from .masks import analyse_masks, find_masks
from .permutations import analyse_permutations
from .ranges import analyse_ranges

SEVERITY_ORDER = {"RISK": 0, "CAUTION": 1, "INFO": 2}
ALL_PADDED_TEXT = {"finite": "finite outputs", "nan": "NaN outputs", "error": "an error", None: "(not run)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_model_arguments(parser)
    cli.add_input_arguments(parser)
    group = parser.add_argument_group("contract")
    group.add_argument("--set", action="append", default=[], metavar="DIM",
                       help="a named input dim that is an unordered set (order dependence there is a RISK); repeatable")
    group.add_argument("--mask", action="append", default=[], metavar="NAME",
                       help="an input that is a padding mask although it is not bool and not named *mask*; repeatable")
    group.add_argument("--batches", type=int, default=8, metavar="N",
                       help="seeded batches the value ranges are measured over (default: 8)")
    cli.add_output_arguments(parser)


def _head_findings(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for row in outputs:
        if row["bounded"] is not None:
            low, high = row["bounded"]
            found.append(finding("CAUTION", "range", f"`{row['name']}` is bounded to [{low:g}, {high:g}] by its head "
                                 f"({row['head_op']}); measured {row['min']:.3g} to {row['max']:.3g}. A ranking or "
                                 "cross-entropy loss wants unbounded logits", input=row["name"],
                                 fix="return the logits and apply the squashing inside the loss "
                                     "(BCEWithLogitsLoss, cross_entropy) or only at inference"))
        if row["nonfinite"]:
            found.append(finding("RISK", "range", f"`{row['name']}` has {row['nonfinite']} non-finite values over the "
                                 "sampled batches", input=row["name"],
                                 fix="find the op that overflows or divides by zero (trace.py, grads.py)"))
    return found


def contract(harness: Harness, sets: list[str], masks: list[str], batches: int) -> dict[str, Any]:
    """Every check on one model; the model is left as it was."""
    unknown = [name for name in sets if name not in harness.dims]
    if unknown:
        raise UserError(f"--set {', '.join(unknown)}: no input dim is named so; the named dims are "
                        f"{', '.join(harness.dims) or 'none'} (name one in --input as T=64, or as an integer "
                        f"keyword of the inputs factory)")
    mask_names = find_masks(harness, masks)
    inputs, outputs = analyse_ranges(harness, batches)
    mask_rows, mask_findings = analyse_masks(harness, masks)
    independent, batch_rows, batch_findings = analyse_batch(harness, mask_names)
    permutation_rows, permutation_findings = analyse_permutations(harness, sets)
    length_rows = analyse_lengths(harness)
    determinism, determinism_findings = analyse_determinism(harness)
    findings = (mask_findings + batch_findings + permutation_findings + _head_findings(outputs)
                + determinism_findings)
    findings.sort(key=lambda f: SEVERITY_ORDER[f["severity"]])
    return {
        "batch_dim": harness.batch_dim if harness.batch_dim in harness.dims else None,
        "dims": {d.name: {"size": d.size, "inputs": d.axes} for d in harness.dims.values()},
        "sets": list(sets),
        "tolerance": {"rule": TOLERANCE_RULE, "relative_fp32": RELATIVE_TOLERANCE_FP32},
        "inputs": inputs,
        "outputs": outputs,
        "masks": mask_rows,
        "batch_independent": independent,
        "batch": batch_rows,
        "permutations": permutation_rows,
        "lengths": length_rows,
        "determinism": determinism,
        "findings": findings,
    }


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    if args.device == "meta":
        raise UserError("contract needs real values and cannot run on --device meta; use --device cpu (the default) "
                        "or cuda")
    if args.batches < 1:
        raise UserError(f"--batches must be a positive whole number, not {args.batches}")
    session = cli.open_session(args)
    model = session.model
    with preserved(model):
        harness = Harness(model, session.input_source, session.dim_overrides, session.loaded.device,
                          session.loaded.name)
        data = contract(harness, list(dict.fromkeys(args.set)), list(dict.fromkeys(args.mask)), args.batches)
    return {"target": args.target, "model": session.loaded.name, "device": session.loaded.device, **data}


# ---- rendering -------------------------------------------------------------------------------------

def number(value: float | None) -> str:
    """Three significant digits; None as 'n/a'."""
    return "n/a" if value is None else f"{value:.3g}"


def bound(data: dict[str, Any]) -> str:
    """The tolerance a within-tolerance change is stated against (its figure would be round-off)."""
    dtypes = {row.get("dtype") for row in data.get("outputs") or []}
    return "1e-5 x max|output|, float32 round-off" if dtypes <= {"float32"} else \
        "1e-5 x max|output| x eps(dtype)/eps(float32)"


def input_range(row: dict[str, Any]) -> str:
    """What values an input takes: the spec's `<high`, bool, or the measured min to max."""
    if row["dtype"] == "bool":
        return "{False, True}"
    if row.get("high") is not None:
        return f"[0, {row['high']})"
    return f"{number(row['min'])} to {number(row['max'])} (measured)"


def output_range(row: dict[str, Any]) -> str:
    text = f"{number(row['min'])} to {number(row['max'])} (mean {number(row['mean'])}, std {number(row['std'])}"
    text += f", {row['nonfinite']} non-finite)" if row["nonfinite"] else ")"
    if row["bounded"] is not None:
        low, high = row["bounded"]
        text += f", bounded to [{low:g}, {high:g}] by {row['head_op']}"
    else:
        text += ", unbounded head"
    return text


def mask_line(row: dict[str, Any], tolerance: str = "the tolerance") -> str:
    if not row["data_inputs"]:
        return f"`{row['input']}`: covers no data input, not checked"
    covered = ", ".join(f"`{n}`" for n in row["data_inputs"])
    if row["honoured"] is None:
        return f"`{row['input']}` over {covered}: not checked"
    verdict = "honoured" if row["honoured"] else "NOT honoured"
    convention = row["convention"] or "neither convention"
    text = (f"`{row['input']}` over {covered}: {verdict} ({convention}; padded data moves the output "
            f"{render.change(row['max_abs_change'], within=row['honoured'], bound=tolerance)})")
    return text + f"; a sample that is all padding gives {ALL_PADDED_TEXT[row['all_padded']]}"


def batch_line(data: dict[str, Any]) -> str:
    independent = data["batch_independent"]
    if independent is None:
        return "not checked"
    rows = [r for r in data["batch"] if r["mode"] == "eval"]
    worst = max((r["max_abs_change"] for r in rows), default=0.0)
    verdict = "independent" if independent else "samples MIX"
    return (f"{verdict} in eval mode along `{data['batch_dim']}` (changing other samples moves a sample's output "
            f"{render.change(worst, within=independent, bound=bound(data))})")


def permutation_line(row: dict[str, Any], tolerance: str = "the tolerance") -> str:
    label = f"`{row['dim']}` ({row['size']}{', declared a set' if row['set'] else ''})"
    if row["property"] is None:
        return f"{label}: not checked"
    if row["property"] == "equivariant":
        return f"{label}: equivariant (axis {row['output_dim']} of `{row['output']}` permutes with it)"
    change = render.change(row["max_abs_change"], within=row["property"] == "invariant", bound=tolerance)
    return f"{label}: {row['property'].replace('_', ' ')} (output moves {change})"


def length_line(row: dict[str, Any]) -> str:
    parts = []
    for check in row["checks"]:
        if check["status"] != "ok":
            parts.append(f"{check['size']}: {check['status']} ({check['error']})")
        else:
            parts.append(f"{check['size']}: ok" + (f" ({check['nonfinite']} non-finite outputs)" if check["nonfinite"] else ""))
    return f"`{row['dim']}` (given {row['given']}): " + "; ".join(parts)


def render_lines(data: dict[str, Any]) -> dict[str, list[str]]:
    """The formatted lines both renderers (and the review) print."""
    determinism = data["determinism"]
    return {
        "inputs": [f"`{r['name']}` {r['dtype']}{render.shape(r['shape'])}: {input_range(r)}" for r in data["inputs"]],
        "outputs": [f"`{r['name']}` {r['dtype']}{render.shape(r['shape'])}: {output_range(r)}" for r in data["outputs"]],
        "masks": [mask_line(r, bound(data)) for r in data["masks"]] or ["no mask input"],
        "batch": [batch_line(data)],
        "permutations": [permutation_line(r, bound(data)) for r in data["permutations"]] or ["no named non-batch dim"],
        "lengths": [length_line(r) for r in data["lengths"]] or ["no named non-batch dim"],
        "determinism": [("two eval forwards agree exactly" if determinism["eval_identical"] else
                         f"two eval forwards differ by {number(determinism['eval_max_abs_change'])}")
                        + ("; training mode is stochastic (dropout)" if determinism["train_stochastic"] else "")],
        "findings": [f"[{f['severity']}] {f['text']}" + (f" Fix: {f['fix']}" if f.get("fix") else "")
                     for f in data["findings"]],
    }


SECTION_TITLES = (("inputs", "Inputs (range)"), ("outputs", "Outputs (range over the sampled batches)"),
                  ("masks", "Padding masks"), ("batch", "Batch independence"), ("permutations", "Order along each dim"),
                  ("lengths", "Variable length (1, given, twice)"), ("determinism", "Determinism"),
                  ("findings", "Findings"))


def render_table(data: dict[str, Any], args: argparse.Namespace) -> str:
    lines = render_lines(data)
    parts = [f"Contract of {data['model']} ({data['target']}), eval mode, {data['device']}",
             f"Tolerance: {data['tolerance']['rule']}"]
    for key, title in SECTION_TITLES:
        parts += ["", title] + [f"  {line}" for line in lines[key] or ["none"]]
    return "\n".join(parts)


def render_markdown(data: dict[str, Any], args: argparse.Namespace) -> str:
    lines = render_lines(data)
    parts = [f"### Contract (measured): {data['model']}", "", f"_Tolerance: {data['tolerance']['rule']}._"]
    for key, title in SECTION_TITLES:
        parts += ["", f"**{title}**:"] + [f"- {line}" for line in lines[key] or ["none"]]
    return "\n".join(parts)


CAPABILITY = cli.Capability(
    name="contract", version=1,
    description="Measure the input/output contract: padding masks honoured, samples independent, order along each "
                "named dim (sets), variable length, value ranges, determinism.",
    add_arguments=add_arguments, analyse=analyse, render_table=render_table, render_markdown=render_markdown)
