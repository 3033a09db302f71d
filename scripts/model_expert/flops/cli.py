"""`flops.py`: FLOPs of one training step per module and phase (`counting`), and its time on a card
(`kernel_time` by default, the `roofline` with --mfu)."""

from __future__ import annotations

import argparse
from typing import Any

from .. import cli, render
from ..errors import UserError
from ..gpus import GpuSpec, find_gpu
from ..guard import preserved
from ..model_copy import copy_model
from ..runner import ModelCallError
from . import kernel_time
from .counting import StepFlopCounter, _meta_failure, count_step, step_flops
from .roofline import DEFAULT_MFU, math_dtype, throughput, time_estimate

# ---------------------------------------------------------------------------------------------
# CLI.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_model_arguments(parser)
    cli.add_input_arguments(parser)
    cli.add_training_arguments(parser)
    group = parser.add_argument_group("flops")
    group.add_argument("--depth", type=int, default=2, help="module tree depth to list (default: 2)")
    group.add_argument("--gpu", metavar="NAME", help="estimate the step time on this card (see gpus.py), e.g. a100, h100")
    group.add_argument("--mfu", type=float, default=None,
                       help=f"instead of the per-kernel model (the default), a per-phase roofline with this "
                            f"model-FLOPs utilisation for matmuls, 0 < MFU <= 1 (e.g. {DEFAULT_MFU}, "
                            f"typical of tuned large-model training; see the assumptions in the output)")
    group.add_argument("--allow-tf32", action="store_true",
                       help="with --precision fp32: matmuls at the TF32 tensor-core rate "
                            "(torch.backends.cuda.matmul.allow_tf32 = True)")
    cli.add_output_arguments(parser)


def _validate(args: argparse.Namespace) -> GpuSpec | None:
    if args.depth < 0:
        raise UserError(f"--depth must be 0 or more, not {args.depth}")
    if args.mfu is not None and not 0 < args.mfu <= 1:
        raise UserError(f"--mfu must be in (0, 1], not {args.mfu}; e.g. --mfu 0.4 for 40% of peak")
    if args.allow_tf32 and args.precision != "fp32":
        raise UserError(f"--allow-tf32 applies to --precision fp32 only, not {args.precision}; drop one of them")
    if args.gpu is None:
        return None
    gpu = find_gpu(args.gpu)
    if args.target_device != "cuda":
        raise UserError(f"--gpu {args.gpu} estimates a CUDA card but --target-device is {args.target_device}; "
                        f"drop --target-device or --gpu")
    return gpu


def _known_dims(session: cli.Session) -> dict[str, int]:
    return {**session.input_source.resizable_dims, **session.dim_overrides}


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    gpu = _validate(args)
    session = cli.open_session(args)
    inputs = session.build_inputs()
    model = session.model
    try:
        # The target's kernels can be traced only on meta tensors (or on the target itself): a model built
        # elsewhere is counted on a meta copy, so one model gets one count for one target whatever --device.
        if args.device in ("meta", args.target_device):
            counter = count_step(model, inputs, session.loss_fn, session.loaded.name, target_device=args.target_device)
        else:
            counter = _count_on_meta_copy(session, args.target_device)
    except ModelCallError as error:
        if args.device == "meta" and _meta_failure(error):
            raise UserError(f"{error}. On --device meta tensors have shapes but no values, so a data-dependent "
                            f"op (.item(), nonzero, boolean-mask indexing, value-dependent control flow) cannot "
                            f"run; rerun with --device cpu (and small --batch-size/--dim if memory is short)") from error
        raise

    dims = _known_dims(session)
    result: dict[str, Any] = {"target": args.target, "model": type(session.model).__name__, "device": args.device,
                              "inputs": inputs.describe()}
    result.update(step_flops(counter, model, args.precision, args.optimizer, args.depth))
    result["batch_size"] = dims.get("B")
    result["tokens_per_batch"] = dims["B"] * dims["T"] if "B" in dims and "T" in dims else None
    if gpu is not None and args.mfu is not None:
        result.update(time_estimate(result, gpu, args.precision, args.mfu, args.allow_tf32))
    elif gpu is not None:
        result.update(kernel_time_estimate(result, session, gpu, args))
    return result


