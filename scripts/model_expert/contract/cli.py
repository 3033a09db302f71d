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
from .inplace import analyse_inplace
from .lengths import analyse_lengths, resizable
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
    group.add_argument("--mask", action="append", default=[], metavar="NAME[=CONVENTION]",
                       help="an input that is a padding mask although it is not bool and not named *mask*, and/or "
                            "the convention the caller means: NAME=true_is_padding (True/1 marks padding, torch's "
                            "key_padding_mask) or NAME=false_is_padding (1 keeps, Hugging Face's attention_mask); "
                            "repeatable")
    group.add_argument("--batches", type=int, default=8, metavar="N",
                       help="seeded batches the value ranges are measured over (default: 8)")
    cli.add_output_arguments(parser)


HEAD_WORDS = {"SigmoidBackward0": "a sigmoid", "SoftmaxBackward0": "a softmax", "TanhBackward0": "a tanh",
              "HardtanhBackward0": "a hardtanh (clamp)", "HardsigmoidBackward0": "a hard sigmoid",
              "LogSoftmaxBackward0": "a log-softmax", "LogSigmoidBackward0": "a log-sigmoid"}


def loss_output(outputs: list[dict[str, Any]]) -> str | None:
    """The output a training loss reads: Hugging Face's `logits`, else the first floating output (a model's
    pooler_output, hidden states and attention weights are not what the loss ranks or classifies)."""
    names = [row["name"] for row in outputs]
    logits = [name for name in names if name.endswith(".logits") or name.endswith("['logits']")]
    return (logits or names or [None])[0]


