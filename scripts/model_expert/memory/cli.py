"""memory.py: peak memory of one training step and of inference, its breakdown, what fits."""

from __future__ import annotations

import argparse
from typing import Any

from .. import cli, render
from ..gpus import CUDA_CONTEXT_BYTES, CUDA_CONTEXT_SOURCE, find_gpu, usable_memory_assumption
from ..inputs import BATCH_DIM_NAME
from .device_rules import rules_gpu
from .estimate import EstimateOptions, estimate_memory
from .search import largest_batch
from .distributed import distributed_estimate
from .sharding import STRATEGIES, distributed_what_if


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_model_arguments(parser)
    cli.add_input_arguments(parser)
    cli.add_training_arguments(parser)
    group = parser.add_argument_group("memory")
    group.add_argument("--gradient-checkpointing", action="store_true",
                       help="call the model's own gradient_checkpointing_enable() (on a copy) first")
    group.add_argument("--gpu", metavar="NAME", help="budget = this card's memory (e.g. a100-80gb, h100, rtx4090); on "
                                                     "the CUDA target the CUDA context and the caching allocator's "
                                                     "reserve are counted against it")
    group.add_argument("--budget-bytes", type=int, metavar="N",
                       help="the GPU memory the process may hold, in bytes (overrides --gpu's budget); on the CUDA "
                            "target it must hold the CUDA context and the allocator's reserved segments, on the CPU "
                            "target the allocated bytes")
    group.add_argument("--world-size", type=int, metavar="N", help="data-parallel GPUs: per-GPU memory and traffic")
    group.add_argument("--strategy", choices=tuple(STRATEGIES), help="with --world-size (default: ddp)")
    group.add_argument("--shard-modules", metavar="CLASS,...",
                       help="with --strategy zero2/zero3/fsdp: the module classes fully_shard wraps (default: every "
                            "element of the model's nn.ModuleLists), then the root")
    group.add_argument("--measure", action="store_true",
                       help="also run the real step on the target device (cuda, or cpu) and print the peak its "
                            "allocator measured beside the estimate")
    cli.add_output_arguments(parser)