def kernel_time_estimate(result: dict[str, Any], session: cli.Session, gpu: GpuSpec,
                         args: argparse.Namespace) -> dict[str, Any]:
    """The per-kernel step time (kernel_time.py) on a meta copy; the roofline at the default MFU where the step
    cannot be traced on meta tensors (a data-dependent op), with that said."""
    try:
        kernels = kernel_time.trace_step(session.model, session.build_inputs(device="meta"), session.loss_fn,
                                         args.precision, args.optimizer, session.loaded.name, args.allow_tf32)
    except ModelCallError as error:
        out = time_estimate(result, gpu, args.precision, DEFAULT_MFU, args.allow_tf32)
        out["time_model"] = "roofline"
        out["assumptions"].insert(0, f"the per-kernel model needs the step on meta tensors, which failed "
                                     f"({str(error).splitlines()[0][:160]}): roofline at MFU {DEFAULT_MFU:g} instead")
        return out
    timed = kernel_time.step_time(kernels, gpu)
    step_seconds = timed["step_seconds"]
    inference_seconds = timed["phases"]["forward"]["seconds"]
    batch, tokens = result.get("batch_size"), result.get("tokens_per_batch")
    return {
        "time_model": "kernels",
        "gpu": {"name": gpu.name, "description": gpu.description, "math_dtype": math_dtype(args.precision, args.allow_tf32),
                "peak_flops_per_s": gpu.peak_for(math_dtype(args.precision, args.allow_tf32)),
                "memory_bandwidth_bytes_per_s": gpu.memory_bandwidth_bytes_per_s},
        "mfu": None,
        "phases": timed["phases"],
        "estimated_step_seconds": step_seconds,
        "inference_seconds_per_batch": inference_seconds,
        **throughput(batch, tokens, step_seconds, inference_seconds),
        "assumptions": kernel_time.describe() + [
            "inference latency = the forward phase of the training step (train-mode forward; eval mode skips dropout)",
            "one card, no data-parallel communication, no host-device copies, no data loading"],
    }


def _count_on_meta_copy(session: cli.Session, target_device: str) -> StepFlopCounter:
    """The step counted with TARGET_DEVICE's kernels on a meta copy. Where the model reads values (.item(),
    data-dependent shapes) meta could only assume them, so the count is taken on the built model with its
    device's kernels instead (attention_kernels_of says whose)."""
    with preserved(session.model):
        work = copy_model(session.model, "meta")
    try:
        counter = count_step(work, session.build_inputs(device="meta"), session.loss_fn, session.loaded.name,
                             target_device=target_device)
        if not counter.scalar_reads.reads:
            return counter
    except ModelCallError as error:
        if not _meta_failure(error):
            raise
    return count_step(session.model, session.build_inputs(), session.loss_fn, session.loaded.name)


# ---------------------------------------------------------------------------------------------
# Renderers (no arithmetic beyond formatting and shares).


