"""The full review: runs every capability on one model, writes analysis.json (evidence) and analysis.md.

Each capability runs through its own CAPABILITY (its parser's defaults, overlaid with the report's
options of the same name), so the report says exactly what `scripts/<capability>.py` would say.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import Any, Callable

from . import cli, registry, render
from .errors import UserError
from .gpus import DEFAULT_CLUSTER_GPU, DEFAULT_CONSUMER_GPU
from .runner import default_losses_used, loss_description

# Order matters: trace first (a broken forward stops the report there, with the module that failed);
# probe before grads (grads judges the update at the learning rate probe trained with);
# recommend last (it reads the params, memory, grads and probe evidence).
SECTIONS = ("params", "trace", "lint", "contract", "probe", "grads", "memory", "flops", "recommend")
# Options of the report that only the report reads.
REPORT_ONLY = {"out", "findings", "skip", "json", "markdown", "debug", "target", "samples_per_epoch", "profile_info"}
# Per-section options that differ from the section's own default when it runs inside the report.
SECTION_DEFAULTS = {"params": {"depth": 2}, "flops": {"depth": 2}}
# probe's workload inside the review: fixed, so its figures do not depend on the machine's speed.
REPORT_PROBE_STEPS, REPORT_PROBE_SWEEP_STEPS = 25, 20
FINDING_KEYS = ("priority", "title", "current_state", "impact", "fix")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_model_arguments(parser)
    cli.add_input_arguments(parser)
    cli.add_training_arguments(parser)
    group = parser.add_argument_group("report")
    group.add_argument("--out", required=True, metavar="DIR", help="write DIR/analysis.json, DIR/analysis.md and DIR/pr.md")
    group.add_argument("--findings", metavar="FILE.json",
                       help="the reviewer's findings: a list of {priority, title, current_state, impact, fix[, evidence]}")
    group.add_argument("--skip", action="append", default=[], choices=SECTIONS, help="leave a section out (repeatable)")
    group.add_argument("--vary", metavar="NAME=V1,V2", help="passed to trace: what scales with a named input dim")
    group.add_argument("--group", action="append", default=[], metavar="NAME=PREFIX", help="passed to grads: parameter groups")
    group.add_argument("--batches", type=int, default=None, help="passed to grads: sampled batches")
    group.add_argument("--set", action="append", default=[], metavar="DIM",
                       help="passed to contract: a named input dim that is an unordered set (repeatable)")
    group.add_argument("--mask", action="append", default=[], metavar="NAME",
                       help="passed to contract: a padding-mask input that is not bool and not named *mask*")
    group.add_argument("--gpu", default=DEFAULT_CONSUMER_GPU,
                       help=f"the single-GPU card for memory/flops/recommend (default: {DEFAULT_CONSUMER_GPU})")
    group.add_argument("--cluster-gpu", default=DEFAULT_CLUSTER_GPU,
                       help=f"the cluster card for memory/recommend (default: {DEFAULT_CLUSTER_GPU}, Purdue Anvil's GPU nodes)")
    group.add_argument("--steps", type=int, default=None, help="passed to recommend: total training steps")
    group.add_argument("--kind", action="append", default=[], metavar="KIND",
                       help="passed to recommend: override the detected architecture kind")
    group.add_argument("--l1-regularization", action="store_true",
                       help="passed to recommend: the loss has an L1 term (detected from l1_* attributes otherwise)")
    group.add_argument("--samples-per-epoch", type=int, default=None, metavar="N",
                       help="dataset size: adds the estimated time per epoch (steps x the estimated step time)")
    group.add_argument("--global-batch", type=int, default=None, help="passed to recommend: target global batch")
    group.add_argument("--lr", type=float, default=None, metavar="X",
                       help="passed to probe: the learning rate to fit one batch at (default: the config's, else recommend's)")
    group.add_argument("--time-budget-s", type=float, default=300.0, metavar="S",
                       help="passed to probe: a safety net; the review's probe runs a fixed number of steps (default: 300)")
    cli.add_output_arguments(parser, markdown=False)


def section_namespace(capability: cli.Capability, args: argparse.Namespace, extra: dict[str, Any]) -> argparse.Namespace:
    """The section's own defaults, overlaid with the report's options of the same name, then EXTRA."""
    return cli.namespace_for(capability, args, {**SECTION_DEFAULTS.get(capability.name, {}), **extra},
                             skip=frozenset(REPORT_ONLY))


def read_findings(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as stream:
            findings = json.load(stream)
    except FileNotFoundError:
        raise UserError(f"--findings file '{path}' does not exist") from None
    except json.JSONDecodeError as error:
        raise UserError(f"--findings file '{path}' is not valid JSON ({error.msg}, line {error.lineno})") from None
    if isinstance(findings, dict) and isinstance(findings.get("findings"), list):
        findings = findings["findings"]
    if not isinstance(findings, list):
        raise UserError(f"--findings file '{path}' must hold a list of findings")
    for index, finding in enumerate(findings):
        missing = [key for key in FINDING_KEYS if not isinstance(finding, dict) or key not in finding]
        if missing:
            raise UserError(f"--findings '{path}' item {index} lacks {', '.join(missing)}; each finding needs "
                            f"{', '.join(FINDING_KEYS)}")
        if finding["priority"] not in (1, 2):
            raise UserError(f"--findings '{path}' item {index}: priority must be 1 (critical) or 2 (important), "
                            f"not {finding['priority']!r}")
    return findings


def progress(message: str) -> None:
    sys.stderr.write(f"report: {message}\n")
    sys.stderr.flush()


def section_plan(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(evidence key, capability, option overrides) in run order; memory runs once per card."""
    plan: list[tuple[str, str, dict[str, Any]]] = []
    for name in SECTIONS:
        if name in args.skip:
            continue
        if name == "memory":
            plan.append(("memory", "memory", {"gpu": args.gpu}))
            if args.cluster_gpu and args.cluster_gpu != args.gpu:
                plan.append(("memory_cluster", "memory", {"gpu": args.cluster_gpu}))
        elif name == "trace":
            plan.append(("trace", "trace", {"vary": args.vary} if args.vary else {}))
        elif name == "flops":
            plan.append(("flops", "flops", {"gpu": args.gpu}))
        else:
            plan.append((name, name, {}))
    return plan