def _validate(args: argparse.Namespace) -> None:
    if args.budget_bytes is not None and args.budget_bytes <= 0:
        raise cli.UserError(f"--budget-bytes must be a positive number of bytes, not {args.budget_bytes}")
    if args.world_size is not None and args.world_size < 1:
        raise cli.UserError(f"--world-size must be 1 or more, not {args.world_size}")
    if args.strategy and args.world_size is None:
        raise cli.UserError(f"--strategy {args.strategy} needs --world-size N")
    if args.shard_modules is not None and (args.strategy or "ddp") not in ("zero2", "zero3", "fsdp"):
        raise cli.UserError("--shard-modules chooses FSDP's units: use it with --world-size N --strategy "
                            "zero2, zero3 or fsdp")
    if args.measure:
        from .measure import require_device
        require_device(args.target_device)
        if args.device == "meta":
            raise cli.UserError("--measure runs the real step and needs real weights; --device meta has none: "
                                "drop --device meta (the estimate still runs on meta tensors)")


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    _validate(args)
    gpu = find_gpu(args.gpu) if args.gpu else None
    session = cli.open_session(args)
    name = session.loaded.name

    cuda_process = args.target_device == "cuda"
    if args.budget_bytes is not None:
        budget = args.budget_bytes
    elif gpu is not None:
        budget = gpu.memory_bytes if cuda_process else gpu.usable_memory_bytes()
    else:
        budget = None
    # The estimate's own measured error is kept back whatever the budget's source (a largest batch above the real
    # limit is an out-of-memory crash). One CUDA process under the budget: its caching allocator may reserve what
    # the context leaves, less that margin.
    margin_fraction, margin_source = ESTIMATE_MARGIN[args.target_device]
    usable_budget = budget
    if budget is not None and cuda_process:
        usable_budget = CUDA_CONTEXT_BYTES + int((budget - CUDA_CONTEXT_BYTES) * (1 - margin_fraction))
    elif budget is not None:
        usable_budget = int(budget * (1 - margin_fraction))
    capacity = usable_budget - CUDA_CONTEXT_BYTES if budget is not None and cuda_process and args.world_size is None else None

    def options(inference: bool = True) -> EstimateOptions:
        return EstimateOptions(optimizer=args.optimizer, precision=args.precision, target_device=args.target_device,
                               gpu_name=gpu.name if gpu else None, gradient_checkpointing=args.gradient_checkpointing,
                               inference=inference, allocator_capacity_bytes=capacity)

    def build(batch: int | None):
        extra = {BATCH_DIM_NAME: batch} if batch is not None else None
        return lambda device: session.build_inputs(device=device, extra_overrides=extra)

    estimate = estimate_memory(session.model, build(None), session.loss_fn, options(), name)
    batch_size = session.dim_overrides.get(BATCH_DIM_NAME, session.input_source.resizable_dims.get(BATCH_DIM_NAME))
    data: dict[str, Any] = {
        "target": args.target, "model": type(session.model).__name__, "batch_size": batch_size,
        "optimizer": args.optimizer, "precision": args.precision, "target_device": args.target_device,
        "gradient_checkpointing": args.gradient_checkpointing,
        # The card whose rules (cuBLAS workspace) the CUDA estimate used; the headline names it.
        "rules_gpu": rules_gpu(gpu.name if gpu else None) if args.target_device == "cuda" else None,
        "rules_gpu_is_default": gpu is None,
        "peak_bytes": estimate.peak_bytes, "peak_phase": estimate.peak_phase, "breakdown": estimate.breakdown,
        "breakdown_detail": estimate.breakdown_detail,
        # The breakdown is what is alive at the peak; these are the parts at their full size (unrounded):
        # every grad once backward is done, every saved activation once forward is done.
        "full_bytes": {"params": estimate.param_bytes, "grads": estimate.trainable_param_bytes,
                       "activations": estimate.activation_bytes_end_of_forward},
        "activation_bytes_end_of_forward": estimate.activation_bytes_end_of_forward,
        "inference_peak_bytes": estimate.inference_peak_bytes,
        "param_bytes": estimate.param_bytes, "trainable_param_bytes": estimate.trainable_param_bytes,
        "attention_kernels": estimate.sdpa_backends, "assumptions": list(estimate.assumptions),
        "unmodelled_buffers": list(estimate.unmodelled_buffers),
    }
    if estimate.reserved_peak_bytes is not None:
        data["reserved_peak_bytes"] = estimate.reserved_peak_bytes
        data["cuda_context_bytes"] = CUDA_CONTEXT_BYTES
        data["process_peak_bytes"] = estimate.reserved_peak_bytes + CUDA_CONTEXT_BYTES
        data["assumptions"].append(RESERVED_HOW + f"; the CUDA context, {CUDA_CONTEXT_BYTES:,} B, is "
                                   f"{CUDA_CONTEXT_SOURCE}")

    strategy = args.strategy or "ddp"
    shard_classes = tuple(c.strip() for c in args.shard_modules.split(",") if c.strip()) \
        if args.shard_modules else None
    if shard_classes:
        present = {type(m).__name__ for m in session.model.modules()}
        missing = [c for c in shard_classes if c not in present]
        if missing:
            raise cli.UserError(f"--shard-modules: {name} has no module of class {', '.join(missing)}; name classes "
                                f"that occur in it (e.g. its transformer block)")

    def per_rank(batch: int | None) -> dict[str, Any]:
        def closed_form() -> dict[str, Any]:
            single = estimate_memory(session.model, build(batch), session.loss_fn, options(False), name)
            return distributed_what_if(single.breakdown, single.param_bytes, single.trainable_param_bytes,
                                       strategy, args.world_size)
        return distributed_estimate(session.model, build(batch), session.loss_fn, options(False), strategy,
                                    args.world_size, shard_classes, name, fallback=closed_form)

    if args.world_size is not None:
        what_if = per_rank(None)
        data.update({"world_size": args.world_size, "strategy": strategy, "distributed_method": what_if["method"],
                     "per_gpu_peak_bytes": what_if["per_gpu_peak_bytes"],
                     "per_gpu_breakdown": what_if["per_gpu_breakdown"],
                     "communication_bytes_per_step": what_if["communication_bytes_per_step"]})
        for key in ("busiest_rank", "per_gpu_peak_phase", "communication_by_collective", "fallback_reason"):
            if key in what_if:
                data[key] = what_if[key]
        data["assumptions"].extend(what_if["assumptions"])

    def process_bytes(result, per_gpu_peak_bytes: int | None = None) -> int:
        """What the process holds at the step's peak: on CUDA the allocator's reserved segments (the per-GPU
        allocated peak scaled by this run's reserved / allocated, with --world-size) + the CUDA context. Under a
        budget it is at most the budget exactly when the allocator, capped there, never runs out (it frees its
        cached segments and retries first, as a capped process does): the uncapped figure is clamped to that."""
        allocated = per_gpu_peak_bytes if per_gpu_peak_bytes is not None else result.peak_bytes
        if not cuda_process:
            return allocated
        reserved = result.reserved_peak_bytes
        if per_gpu_peak_bytes is not None:
            reserved = -(-per_gpu_peak_bytes * result.reserved_peak_bytes // result.peak_bytes)
        held = reserved + CUDA_CONTEXT_BYTES
        if result.fits_allocator_capacity is None:
            return held
        return min(held, usable_budget) if result.fits_allocator_capacity else max(held, usable_budget + 1)

    if gpu is not None:
        data["gpu_memory_bytes"] = gpu.memory_bytes
    if budget is not None:
        needed = process_bytes(estimate, data.get("per_gpu_peak_bytes"))
        data.update({"budget_bytes": budget, "usable_budget_bytes": usable_budget, "gpu": gpu.name if gpu else None,
                     "fits": needed <= usable_budget,
                     "margin": {"fraction": margin_fraction, "bytes": budget - usable_budget, "source": margin_source,
                                "budget_source": "--budget-bytes" if args.budget_bytes is not None else "--gpu"}})
        source = "--budget-bytes" if args.budget_bytes is not None else f"{gpu.name} card memory"
        if cuda_process:
            data["assumptions"].append(f"budget: {budget:,} B the process may hold ({source}); "
                                       f"{margin_fraction:.0%} of what the CUDA context leaves is kept back "
                                       f"for the estimate's error ({margin_source}), so "
                                       f"{usable_budget:,} B is searched; a batch fits when "
                                       f"the caching allocator, allowed that less the CUDA context, never runs "
                                       f"out: its reserved peak fits, or it does once its cached free segments are "
                                       f"released, as the real allocator does before reporting out of memory")
        else:
            if args.budget_bytes is None:
                data["assumptions"].append(usable_memory_assumption(gpu))
            data["assumptions"].append(f"budget: {budget:,} B ({source}); {100 * margin_fraction:g}% is kept back for "
                                       f"the estimate's error ({margin_source}), so {usable_budget:,} B is searched")
        if not getattr(args, "search_max_batch", True):
            pass  # report.py's second run, at the batch it recommends: the search ran in its first
        elif session.input_source.batch_dim_name is None:
            data["max_batch_size"] = None
            data["max_batch_size_note"] = ("the batch cannot be resized: name the batch dim B in --input "
                                           "(float32[B=32,...]) or give the --inputs factory a batch_size keyword")
        else:
            def cost(batch: int) -> int:
                per_gpu_peak = per_rank(batch)["per_gpu_peak_bytes"] if args.world_size is not None else None
                if per_gpu_peak is not None and not cuda_process:
                    return per_gpu_peak
                return process_bytes(estimate_memory(session.model, build(batch), session.loss_fn, options(False), name),
                                     per_gpu_peak)
            best, seen = largest_batch(cost, usable_budget)
            data["max_batch_size"] = best
            data["batch_estimates"] = {str(k): v for k, v in sorted(seen.items())}

    if args.measure:
        from .measure import measure_step
        measured = measure_step(session.model, build(None), session.loss_fn, args.optimizer, args.precision,
                                args.gradient_checkpointing, name, device=args.target_device)
        data["measured_device"] = args.target_device
        data["measured_peak_bytes"] = measured["peak_bytes"]
        data["measured_inference_peak_bytes"] = measured["inference_peak_bytes"]
        data["error_percent"] = percent_error(estimate.peak_bytes, measured["peak_bytes"])
        data["inference_error_percent"] = percent_error(estimate.inference_peak_bytes, measured["inference_peak_bytes"])
        if "reserved_peak_bytes" in measured:
            data["measured_reserved_peak_bytes"] = measured["reserved_peak_bytes"]
        data["assumptions"].append(MEASURED_HOW[args.target_device])
    return data


# Kept back from every budget (--gpu or --budget-bytes) so that the largest batch errs low, by the estimate's own
# worst measured under-estimate on its target.
CUDA_ESTIMATE_ALLOWANCE = 0.05
CUDA_ESTIMATE_ALLOWANCE_SOURCE = ("the CUDA target's worst reserved-peak under-estimate on the public H200 set is "
                                  "-4.1 %, bench/h200_public.py")
CPU_ESTIMATE_ALLOWANCE = 0.025
CPU_ESTIMATE_ALLOWANCE_SOURCE = ("the CPU target's worst under-estimate against the CPU allocator is -2.2 % (an LSTM; "
                                 "bench/memory_validation.py --device cpu, 19 configurations)")
ESTIMATE_MARGIN = {"cuda": (CUDA_ESTIMATE_ALLOWANCE, CUDA_ESTIMATE_ALLOWANCE_SOURCE),
                   "cpu": (CPU_ESTIMATE_ALLOWANCE, CPU_ESTIMATE_ALLOWANCE_SOURCE)}

RESERVED_HOW = ("reserved: the step's allocations and frees (a full warm-up step, then the steady step) replayed "
                "through PyTorch's CUDA caching allocator as c10/cuda/CUDACachingAllocator.cpp defines it (512 B "
                "blocks; requests <= 1 MiB from 2 MiB segments, < 10 MiB from 20 MiB segments, larger ones rounded "
                "to 2 MiB; best-fit reuse, splitting and merging of cached blocks): memory/cuda_allocator.py")

MEASURED_HOW = {
    "cuda": "measured: torch.cuda.max_memory_allocated() of the steady step (after warm-up steps until the "
            "optimizer state exists), above what was allocated before the model was copied to the GPU",
    "cpu": "measured: the CPU allocator's own allocation and free events (torch.profiler, profile_memory=True), "
           "summed from before the model was copied; the CPU target has no allocator rounding",
}


def percent_error(estimate: int | None, measured: int | None) -> float | None:
    """(estimate - measured) / measured in percent: positive over-estimates, negative under-estimates; None
    where either side is missing (or nothing was measured)."""
    if estimate is None or not measured or measured <= 0:
        return None
    return 100.0 * (estimate - measured) / measured


# Table labels for the breakdown keys (the JSON keys stay as they are); every key of the CUDA breakdown is
# allocator-rounded, params also holds the buffers (breakdown_detail keeps them apart).
BREAKDOWN_LABELS = {"params": "params (+ buffers, rounded to allocator blocks)",
                    "activations": "activations (saved for backward)"}
# What the full_bytes figure beside an alive-at-the-peak part is: saved activations peak at the end of the
# forward, and during backward the alive part can exceed that (rounding, the backward's own saved outputs).
FULL_SIZE_LABELS = {"params": "full size", "grads": "full size", "activations": "saved by the end of forward"}


def _largest_batch_text(data: dict[str, Any], b) -> str:
    best = data["max_batch_size"]
    if best is None:
        return "unknown: " + data["max_batch_size_note"]
    if best == 0:
        return f"none: batch 1 does not fit (needs {b(data['batch_estimates']['1'])})"
    return str(best)


def _error_text(error_percent: float | None) -> str:
    return "" if error_percent is None else f", estimate error {error_percent:+.1f}%"


def _batch_text(batch_size: Any) -> str:
    return f"batch {batch_size}" if batch_size is not None else \
        f"batch not named: name a dim {BATCH_DIM_NAME} in --input to resize it"


def _rows(data: dict[str, Any]) -> list[list[str]]:
    def b(value):
        return f"{render.human_bytes(value)} ({render.count(value)} B)"
    rows = [["Training step peak", b(data["peak_bytes"]) + f", during {data['peak_phase']}"],
            ["Of which alive at the peak:", ""]]
    full = data.get("full_bytes", {})
    for key, value in data["breakdown"].items():
        label = BREAKDOWN_LABELS.get(key, key)
        if data["target_device"] == "cpu":
            label = label.replace(", rounded to allocator blocks", "")
        rows.append([f"  {label}", b(value) + (f"; {FULL_SIZE_LABELS[key]} {render.human_bytes(full[key])}" if key in full else "")])
    if "reserved_peak_bytes" in data:
        rows.append(["Reserved by the caching allocator at its peak", b(data["reserved_peak_bytes"])])
        rows.append(["  + CUDA context (measured)", b(data["cuda_context_bytes"])])
        rows.append(["  = GPU memory the process holds", b(data["process_peak_bytes"])])
    rows.append(["Saved for backward at end of forward", b(data["activation_bytes_end_of_forward"])])
    rows.append(["Inference peak (eval, no grad)", b(data["inference_peak_bytes"])])
    if "measured_peak_bytes" in data:
        where = data["measured_device"].upper() if data["measured_device"] == "cuda" else data["measured_device"]
        rows.append([f"Measured training peak ({where})",
                     b(data["measured_peak_bytes"]) + _error_text(data["error_percent"])])
        rows.append([f"Measured inference peak ({where})",
                     b(data["measured_inference_peak_bytes"]) + _error_text(data["inference_error_percent"])])
        if "measured_reserved_peak_bytes" in data:
            rows.append(["Measured reserved peak (allocated + allocator cache)", b(data["measured_reserved_peak_bytes"])])
    if "per_gpu_peak_bytes" in data:
        how = "busiest rank, torch's engine" if data.get("distributed_method") == "engine" else "closed form: fallback"
        rows.append([f"Per GPU ({data['strategy']}, {data['world_size']} GPUs; {how})", b(data["per_gpu_peak_bytes"])])
        for key, value in data["per_gpu_breakdown"].items():
            rows.append([f"  per GPU {key}", b(value)])
        rows.append(["Communicated per step per GPU", b(data["communication_bytes_per_step"])])
    if "budget_bytes" in data:
        if "gpu_memory_bytes" in data and data.get("gpu"):
            rows.append([f"GPU memory ({data['gpu']})", b(data["gpu_memory_bytes"])])
        cuda_target = data["target_device"] == "cuda"
        rows.append(["Budget" + (" (the process: context + reserved)" if cuda_target else
                                 " (less CUDA context and allocator margin)" if data.get("gpu") else ""),
                     b(data["budget_bytes"])])
        if data.get("usable_budget_bytes", data["budget_bytes"]) != data["budget_bytes"]:
            margin = data.get("margin") or {}
            rows.append([f"  searched ({100 * margin.get('fraction', 0):g}% kept back for the estimate's error)",
                         b(data["usable_budget_bytes"])])
        rows.append(["Fits", "yes" if data["fits"] else "no"])
        rows.append(["Largest batch that fits", _largest_batch_text(data, b)])
    return rows


def _rules_text(data: dict[str, Any]) -> str:
    if not data.get("rules_gpu"):
        return ""
    return f" ({data['rules_gpu']} rules{'; the default without --gpu' if data['rules_gpu_is_default'] else ''})"


def render_table(data: dict[str, Any], args: argparse.Namespace) -> str:
    head = (f"Memory of {data['model']} ({data['target']}): {_batch_text(data['batch_size'])}, {data['optimizer']}, "
            f"{data['precision']}, target {data['target_device']}" + _rules_text(data)
            + (", gradient checkpointing" if data["gradient_checkpointing"] else ""))
    return "\n".join([head, "", render.table(_rows(data), []), "", "Assumptions:"]
                     + [f"- {line}" for line in data["assumptions"]])


def render_markdown(data: dict[str, Any], args: argparse.Namespace) -> str:
    return "\n".join([f"### Memory: {data['model']}, target {data['target_device']}{_rules_text(data)}", "", render.markdown_table(_rows(data), ["quantity", "value"]), "",
                      "Assumptions:", ""] + [f"- {line}" for line in data["assumptions"]])


CAPABILITY = cli.Capability(
    name="memory", version=1,
    description="Peak memory of one training step (and of inference) with its breakdown, estimated on meta tensors "
                "for the target device; what fits a GPU; distributed what-ifs.",
    add_arguments=add_arguments, analyse=analyse, render_table=render_table, render_markdown=render_markdown)
