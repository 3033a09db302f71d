"""probe.py: options, the run of every mechanism on a copy of the model, findings, rendering."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

import torch

from .. import cli, render
from ..errors import UserError
from ..guard import preserved
from ..runner import call_model
from ..target import read_config_section
from . import charts, curvature, initial_loss, line_search, lr_range, overfit, update_ratio
from .workbench import ADAM_FAMILY, OPTIMIZERS, Deadline, Workbench, torch_default_lr

DEFAULT_STEPS = 200
DEFAULT_SWEEP_STEPS = 100
DEFAULT_SEARCH_STEPS = 100
DEFAULT_TIME_BUDGET_S = 300.0
# The fixed workload a review (report.py, and recommend.py when it probes by itself) runs: fit one batch, the LR
# range test and each line-search run, in steps. Fixed, so the figures do not depend on the machine's speed.
REVIEW_STEPS, REVIEW_SWEEP_STEPS, REVIEW_SEARCH_STEPS = 25, 20, 8
SYNTHETIC_BATCHES = 8  # synthetic inputs: the range test and the line search cycle batches 0..7 (as --data cycles its own)
CONFIG_LR_KEYS = ("lr", "learning_rate")
# --precision -> autocast dtype: probe trains fp32 parameters (casting them would be another model).
AUTOCAST = {"fp32": None, "bf16-autocast": torch.bfloat16, "fp16-autocast": torch.float16}
MOMENTUM = {"sgd": 0.0, "sgd-momentum": OPTIMIZERS["sgd-momentum"][1].get("momentum", 0.0)}
FINDINGS_LISTED = 6  # names listed in one finding before "and N more"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_model_arguments(parser)
    cli.add_input_arguments(parser)
    cli.add_training_arguments(parser)
    group = parser.add_argument_group("probe")
    group.add_argument("--lr", type=float, metavar="X",
                       help="learning rate to fit one batch and size one update at (default: an lr/learning_rate in "
                            "the --config section, else the low end of recommend's range, else torch's default)")
    group.add_argument("--steps", type=int, default=DEFAULT_STEPS, metavar="N",
                       help=f"optimizer steps on the one batch (default: {DEFAULT_STEPS})")
    group.add_argument("--sweep-steps", type=int, default=DEFAULT_SWEEP_STEPS, metavar="N",
                       help=f"steps of the LR range test that brackets the search (default: {DEFAULT_SWEEP_STEPS})")
    group.add_argument("--search-steps", type=int, default=DEFAULT_SEARCH_STEPS, metavar="N",
                       help=f"steps of each training run of the LR line search (default: {DEFAULT_SEARCH_STEPS})")
    group.add_argument("--time-budget-s", type=float, default=DEFAULT_TIME_BUDGET_S, metavar="S",
                       help="wall-clock safety net: it can only stop a measurement, which then says cut short and "
                            f"suggests nothing; the steps are the options' (default: {DEFAULT_TIME_BUDGET_S:g})")
    cli.add_output_arguments(parser)


def progress(message: str) -> None:
    sys.stderr.write(f"probe: {message}\n")
    sys.stderr.flush()


def check_options(args: argparse.Namespace) -> None:
    if args.lr is not None and not (args.lr > 0 and math.isfinite(args.lr)):
        raise UserError(f"--lr must be a positive number, not {args.lr:g}")
    if args.steps < 1:
        raise UserError(f"--steps must be a positive whole number, not {args.steps}")
    if args.sweep_steps < 3:
        raise UserError(f"--sweep-steps must be at least 3, not {args.sweep_steps}")
    if args.search_steps < 4:
        raise UserError(f"--search-steps must be at least 4, not {args.search_steps}")
    if not args.time_budget_s > 0:
        raise UserError(f"--time-budget-s must be positive, not {args.time_budget_s:g}")
    if args.optimizer not in OPTIMIZERS:
        raise UserError(f"probe needs an optimizer to step with, not --optimizer {args.optimizer}; "
                        f"use one of {', '.join(OPTIMIZERS)}")
    if args.precision not in AUTOCAST:
        raise UserError(f"probe trains fp32 parameters; --precision {args.precision} is not supported, use one of "
                        f"{', '.join(AUTOCAST)}")
    if args.device == "meta":
        raise UserError("probe trains the model for real; --device meta has no values, use --device cpu or cuda")


def check_first_batch(bench: Workbench) -> None:
    """Forward and loss on batch 0 before any output: a batch the model rejects fails here, in one line. The mean
    of the outputs is no training objective: without --loss the model must return .loss."""
    with torch.no_grad():
        output, _ = bench.output_and_loss(seed=0, dropout_seed=0)
    if bench.loss_fn is not None:
        return
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    if not isinstance(loss, torch.Tensor):
        raise UserError("probe needs the training objective: the default loss (mean of outputs) is not one; "
                        "pass --loss FILE.py:FN (FN(output) or FN(output, batch)) or use a model that returns .loss")


def seed_range_start(model, session, args) -> tuple[float | None, str]:
    """The low end of recommend's learning-rate range for this model, with the rule's name."""
    from .. import recommend  # sideways: recommend's pure rule table
    from ..params import count_parameters

    def forward_shapes():
        inputs = session.build_inputs()
        with torch.no_grad():
            output = call_model(model, inputs, session.loaded.name)
        return recommend._tensor_shapes((inputs.args, inputs.kwargs)), recommend._tensor_shapes(output)

    kinds = recommend._parse_kinds(getattr(args, "kind", []) or [])
    architecture = (recommend.kind_from_override(kinds) if kinds
                    else recommend.detect_kind(model, args.loss, forward_shapes))
    result = recommend.recommend({"params": count_parameters(model), "architecture": architecture})
    entry = recommend.find(result, "learning_rate")
    value = entry["value"]
    return (value["start"] if isinstance(value, dict) else None), entry["rule"]


def choose_lr(args, model, session) -> tuple[float, str]:
    """--lr; else lr/learning_rate in the --config section; else recommend's range start (Adam family); else torch's."""
    if args.lr is not None:
        return args.lr, "--lr"
    if args.config:
        section = read_config_section(args.config)
        for key in CONFIG_LR_KEYS:
            if isinstance(section.get(key), (int, float)) and section[key] > 0:
                return float(section[key]), f"--config {args.config}: {key}"
    if args.optimizer in ADAM_FAMILY:
        start, rule = seed_range_start(model, session, args)
        if start is not None:
            return start, f"the low end of recommend's range (rule {rule})"
    return torch_default_lr(args.optimizer), f"torch.optim's default lr for --optimizer {args.optimizer}"


def zero_gradient_parameters(bench: Workbench) -> list[str]:
    """Trainable parameter tensors whose gradient at the initial weights on batch 0 is absent or all zero."""
    bench.reset()
    loss = bench.loss(seed=0, dropout_seed=0)
    if not (loss.requires_grad and math.isfinite(float(loss.detach()))):
        return []
    loss.backward()
    names = [name for name, p in bench.named_parameters if p.grad is None or not bool(p.grad.any())]
    bench.reset()
    return names


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - FINDINGS_LISTED} more" if len(names) > FINDINGS_LISTED else ""
    return ", ".join(names[:FINDINGS_LISTED]) + more


def find_issues(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Findings {severity, check, text[, module]} from the measured data."""
    findings: list[dict[str, Any]] = []
    initial, expected = data["initial_loss"], data["expected_initial_loss"]
    if not math.isfinite(initial):
        findings.append({"severity": "RISK", "check": "initial_loss", "text": f"the loss at the initial weights is {initial}"})
    elif expected is not None and abs(initial - expected) > initial_loss.GAP_CAUTION_NATS:
        findings.append({"severity": "CAUTION", "check": "initial_loss",
                         "text": f"initial loss {initial:.4g} vs {expected:.4g} expected at a uniform prediction "
                                 f"({data['expected_rule']}): the initial outputs are confidently "
                                 f"{'wrong' if initial > expected else 'right'}; check the output layer's init"})
    fit = data["overfit"]
    where = f"{fit['optimizer']} at lr {fit['lr']:.3g}"
    constant = (f" (a constant output reaches {fit['constant_loss']:.4g})" if fit.get("constant_loss") is not None else "")
    if fit["verdict"] == "diverges":
        findings.append({"severity": "RISK", "check": "fit_one_batch",
                         "text": f"{where} diverges on one batch: the loss went from {fit['losses'][0]:.4g} to "
                                 f"{fit['loss_at_divergence']:.4g} at step {fit['diverged_at_step']}; lower the "
                                 f"learning rate below the measured breakdown LR"})
    elif fit["verdict"] == "stalled":
        causes = []
        if data["zero_gradient_parameters"]:
            causes.append(f"{len(data['zero_gradient_parameters'])} of {data['trainable_tensors']} parameter tensors "
                          f"got zero gradient ({_listed(data['zero_gradient_parameters'])}): dead units or a "
                          f"detached path (grads.py names which)")
        if data["frozen_parameters"]:
            causes.append(f"{len(data['frozen_parameters'])} parameter tensors are frozen ({_listed(data['frozen_parameters'])})")
        state = (f"{where} stalls on one batch: the loss went from {fit['losses'][0]:.4g} to {fit['final_loss']:.4g} "
                 f"in {fit['steps']} steps{constant}, no better than a constant output")
        if causes or not data["lr_range"].get("learned"):
            findings.append({"severity": "RISK", "check": "fit_one_batch",
                             "text": state + ". " + ("Measured causes: " + "; ".join(causes) if causes else
                                                     "No zero-gradient or frozen parameter was found, and no LR the "
                                                     "line search tried learned")})
        else:  # nothing dead or frozen, and real runs at other LRs learn: this LR is small for these few steps
            findings.append({"severity": "INFO", "check": "fit_one_batch",
                             "text": state + f" at this LR; the line search's runs learn at "
                                             f"{data['lr_range']['suggested_lr']:.3g} (see the starting LR)"})
    elif fit["verdict"] == "learning":
        findings.append({"severity": "INFO", "check": "fit_one_batch",
                         "text": f"{where} learns one batch: {fit['losses'][0]:.4g} -> {fit['final_loss']:.4g} in "
                                 f"{fit['steps']} steps{constant}"})
    elif fit["verdict"] == "fits":
        findings.append({"severity": "INFO", "check": "fit_one_batch",
                         "text": f"{where} fits one batch: {fit['losses'][0]:.4g} -> {fit['final_loss']:.4g} in "
                                 f"{fit['steps']} steps{constant}"})
    else:
        findings.append({"severity": "INFO", "check": "fit_one_batch",
                         "text": f"{where}: no verdict ({fit['verdict'].replace('_', ' ')}, {fit['steps']} steps)"})
    sweep = data["lr_range"]
    if sweep["breakdown_lr"] is not None and fit["lr"] >= sweep["breakdown_lr"]:
        findings.append({"severity": "RISK", "check": "lr_range",
                         "text": f"lr {fit['lr']:.3g} is at or above the measured breakdown LR "
                                 f"{sweep['breakdown_lr']:.3g}" + (f"; start at {sweep['suggested_lr']:.3g}"
                                                                  if sweep["suggested_lr"] is not None else "")})
    if sweep["suggested_lr"] is None:
        findings.append({"severity": "INFO", "check": "lr_range", "text": f"no suggested LR: {sweep['no_suggestion_reason']}"})
    elif sweep["breakdown_lr"] is None:
        findings.append({"severity": "INFO", "check": "lr_range",
                         "text": f"no breakdown up to lr {sweep['largest_stable_lr']:.3g}"})
    if data.get("curvature_error"):
        findings.append({"severity": "INFO", "check": "curvature", "text": data["curvature_error"]})
    update = data["update_ratio"]
    low, high = update["healthy_band_log10"]
    if update["outside_band"]:
        findings.append({"severity": "CAUTION", "check": "update_ratio",
                         "text": f"one step at lr {update['lr']:.3g} moves {len(update['outside_band'])} of "
                                 f"{len(update['layers'])} parameter tensors by a fraction of their norm outside "
                                 f"10^{low:g} to 10^{high:g} (median 10^{update['median_log10']:.2f}): "
                                 f"{_listed(update['outside_band'])}. {update['note']}"})
    return findings