def collect(args: argparse.Namespace, on_progress: Callable[[str], None] = progress) -> dict[str, Any]:
    """Run every section; a section that fails after the forward is known to work is recorded, not fatal."""
    plan = section_plan(args)
    default_losses_used.clear()
    evidence: dict[str, Any] = {"schema": "model-expert/report/1", "target": args.target,
                                "command": getattr(args, "command_line", None) or "python scripts/report.py "
                                + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                                "loss": args.loss, "samples_per_epoch": args.samples_per_epoch, "not_measured": {},
                                "profile": getattr(args, "profile_info", None)}
    for position, (key, name, overrides) in enumerate(plan, start=1):
        module = registry.load(name)
        if module is None:
            evidence["not_measured"][key] = "this installation has no such capability"
            continue
        namespace = section_namespace(module.CAPABILITY, args, overrides)
        if name == "recommend":
            namespace.evidence = {"params": evidence.get("params"), "grads": evidence.get("grads"),
                                  "probe": evidence.get("probe"),
                                  "memory": [evidence[k] for k in ("memory", "memory_cluster") if k in evidence]}
        if name == "grads" and args.lr is None and (evidence.get("probe") or {}).get("lr"):
            # the update grads judges is the one the review's training makes: probe's optimizer and LR
            namespace.lr = evidence["probe"]["lr"]
            namespace.lr_source = f"probe.py's: {evidence['probe'].get('lr_source', 'its learning rate')}"
        if name == "probe":  # fixed steps, so the review says the same on any machine (the report's --steps is recommend's)
            namespace.steps, namespace.sweep_steps = REPORT_PROBE_STEPS, REPORT_PROBE_SWEEP_STEPS
        started = time.perf_counter()
        on_progress(f"[{position}/{len(plan)}] {key} ...")
        try:
            evidence[key] = {"schema": module.CAPABILITY.schema, **module.CAPABILITY.analyse(namespace)}
        except UserError as error:
            if name in ("params", "trace"):
                raise
            evidence["not_measured"][key] = str(error)
            on_progress(f"[{position}/{len(plan)}] {key} not measured: {error}")
            continue
        on_progress(f"[{position}/{len(plan)}] {key} done in {time.perf_counter() - started:.1f} s")
    epoch_flops_at_recommended_batch(args, evidence, on_progress)
    evidence["loss"] = loss_description(args.loss)
    from .target import checkpoints_loaded
    if checkpoints_loaded:
        evidence["checkpoint"] = checkpoints_loaded[0]
    if args.findings:
        evidence["reviewer_findings"] = read_findings(args.findings)
    return evidence


