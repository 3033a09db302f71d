"""lint.py: options, the analysis from the parsed options, and the renderers."""

from __future__ import annotations

import argparse
from typing import Any

from .. import cli, render
from ..errors import UserError
from ..target import NoInputsError
from .analysis import lint_model
from .sources import _relative


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


def _location(finding: dict[str, Any]) -> str:
    return f"{_relative(finding['file'])}:{finding['line']}" if finding["file"] else finding["where"]


def _summary_line(data: dict[str, Any]) -> str:
    counts = data["counts"]
    scanned = [c for c in data["classes_scanned"] if c["status"] == "scanned"]
    skipped = [c for c in data["classes_scanned"] if c["status"] == "skipped"]
    return (f"{counts['RISK']} RISK, {counts['CAUTION']} CAUTION, {counts['INFO']} INFO; "
            f"{len(scanned)} own class(es) read, {len(skipped)} without source, "
            f"{len(data['classes_ignored'])} library/torch class(es) not read")


# torch.autograd.gradcheck's rule (lint/gradcheck.py): a passed check's error is float64 round-off, not a figure.
GRADCHECK_BOUND = "1e-5 + 1e-3 x |numerical|"


def _function_rows(data: dict[str, Any]) -> list[list[str]]:
    return [[f["name"], f["gradcheck"], "-" if f["max_abs_error"] is None else
             render.change(f["max_abs_error"], within=f["gradcheck"] == "passed", bound=GRADCHECK_BOUND, prefix=""),
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