def measure_lr(bench: Workbench, args: argparse.Namespace, batches: int, until: float, on_progress) -> dict[str, Any]:
    """The range test brackets, the line search of real runs chooses: `suggested_lr` or `no_suggestion_reason`,
    `breakdown_lr`, `method`, `steps`, `cut_short`; the range test's curve kept for the chart."""
    sweep = lr_range.range_test(bench, args.optimizer, args.sweep_steps, batches, until, on_progress)
    result: dict[str, Any] = {"lrs": sweep["lrs"], "losses": sweep["losses"], "range_test": sweep,
                              "suggested_lr": None, "breakdown_lr": None, "largest_stable_lr": None, "learned": None,
                              "steps": {"range_test": args.sweep_steps, "per_trial": args.search_steps, "trials": 0},
                              "cut_short": sweep["cut_short"], "parameters": sweep["parameters"]}
    if sweep["cut_short"]:
        return {**result, "method": sweep["method"], "no_suggestion_reason":
                f"cut short: the time budget ({args.time_budget_s:g} s) ended the range test after "
                f"{len(sweep['lrs'])} of {args.sweep_steps} steps; rerun with a larger --time-budget-s"}
    start = (sweep["blow_up_lr"] / 10 if sweep["blow_up_lr"] else sweep["steepest_lr"] or sweep["min_loss_lr"]
             or torch_default_lr(args.optimizer))
    search = line_search.search(bench, args.optimizer, start, args.search_steps, batches, until, on_progress)
    trials = len(search["lrs"])
    result.update({"line_search": search, "method": line_search.method_text(args.search_steps, args.sweep_steps, trials),
                   "steps": {**result["steps"], "trials": trials}, "cut_short": search["cut_short"]})
    if search["cut_short"]:
        return {**result, "no_suggestion_reason":
                f"cut short: the time budget ({args.time_budget_s:g} s) ended the line search after {trials} runs; "
                f"rerun with a larger --time-budget-s"}
    result.update({"breakdown_lr": search["breakdown_lr"], "largest_stable_lr": search["largest_stable_lr"],
                   "learned": search["learned"]})
    if not search["learned"]:
        return {**result, "no_suggestion_reason": f"the loss never fell at any LR tried ({trials} runs from "
                                                  f"{min(search['lrs']):.3g} to {max(search['lrs']):.3g}): see Fit one batch"}
    return {**result, "suggested_lr": search["best_lr"]}