def _head_findings(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    read = loss_output(outputs)
    for row in outputs:
        if row["bounded"] is not None and row["name"] == read:
            low, high = row["bounded"]
            found.append(finding("CAUTION", "range", f"`{row['name']}` (the output a loss reads) ends in "
                                 f"{HEAD_WORDS.get(row['head_op'], 'a squashing function')}, bounded to [{low:g}, {high:g}]; "
                                 f"measured {row['min']:.3g} to {row['max']:.3g}. A ranking or cross-entropy loss "
                                 "wants unbounded logits", output=row["name"],
                                 fix="return the logits and apply the squashing inside the loss "
                                     "(BCEWithLogitsLoss, cross_entropy) or only at inference"))
        if row["nonfinite"]:
            found.append(finding("RISK", "range", f"`{row['name']}` has {row['nonfinite']} non-finite values over the "
                                 "sampled batches", output=row["name"],
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
    written, inplace_findings = analyse_inplace(harness)
    inputs, outputs = analyse_ranges(harness, batches)
    mask_rows, mask_findings = analyse_masks(harness, masks)
    independent, batch_rows, batch_findings = analyse_batch(harness, mask_names)
    length_rows = analyse_lengths(harness)
    permutation_rows, permutation_findings = analyse_permutations(harness, sets, resizable(length_rows))
    determinism, determinism_findings = analyse_determinism(harness)
    findings = (mask_findings + batch_findings + permutation_findings + _head_findings(outputs)
                + inplace_findings + determinism_findings)
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
        "inputs_written_in_place": written,
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


def _padding_amount(row: dict[str, Any], tolerance: str = "the tolerance") -> str:
    invariance = row.get("padding_invariance") or {}
    lengths = ", ".join(map(str, invariance.get("padded_lengths") or []))
    if row.get("padding_invariant") is True:
        return f"the same real items padded to {lengths} positions give the same output"
    if row.get("padding_invariant") is False:
        return (f"the amount of padding CHANGES `{invariance.get('output')}` (by up to "
                f"{number(invariance.get('max_abs_change'))} over {lengths} positions)")
    if invariance.get("reason"):
        return f"padding amount not checked ({invariance['reason']})"
    return ""


def _caller(row: dict[str, Any]) -> str:
    if not row.get("caller_convention"):
        return "the caller's convention is not known (pass --mask NAME=true_is_padding|false_is_padding)"
    source = {"data": "the caller's data", "name": "the input's name", "--mask": "--mask"}[row["convention_source"]]
    return f"the caller means {row['caller_convention']} (from {source})"


def mask_line(row: dict[str, Any], tolerance: str = "the tolerance") -> str:
    if not row["data_inputs"]:
        return f"`{row['input']}`: covers no data input, not checked"
    covered = ", ".join(f"`{n}`" for n in row["data_inputs"])
    if row["honoured"] is None:
        return f"`{row['input']}` over {covered}: not checkable (no output depends on the real positions' data)"
    if row.get("inverted"):
        verdict = "INVERTED"
    else:
        verdict = "honoured" if row["honoured"] else "NOT honoured"
    convention = row["convention"] or "neither convention"
    moved = render.change(row["max_abs_change"], within=row["honoured"], bound=tolerance)
    parts = [f"{convention}; padded data moves the output {moved}"]
    if row.get("nonfinite_outputs"):
        parts[0] = f"`{row['nonfinite_outputs'][0]}` is not finite at real positions"
    elif row.get("output") and not row["honoured"]:
        parts[0] = f"{convention}; padded data moves `{row['output']}` {moved}"
    parts.append(_caller(row))
    amount = _padding_amount(row, tolerance)
    if amount:
        parts.append(amount)
    text = f"`{row['input']}` over {covered}: {verdict} ({'; '.join(parts)})"
    return text + f"; a sample that is all padding gives {ALL_PADDED_TEXT[row['all_padded']]}"


def batch_line(data: dict[str, Any]) -> str:
    independent = data["batch_independent"]
    if independent is None:
        return "not checked"
    rows = [r for r in data["batch"] if r["mode"] == "eval"]
    worst = max((r["max_abs_change"] for r in rows), default=0.0)
    outputs = ", ".join(f"`{r['output']}`" for r in rows)
    if not independent:
        mixed = ", ".join(f"`{r['output']}`" for r in rows if not r["independent"])
        return f"samples MIX in eval mode in {mixed} (a sample's output moves by up to {number(worst)})"
    how = ("each sample run alone gives what it gives inside the batch" if rows and rows[0]["method"] == "alone"
           else "changing other samples does not move a sample's output")
    return (f"independent in eval mode: {how} ({outputs}; largest difference "
            f"{render.change(worst, within=True, bound=bound(data), prefix='')})")


def permutation_line(row: dict[str, Any], tolerance: str = "the tolerance") -> str:
    label = f"`{row['dim']}` ({row['size']}{', declared a set' if row['set'] else ''})"
    if row["property"] is None:
        return f"{label}: not checked" + (f" ({row['not_checked']})" if row.get("not_checked") else "")
    if row["property"] == "equivariant":
        return f"{label}: equivariant (axis {row['output_dim']} of `{row['output']}` permutes with it)"
    change = render.change(row["max_abs_change"], within=row["property"] == "invariant", bound=tolerance)
    return f"{label}: {row['property'].replace('_', ' ')} (output moves {change})"


def length_line(row: dict[str, Any]) -> str:
    parts = []
    fixed = not any(c["status"] == "ok" and c["size"] != row["given"] for c in row["checks"])
    if fixed:
        return (f"`{row['dim']}` (given {row['given']}): the forward runs only at {row['given']} (a fixed size, "
                "not a length or a count: its order is not checked)")
    for check in row["checks"]:
        if check["status"] == "skipped":
            parts.append(f"{check['size']}: skipped ({check['error']})")
        elif check["status"] != "ok":
            parts.append(f"{check['size']}: the forward fails")
        else:
            parts.append(f"{check['size']}: ok" + (f" ({check['nonfinite']} non-finite outputs)" if check["nonfinite"] else ""))
    return f"`{row['dim']}` (given {row['given']}): " + "; ".join(parts)


def no_permutation(data: dict[str, Any]) -> str:
    fixed = sorted(set(row["dim"] for row in data["lengths"]) - resizable(data["lengths"]))
    if fixed:
        return f"no dim to permute: {', '.join(f'`{d}`' for d in fixed)} runs only at its given size (a feature dim)"
    return "no named non-batch dim"


def render_lines(data: dict[str, Any]) -> dict[str, list[str]]:
    """The formatted lines both renderers (and the review) print."""
    determinism = data["determinism"]
    return {
        "inputs": [f"`{r['name']}` {r['dtype']}{render.shape(r['shape'])}: {input_range(r)}" for r in data["inputs"]],
        "outputs": [f"`{r['name']}` {r['dtype']}{render.shape(r['shape'])}: {output_range(r)}" for r in data["outputs"]],
        "masks": [mask_line(r, bound(data)) for r in data["masks"]] or ["no mask input"],
        "batch": [batch_line(data)],
        "permutations": [permutation_line(r, bound(data)) for r in data["permutations"]] or [no_permutation(data)],
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
