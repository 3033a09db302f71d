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
from .probe.cli import REVIEW_SEARCH_STEPS, REVIEW_STEPS, REVIEW_SWEEP_STEPS
from .runner import default_losses_used, loss_description

# Order matters: trace first (a broken forward stops the report there, with the module that failed); the resource
# sections (meta device or one traced step: their cost does not grow with the batch) before the behavioural ones,
# whose batch and steps are sized from flops' count; probe before grads (grads judges the update at the learning
# rate probe trained with); recommend last (it reads params, memory, grads and probe).
SECTIONS = ("params", "trace", "lint", "flops", "memory", "contract", "probe", "grads", "recommend")
BEHAVIOURAL = ("contract", "probe", "grads")
# Options of the report that only the report reads.
REPORT_ONLY = {"out", "findings", "skip", "json", "markdown", "debug", "target", "samples_per_epoch", "profile_info",
               "budget_s"}
# Per-section options that differ from the section's own default when it runs inside the report.
SECTION_DEFAULTS = {"params": {"depth": 2}, "flops": {"depth": 2}}
# probe's workload inside the review: fixed, so its figures do not depend on the machine's speed.
REPORT_PROBE_STEPS, REPORT_PROBE_SWEEP_STEPS = REVIEW_STEPS, REVIEW_SWEEP_STEPS
# probe's LR line search inside the review: runs of this many steps (MIN_SEARCH_STEPS when the steps are reduced).
# Not yet in the FLOPs plan below (about 11 runs: 88 more steps), which still sizes the fit and the range test only.
REPORT_PROBE_SEARCH_STEPS, MIN_SEARCH_STEPS = REVIEW_SEARCH_STEPS, 4
DEFAULT_BUDGET_S = 60.0
NO_CLOCK_ENV = "MODEL_EXPERT_NO_CLOCK"
NO_CLOCK_PROBE_S = 3600.0  # probe's own safety net when the clock is off
# The behavioural checks are sized, never timed: their FLOPs (flops.py's count on the traced step) at this nominal
# rate must fit this share of --budget-s. A constant, so the batch and steps (and every figure) are the same on any
# machine and under any load; the clock only stops a section that would start after the budget is spent.
NOMINAL_FLOPS_PER_S = {"cpu": 4e10, "cuda": 2e13}
BEHAVIOURAL_SHARE = 0.6
CONTRACT_FORWARDS = 48      # forwards contract.py runs on a typical model (masks, batch, permutations, ranges)
PROBE_EXTRA_STEPS = 4       # probe's first-batch check, initial loss, zero-gradient pass and update ratio
MIN_BEHAVIOURAL_BATCH = 2   # contract compares a sample alone with it inside a batch
MIN_PROBE_STEPS, MIN_SWEEP_STEPS, MIN_GRAD_BATCHES = 10, 8, 2
GRADS_DEFAULT_BATCHES = 3   # grads.py's --batches default
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
    group.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, metavar="S",
                       help="the review's budget: the behavioural checks (contract, grads, probe) run on a batch and a "
                            "number of steps sized from the step's FLOPs to fit it (the review states them); a section "
                            f"that would start after S seconds is left out and says so (default: {DEFAULT_BUDGET_S:g})")
    cli.add_output_arguments(parser, markdown=False)


def clock_stops() -> bool:
    """False when $MODEL_EXPERT_NO_CLOCK=1: the budget still sizes the checks but the clock never stops a section.
    The test suite sets it, so that no figure it checks depends on how busy the test machine is."""
    return os.environ.get(NO_CLOCK_ENV) != "1"


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