def torch_threads() -> int:
    """Every core torch may run on (the process's CPU affinity), not the machine's count."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(count)
    return count


def run_probe(args: argparse.Namespace, on_progress=progress) -> dict[str, Any]:
    check_options(args)
    threads = torch_threads()
    session = cli.open_session(args)
    model = session.model
    deadline = Deadline(args.time_budget_s)
    optimizer = args.optimizer
    batches = (len(session.input_source.batches()) if hasattr(session.input_source, "batches") else SYNTHETIC_BATCHES)
    with preserved(model):
        bench = Workbench(model, lambda seed: session.build_inputs(seed=seed), session.loss_fn, session.loaded.name,
                          AUTOCAST[args.precision])
        if not bench.parameters:
            raise UserError("the model has no trainable parameter; nothing to probe")
        check_first_batch(bench)
        lr, lr_source = choose_lr(args, model, session)
        on_progress(f"lr {lr:.3g} ({lr_source}), optimizer {optimizer}, {threads} threads, "
                    f"budget {args.time_budget_s:g} s")
        first = initial_loss.measure(bench)
        zero_grad = zero_gradient_parameters(bench)
        fit = overfit.fit_one_batch(bench, optimizer, lr, args.steps, deadline.end, on_progress)
        on_progress(f"fit one batch: {fit['verdict']} after {fit['steps']} steps")
        curve, curvature_error = None, None
        if optimizer in MOMENTUM:
            try:
                curve = curvature.top_eigenvalue(bench, math.inf)
                on_progress(f"curvature: lambda_max {curve['lambda_max']:.4g} after {curve['iterations']} iterations")
            except UserError as error:
                curvature_error = f"curvature not measured ({error})"
        sweep = measure_lr(bench, args, batches, deadline.end, on_progress)
        if curve is not None and curve["lambda_max"] and curve["lambda_max"] > 0:
            sweep["curvature"] = {**curve, "momentum": MOMENTUM[optimizer],
                                  "quadratic_limit_lr": curvature.divergence_lr(curve["lambda_max"], MOMENTUM[optimizer]),
                                  "note": "2(1+momentum)/lambda_max at the initial weights: exact for a quadratic loss; "
                                          "cross-entropy's curvature falls as training goes, so real runs decide"}
        update = update_ratio.measure(bench, optimizer, lr)
        frozen = list(bench.frozen_parameters)
        trainable = len(bench.parameters)
        del bench
    data = {"model": session.loaded.name, "target": args.target, "optimizer": optimizer, "lr": lr, "lr_source": lr_source,
            "loss": args.loss or "the model's output.loss",
            "inputs": "--data batches" if getattr(args, "data", None) else "synthetic inputs (test the wiring, not the LR)",
            "batches_cycled": batches, "threads": threads,
            **first, "overfit": fit, "lr_range": sweep, "update_ratio": update,
            "zero_gradient_parameters": zero_grad, "frozen_parameters": frozen, "trainable_tensors": trainable,
            "curvature_error": curvature_error, "time_budget_s": args.time_budget_s}
    data["findings"] = find_issues(data)
    # What the charts plot, kept in the evidence so every number a review prints is found there.
    data["charts"] = {"overfit": charts.overfit_series(fit), "lr_range": charts.lr_range_series(sweep)}
    return data


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    return run_probe(args)


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def lr_rows(sweep: dict[str, Any]) -> list[list[str]]:
    """The measured LRs: suggestion (or why none), breakdown, with the method's steps."""
    steps = sweep["steps"]
    return [
        ["suggested LR", _number(sweep["suggested_lr"], 3) if sweep["suggested_lr"] is not None
         else f"none: {sweep['no_suggestion_reason']}"],
        ["breakdown LR", _number(sweep["breakdown_lr"], 3) if sweep["breakdown_lr"] is not None
         else ("none up to " + _number(sweep["largest_stable_lr"], 3) if sweep["largest_stable_lr"] is not None
               else "not measured")],
        ["LR search steps", f"range test {steps['range_test']}, then {steps['trials']} runs of {steps['per_trial']}"
                            + (" (cut short by the time budget)" if sweep["cut_short"] else "")],
        *([["quadratic limit", f"{sweep['curvature']['quadratic_limit_lr']:.3g} (2(1+momentum)/lambda_max at the "
                               f"initial weights; shown, not used)"]] if sweep.get("curvature") else []),
    ]