def recommended_batch(evidence: dict[str, Any]) -> int | None:
    """recommend's single-GPU batch size, when it gave one."""
    for entry in (evidence.get("recommend") or {}).get("recommendations", []):
        if entry.get("setting") == "batch_size" and entry.get("role") == "single_gpu" and isinstance(entry["value"], int):
            return entry["value"]
    return None


def epoch_flops_at_recommended_batch(args: argparse.Namespace, evidence: dict[str, Any],
                                     on_progress: Callable[[str], None]) -> None:
    """With --samples-per-epoch, the epoch time belongs to the batch the review recommends, not the traced one:
    flops runs once more at that batch (evidence key flops_recommended_batch)."""
    batch = recommended_batch(evidence)
    if not args.samples_per_epoch or "flops" not in evidence or batch is None \
            or batch == evidence["flops"].get("batch_size"):
        return
    module = registry.load("flops")
    namespace = section_namespace(module.CAPABILITY, args, {"gpu": args.gpu, "batch_size": batch})
    on_progress(f"flops at the recommended batch {batch} (epoch time) ...")
    try:
        evidence["flops_recommended_batch"] = {"schema": module.CAPABILITY.schema, **module.CAPABILITY.analyse(namespace)}
    except UserError as error:
        evidence["not_measured"]["flops_recommended_batch"] = str(error)


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    if args.samples_per_epoch is not None and args.samples_per_epoch < 1:
        raise UserError(f"--samples-per-epoch must be a positive whole number, not {args.samples_per_epoch}")
    if args.findings:
        read_findings(args.findings)  # fail before minutes of work, not after
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out '{args.out}' exists and is not a directory")
    evidence = collect(args)
    from .report_view import build_view
    view = build_view(evidence)
    analysis_md = render.render_template("analysis.md.j2", view)
    pr_md = render.render_template("pr.md.j2", view)
    evidence_text = cli.to_json(evidence)
    os.makedirs(out, exist_ok=True)
    for filename, text in (("analysis.json", evidence_text), ("analysis.md", analysis_md), ("pr.md", pr_md)):
        cli.write_atomically(os.path.join(out, filename), text)
    return {"out": out, "files": ["analysis.json", "analysis.md", "pr.md"], "not_measured": evidence["not_measured"],
            "stability": view["gradient"]["stability"], "total_parameters": evidence["params"]["total"]}


def render_table(data: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"wrote {os.path.join(data['out'], name)}" for name in data["files"]]
    for section, reason in data["not_measured"].items():
        lines.append(f"not measured: {section}: {reason}")
    return "\n".join(lines)


CAPABILITY = cli.Capability(
    name="report", version=1,
    description="Run every analysis on a model and write DIR/analysis.json, DIR/analysis.md and DIR/pr.md.",
    add_arguments=add_arguments, analyse=analyse, render_table=render_table)
