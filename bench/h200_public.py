#!/usr/bin/env python3
"""The CUDA target against the public H200 measurements (tests/fixtures/gpu_measurements, torch 2.11 on an
NVIDIA H200): training-step peak, reserved peak and step time, estimated on meta tensors, beside what was
measured; the step time also as the old roofline (FLOPs / (peak x 0.4) per phase) for contrast.

The configurations that need torchvision (resnet50, vit_b_16, convnext_tiny) run when torchvision==0.28.0 is
installed (pip install --no-deps --target .vision torchvision==0.28.0, beside torch 2.13.0); PyPI's wheel is built for CUDA and its C++ ops do not
load beside the CPU torch, so bench/vision_import.py imports it without them (the models are pure Python; only
detection ops such as nms need them). Without torchvision the three are listed as absent.
Usage: python bench/h200_public.py [--out bench/results_h200_public.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "gpu_measurements")
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, FIXTURES)

import torch  # noqa: E402

import cases  # noqa: E402
from vision_import import torchvision_status  # noqa: E402
from model_expert import flops  # noqa: E402
from model_expert.flops import kernel_time  # noqa: E402
from model_expert.gpus import find_gpu  # noqa: E402
from model_expert.inputs import ModelInputs  # noqa: E402
from model_expert.memory import EstimateOptions, estimate_memory  # noqa: E402

PRECISION = {"bf16-params": "bf16"}


def percent(estimate: float, measured: float) -> float:
    return 100.0 * (estimate - measured) / measured


def run_case(name: str, gpu) -> dict | None:
    builder, precision, optimizer = cases.CASES[name]
    precision = PRECISION.get(precision, precision)
    torch.manual_seed(0)
    try:
        with torch.device("meta"):
            model, args, kwargs, loss = builder(None)
    except ImportError as error:
        print(f"{name}: skipped ({error})", file=sys.stderr)
        return None
    inputs = ModelInputs(args=args, kwargs=kwargs)
    estimate = estimate_memory(model, lambda device: inputs, loss,
                               EstimateOptions(optimizer=optimizer, precision=precision, target_device="cuda",
                                               gpu_name=gpu.name, inference=False), name)
    step = kernel_time.step_time(kernel_time.trace_step(model, inputs, loss, precision, optimizer, name), gpu)
    counter = flops.count_step(model, inputs, loss, name, target_device="cuda")
    roofline = flops.time_estimate(flops.step_flops(counter, model, precision, optimizer), gpu, precision)
    return {"precision": precision, "optimizer": optimizer, "peak": estimate.peak_bytes,
            "reserved": estimate.reserved_peak_bytes, "step_seconds": step["step_seconds"],
            "roofline_seconds": roofline["estimated_step_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results_h200_public.md"))
    args = parser.parse_args()
    with open(os.path.join(FIXTURES, "h200.json")) as handle:
        measured = json.load(handle)
    gpu = find_gpu("h200")
    vision = torchvision_status()
    print(vision, flush=True)
    fitted, checked = [], []
    rows, errors = [], {"peak": [], "reserved": [], "time": [], "roofline": []}
    for name in cases.CASES:
        result = run_case(name, gpu)
        if result is None:
            rows.append(f"| {name} | absent: {vision} |" + " |" * 9)
            continue
        m = measured["cases"][name]
        e = {"peak": percent(result["peak"], m["peak_steady_step"]),
             "reserved": percent(result["reserved"], m["reserved_peak"]),
             "time": percent(result["step_seconds"], m["step_ms_median"] / 1e3),
             "roofline": percent(result["roofline_seconds"], m["step_ms_median"] / 1e3)}
        for key, value in e.items():
            errors[key].append(value)
        role = "fit" if name in kernel_time.FITTED_ON else "check"
        (checked if role == "check" else fitted).append(e["time"])
        rows.append(f"| {name} ({role}) | {m['peak_steady_step'] / 2**20:,.0f} | {result['peak'] / 2**20:,.0f} | {e['peak']:+.1f}% "
                    f"| {m['reserved_peak'] / 2**20:,.0f} | {result['reserved'] / 2**20:,.0f} | {e['reserved']:+.1f}% "
                    f"| {m['step_ms_median']:.1f} | {result['step_seconds'] * 1e3:.1f} | {e['time']:+.1f}% "
                    f"| {e['roofline']:+.1f}% |")
        print(rows[-1], flush=True)
    summary = " | ".join(f"{key}: median |error| {statistics.median(abs(v) for v in values):.1f}%, worst "
                         f"{max(abs(v) for v in values):.1f}%" for key, values in errors.items() if values)
    for label, values in (("fitted on", fitted), ("checked on", checked)):
        if values:
            summary += (f" | step time {label} {len(values)}: median |error| "
                        f"{statistics.median(abs(v) for v in values):.1f}%, worst {max(abs(v) for v in values):.1f}%")
    lines = [f"CUDA target vs H200 measurements (torch {measured['env']['torch']}, {measured['env']['gpu']}); "
             f"estimates on meta tensors with torch {torch.__version__}", "",
             "| configuration | peak MiB measured | estimated | error | reserved MiB measured | estimated | error "
             "| step ms measured | per-kernel model | error | roofline (MFU 0.4) error |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, "", summary, "", vision]
    with open(args.out, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    print(summary)


if __name__ == "__main__":
    main()