def summary_rows(data: dict[str, Any]) -> list[list[str]]:
    fit, sweep, update = data["overfit"], data["lr_range"], data["update_ratio"]
    expected = (f"{data['expected_initial_loss']:.4g} ({data['expected_rule']})" if data["expected_initial_loss"] is not None
                else data["expected_rule"])
    constant = f", a constant output reaches {_number(fit['constant_loss'])}" if fit.get("constant_loss") is not None else ""
    return [
        ["learning rate", f"{data['lr']:.3g} ({data['lr_source']})"],
        ["initial loss", _number(data["initial_loss"])],
        ["expected initial loss", expected],
        ["fit one batch", f"{fit['verdict'].replace('_', ' ')}: {_number(fit['losses'][0])} -> "
                          f"{_number(fit['final_loss'])} in {fit['steps']} steps{constant}"
                          + (", cut short by the time budget" if fit["cut_short"] else "")],
        *lr_rows(sweep),
        ["median log10(|dw|/|w|)", _number(update["median_log10"], 3)
         + f" (healthy {update['healthy_band_log10'][0]:g} to {update['healthy_band_log10'][1]:g})"],
        ["inputs", data["inputs"]],
    ]


def render_table(data: dict[str, Any], args: argparse.Namespace) -> str:
    parts = [f"Training dynamics of {data['model']} ({data['optimizer']}, loss: {data['loss']})", "",
             render.table(summary_rows(data), ["quantity", "value"]), "", f"LR method: {data['lr_range']['method']}",
             "", "Findings:"]
    parts += [f"  {f['severity']} {f['check']}: {f['text']}" for f in data["findings"]] or ["  none"]
    return "\n".join(parts)


def render_markdown(data: dict[str, Any], args: argparse.Namespace) -> str:
    parts = [f"### Training dynamics (measured): {data['model']}", "",
             render.markdown_table(summary_rows(data), ["quantity", "value"]), "",
             charts.line_chart(data["charts"]["overfit"]), "", charts.line_chart(data["charts"]["lr_range"]), "",
             f"LR method: {data['lr_range']['method']}.", "", "Findings:", ""]
    parts += [f"- **{f['severity']}** `{f['check']}`: {f['text']}" for f in data["findings"]] or ["- none"]
    return "\n".join(parts)


CAPABILITY = cli.Capability(
    name="probe", version=1,
    description="Measured training dynamics on a copy of the model: initial loss, fit one batch, a suggested LR and "
                "the breakdown LR (a line search of real training runs bracketed by an LR range test), update/weight "
                "ratios.",
    add_arguments=add_arguments, analyse=analyse, render_table=render_table, render_markdown=render_markdown)