def behavioural_workload(flops: dict[str, Any] | None, budget_s: float, device: str, run: frozenset[str],
                         grads_batches: int, grads_batches_given: bool) -> dict[str, Any]:
    """The batch and step counts of the behavioural checks (contract, grads, probe): the traced batch and the fixed
    counts when their FLOPs (FLOPS: flops.py's evidence at the traced batch) at the nominal rate fit
    BEHAVIOURAL_SHARE of BUDGET_S; else the largest batch that fits (at least MIN_BEHAVIOURAL_BATCH); else that
    minimum batch with the step counts scaled down (never below their minimums). A pure function of the model's
    count and the options: the same on every machine. RUN: the behavioural sections that will run."""
    rate = NOMINAL_FLOPS_PER_S.get(device, NOMINAL_FLOPS_PER_S["cpu"])
    allowed = BEHAVIOURAL_SHARE * budget_s * rate
    plan: dict[str, Any] = {"budget_s": budget_s, "nominal_flops_per_s": rate, "behavioural_share": BEHAVIOURAL_SHARE,
                            "allowed_flops": allowed, "contract_forwards": CONTRACT_FORWARDS, "grads_batches": grads_batches,
                            "probe_steps": REPORT_PROBE_STEPS, "probe_sweep_steps": REPORT_PROBE_SWEEP_STEPS,
                            "traced_batch_size": None, "batch_size": None, "estimated_flops": None, "reduced": []}
    step_flops = (flops or {}).get("step_flops")
    if not step_flops:
        plan["reason"] = ("flops was not measured, so the behavioural checks are not sized: they run on the traced "
                          "batch with the fixed step counts")
        return plan
    traced = flops.get("batch_size")
    plan["traced_batch_size"] = plan["batch_size"] = traced

    def steps(probe_steps: int, sweep_steps: int, batches: int) -> float:
        """Training-step equivalents (a forward is a third of a step's FLOPs)."""
        return (("contract" in run) * CONTRACT_FORWARDS / 3 + ("grads" in run) * batches
                + ("probe" in run) * (probe_steps + sweep_steps + PROBE_EXTRA_STEPS))

    per_sample = step_flops / traced if traced else None
    per_batch = step_flops
    full = steps(REPORT_PROBE_STEPS, REPORT_PROBE_SWEEP_STEPS, grads_batches)
    plan["estimated_flops"] = full * per_batch
    if full * per_batch <= allowed:
        plan["reason"] = (f"the checks' {render.flops(full * per_batch)} fit {BEHAVIOURAL_SHARE:.0%} of the {budget_s:g} s "
                          f"budget at a nominal {rate / 1e9:g} GFLOP/s: the traced batch and the fixed step counts")
        return plan
    if per_sample is not None:
        fitting = int(allowed // (full * per_sample))
        batch = max(min(fitting, traced), min(MIN_BEHAVIOURAL_BATCH, traced))
        if batch < traced:
            plan["batch_size"], per_batch = batch, per_sample * batch
            plan["reduced"].append("batch")
    why = (f"the checks would take {render.flops(plan['estimated_flops'])} at the traced batch {traced if traced else '(fixed)'}, "
           f"over the {render.flops(allowed)} that {BEHAVIOURAL_SHARE:.0%} of the {budget_s:g} s budget allows at a nominal "
           f"{rate / 1e9:g} GFLOP/s")
    if full * per_batch > allowed:  # the smallest batch still does not fit: fewer steps, never below the minimums
        scale = allowed / (full * per_batch)
        plan["probe_steps"] = max(MIN_PROBE_STEPS, int(REPORT_PROBE_STEPS * scale))
        plan["probe_sweep_steps"] = max(MIN_SWEEP_STEPS, int(REPORT_PROBE_SWEEP_STEPS * scale))
        if not grads_batches_given:
            plan["grads_batches"] = max(MIN_GRAD_BATCHES, min(grads_batches, int(grads_batches * scale)))
        plan["reduced"].append("steps")
    plan["estimated_flops"] = steps(plan["probe_steps"], plan["probe_sweep_steps"], plan["grads_batches"]) * per_batch
    plan["reason"] = why + (f"; reduced to batch {plan['batch_size']}" if "batch" in plan["reduced"] else "") + \
        (f"; probe {plan['probe_steps']} fit + {plan['probe_sweep_steps']} LR-range steps, grads "
         f"{plan['grads_batches']} batches" if "steps" in plan["reduced"] else "") + \
        f" ({render.flops(plan['estimated_flops'])})"
    return plan


def behavioural_overrides(name: str, workload: dict[str, Any]) -> dict[str, Any]:
    """The options contract, grads and probe run with inside the review (batch_size only when it was reduced)."""
    overrides: dict[str, Any] = {}
    if "batch" in workload["reduced"]:
        overrides["batch_size"] = workload["batch_size"]
    if name == "grads":
        overrides["batches"] = workload["grads_batches"]
    elif name == "probe":
        overrides.update(steps=workload["probe_steps"], sweep_steps=workload["probe_sweep_steps"],
                         search_steps=MIN_SEARCH_STEPS if "steps" in workload["reduced"] else REPORT_PROBE_SEARCH_STEPS)
    return overrides


def probe_clock_cuts(probe: dict[str, Any]) -> list[str]:
    """What probe's time budget (the review's clock) stopped, in words."""
    cuts = []
    fit, sweep = probe.get("overfit") or {}, probe.get("lr_range") or {}
    if fit.get("cut_short"):
        cuts.append(f"probe: fit one batch stopped by the clock after {fit.get('steps')} steps")
    if sweep.get("cut_short"):
        cuts.append(f"probe: the LR search stopped by the clock ({sweep.get('no_suggestion_reason', 'cut short')})")
    return cuts


def collect(args: argparse.Namespace, on_progress: Callable[[str], None] = progress) -> dict[str, Any]:
    """Run every section; a section that fails after the forward is known to work is recorded, not fatal."""
    with cli.shared_sessions():
        return _collect(args, on_progress)


def _collect(args: argparse.Namespace, on_progress: Callable[[str], None]) -> dict[str, Any]:
    plan = section_plan(args)
    default_losses_used.clear()
    started = time.perf_counter()
    budget_s = getattr(args, "budget_s", DEFAULT_BUDGET_S)
    evidence: dict[str, Any] = {"schema": "model-expert/report/1", "target": args.target,
                                "command": getattr(args, "command_line", None) or "python scripts/report.py "
                                + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                                "loss": args.loss, "samples_per_epoch": args.samples_per_epoch, "not_measured": {},
                                "data": getattr(args, "data", None), "profile": getattr(args, "profile_info", None)}
    # How this run went (threads, seconds): the machine's, never rendered in the review.
    run: dict[str, Any] = {**cli.configure_threads(sys.modules.get("torch")), "section_seconds": {},
                           "section_cpu_seconds": {}}
    workload: dict[str, Any] | None = None
    for position, (key, name, overrides) in enumerate(plan, start=1):
        module = registry.load(name)
        if module is None:
            evidence["not_measured"][key] = "this installation has no such capability"
            continue
        if name in BEHAVIOURAL:
            if workload is None:
                workload = behavioural_workload(evidence.get("flops"), budget_s, args.device,
                                                frozenset(n for _, n, _ in plan if n in BEHAVIOURAL),
                                                args.batches if args.batches is not None else GRADS_DEFAULT_BATCHES,
                                                args.batches is not None)
                workload["cut_by_clock"] = []
            elapsed = time.perf_counter() - started
            if elapsed >= budget_s and clock_stops():
                reason = (f"left out: the review's --budget-s {budget_s:g} s was spent ({elapsed:.0f} s) before it "
                          f"started; raise --budget-s")
                evidence["not_measured"][key] = reason
                workload["cut_by_clock"].append(f"{key}: {reason}")
                on_progress(f"[{position}/{len(plan)}] {key}: {reason}")
                continue
            overrides = {**overrides, **behavioural_overrides(name, workload)}
            if name == "probe":  # the clock only stops it (it then says so); its step counts are fixed above
                overrides["time_budget_s"] = max(1.0, budget_s - elapsed) if clock_stops() else NO_CLOCK_PROBE_S
        namespace = section_namespace(module.CAPABILITY, args, overrides)
        if name == "recommend":
            namespace.evidence = {"params": evidence.get("params"), "grads": evidence.get("grads"),
                                  "probe": evidence.get("probe"),
                                  "memory": [evidence[k] for k in ("memory", "memory_cluster") if k in evidence]}
        if name == "grads" and args.lr is None and (evidence.get("probe") or {}).get("lr"):
            # the update grads judges is the one the review's training makes: probe's optimizer and LR
            namespace.lr = evidence["probe"]["lr"]
            namespace.lr_source = f"probe.py's: {evidence['probe'].get('lr_source', 'its learning rate')}"
        section_started, section_cpu = time.perf_counter(), time.process_time()
        try:
            evidence[key] = {"schema": module.CAPABILITY.schema, **module.CAPABILITY.analyse(namespace)}
        except UserError as error:
            if name in ("params", "trace"):
                raise
            evidence["not_measured"][key] = str(error)
            on_progress(f"[{position}/{len(plan)}] {key} not measured: {error}")
            continue
        finally:
            run["section_seconds"][key] = round(time.perf_counter() - section_started, 3)
            run["section_cpu_seconds"][key] = round(time.process_time() - section_cpu, 3)
        if name == "probe":
            workload["cut_by_clock"] += probe_clock_cuts(evidence[key])
        on_progress(f"[{position}/{len(plan)}] {key} done in {run['section_seconds'][key]:.1f} s"
                    + (f" (batch {workload['batch_size']})" if name in BEHAVIOURAL and workload["batch_size"] else ""))
    at_recommended_batch(args, evidence, on_progress, run["section_seconds"])
    if workload is not None:
        evidence["review_budget"] = workload
    run["wall_seconds"] = round(time.perf_counter() - started, 3)
    evidence["run"] = run
    evidence["loss"] = loss_description(args.loss)
    from .target import checkpoints_loaded
    if checkpoints_loaded:
        evidence["checkpoint"] = checkpoints_loaded[0]
    if args.findings:
        evidence["reviewer_findings"] = read_findings(args.findings)
    return evidence


def at_recommended_batch(args: argparse.Namespace, evidence: dict[str, Any],
                         on_progress: Callable[[str], None], seconds: dict[str, float] | None = None) -> None:
    """The review states memory, step time, epoch time and latency at the batch it recommends: where that differs
    from the traced batch, memory (one estimate on --gpu, no largest-batch search) and flops run once more at it
    (evidence keys memory_recommended_batch, flops_recommended_batch). --data batches keep their own size."""
    from .report_view import recommended_batch
    batch = recommended_batch(evidence)
    if batch is None or getattr(args, "data", None):
        return
    for key, name, traced in (("memory_recommended_batch", "memory", "memory"),
                              ("flops_recommended_batch", "flops", "flops")):
        if traced not in evidence or batch == evidence[traced].get("batch_size"):
            continue
        module = registry.load(name)
        namespace = section_namespace(module.CAPABILITY, args, {"gpu": args.gpu, "batch_size": batch})
        namespace.search_max_batch = False
        on_progress(f"{name} at the recommended batch {batch} ...")
        started = time.perf_counter()
        try:
            evidence[key] = {"schema": module.CAPABILITY.schema, **module.CAPABILITY.analyse(namespace)}
        except UserError as error:
            evidence["not_measured"][key] = str(error)
        if seconds is not None:
            seconds[key] = round(time.perf_counter() - started, 3)


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    if not args.budget_s > 0:
        raise UserError(f"--budget-s must be a positive number of seconds, not {args.budget_s:g}")
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
    add_arguments=add_arguments, analyse=analyse, render_table=render_table, loss_line=False)