def _seconds(value: float) -> str:
    """0.0374 -> '37.4 ms'; in s, ms or us with three significant figures."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _share(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _summary_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = [["Forward", render.flops(data["forward_flops"]), render.count(data["forward_flops"])],
            ["Backward", render.flops(data["backward_flops"]), render.count(data["backward_flops"])],
            ["Forward + backward", render.flops(data["step_flops"]), render.count(data["step_flops"])],
            [f"Optimizer step ({data['optimizer']}, elementwise)", render.flops(data["optimizer_flops"]),
             render.count(data["optimizer_flops"])]]
    for phase, size in data["bytes_moved"].items():
        rows.append([f"Bytes moved, {phase} ({data['precision']})", render.human_bytes(size), render.count(size)])
    return rows


def _time_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for phase, p in data["phases"].items():
        launch = f"{_seconds(p['launch_seconds'])} ({p['launches']:,} launches)" if "launch_seconds" in p else ""
        rows.append([phase, _seconds(p["compute_seconds"]), _seconds(p["memory_seconds"]), _seconds(p["seconds"]),
                     p["bound"], launch])
    rows.append(["step", "", "", _seconds(data["estimated_step_seconds"]), "", ""])
    return rows


def _throughput_lines(data: dict[str, Any]) -> list[str]:
    how = f"MFU {data['mfu']:g}" if data.get("mfu") is not None else "per-kernel model"
    lines = [f"Estimated training step on {data['gpu']['description']} ({data['gpu']['math_dtype']}, {how}): "
             f"{_seconds(data['estimated_step_seconds'])}; inference forward "
             f"{_seconds(data['inference_seconds_per_batch'])} per batch"]
    if data.get("samples_per_second"):
        lines.append(f"Training: {data['samples_per_second']:,.1f} samples/s"
                     + (f", {data['tokens_per_second']:,.0f} tokens/s" if data.get("tokens_per_second") else ""))
    return lines


def _module_rows(data: dict[str, Any]) -> list[list[str]]:
    total = data["step_flops"]
    return [[m["name"], m["type"],  # the full path: tabulate strips indentation, so children would read as siblings
             render.flops(m["forward_flops"]), render.flops(m["backward_flops"]),
             _share(m["forward_flops"] + m["backward_flops"], total)] for m in data["modules"]]


def _uncounted_rows(data: dict[str, Any]) -> list[list[str]]:
    return [[op, render.count(n), data["uncounted_op_rules"][op]] for op, n in data["uncounted_ops"].items()]


def _data_dependent_text(data: dict[str, Any]) -> str:
    return (f"Assumed: {data['data_dependent_reads']} data-dependent read(s) (.item(), bool(tensor)) on meta tensors "
            f"returned True / 1 / 1.0; the branch they chose is the one counted")


def render_table(data: dict[str, Any], args: argparse.Namespace) -> str:
    parts = [f"FLOPs of one training step of {data['model']} ({data['target']}), device {data['device']}", "",
             render.table(_summary_rows(data), ["quantity", "value", "exact"]), "",
             render.table(_module_rows(data), ["module", "type", "forward", "backward", "share"])]
    outside = data["outside_model_flops"]
    if outside["forward"] or outside["backward"]:
        parts += ["", f"Outside the model (loss): forward {render.flops(outside['forward'])}, "
                      f"backward {render.flops(outside['backward'])}"]
    if data["unsupported_ops"]:
        parts += ["", "WARNING: ops with no FLOP formula (their FLOPs are missing from the totals): "
                  + ", ".join(f"{op} x{n}" for op, n in data["unsupported_ops"].items())]
    if data.get("data_dependent_reads"):
        parts += ["", _data_dependent_text(data)]
    parts += ["", "Ops not counted (calls; rule)", render.table(_uncounted_rows(data), ["op", "calls", "rule"])]
    if "phases" in data:
        parts += ["", *_throughput_lines(data), "",
                  render.table(_time_rows(data), ["phase", "compute", "memory", "time", "bound", "launch floor"]), "",
                  "Assumptions:", *[f"- {a}" for a in data["assumptions"]]]
    return "\n".join(parts)


def render_markdown(data: dict[str, Any], args: argparse.Namespace) -> str:
    parts = [f"### FLOPs: {data['model']}", "",
             render.markdown_table(_summary_rows(data), ["quantity", "value", "exact"]), "",
             render.markdown_table([[f"`{m['name']}`", m["type"], render.flops(m["forward_flops"]),
                                     render.flops(m["backward_flops"])] for m in data["modules"]],
                                   ["module", "type", "forward", "backward"])]
    if data.get("data_dependent_reads"):
        parts += ["", _data_dependent_text(data)]
    if data["unsupported_ops"]:
        parts += ["", "**Not counted, no formula:** " + ", ".join(f"`{op}` x{n}" for op, n in data["unsupported_ops"].items())]
    if "phases" in data:
        parts += ["", *_throughput_lines(data), "",
                  render.markdown_table(_time_rows(data), ["phase", "compute", "memory", "time", "bound", "launch floor"]), "",
                  "Assumptions:", "", *[f"- {a}" for a in data["assumptions"]]]
    return "\n".join(parts)


CAPABILITY = cli.Capability(
    name="flops", version=1,
    description="FLOPs of one training step (forward, backward, optimizer) per module via FlopCounterMode, "
                "ops without a formula listed, and a roofline step-time estimate with --gpu.",
    add_arguments=add_arguments, analyse=analyse, render_table=render_table, render_markdown=render_markdown)
