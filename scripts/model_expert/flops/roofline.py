"""A per-phase roofline of the step's wall time (`flops.py --mfu`): time = max(FLOPs / (peak x MFU),
bytes / bandwidth), with the bytes of `counting`'s eager traffic model. Its assumptions travel in the JSON.
The default (no --mfu) is the per-kernel model in `kernel_time`.
"""

from __future__ import annotations

from typing import Any

from ..gpus import GpuSpec
from .counting import OPTIMIZER_STEPS, PRECISIONS

DEFAULT_MFU = 0.4
MFU_SOURCE = ("default MFU 0.4: model-FLOPs utilisation of large well-tuned transformer training runs is "
              "about 0.2-0.5 (PaLM paper, Chowdhery et al. 2022: GPT-3 21.3%, Gopher 32.5%, "
              "Megatron-Turing NLG 30.2%, PaLM 46.2%); small models in eager PyTorch usually reach less")


def roofline_seconds(flops: float, bytes_moved: float, peak_flops_per_s: float, mfu: float,
                     bandwidth_bytes_per_s: float) -> dict[str, Any]:
    """max(FLOPs / (peak x MFU), bytes / bandwidth), with both sides and which one bounds."""
    compute_seconds = flops / (peak_flops_per_s * mfu)
    memory_seconds = bytes_moved / bandwidth_bytes_per_s
    return {"flops": flops, "bytes": bytes_moved, "compute_seconds": compute_seconds,
            "memory_seconds": memory_seconds, "seconds": max(compute_seconds, memory_seconds),
            "bound": "compute" if compute_seconds >= memory_seconds else "memory"}


def math_dtype(precision: str, allow_tf32: bool) -> str:
    """The GPU-table column matmuls run at: fp32 (tf32 with --allow-tf32), else the precision's half type."""
    dtype = PRECISIONS[precision].math_dtype
    return "tf32" if dtype == "fp32" and allow_tf32 else dtype


def estimate_step_time(*, forward_flops: int, backward_flops: int, optimizer_flops: int, forward_bytes: int,
                       backward_bytes: int, optimizer_bytes: int, gpu: GpuSpec, dtype: str,
                       mfu: float) -> dict[str, Any]:
    """Roofline per phase on one card; the step is the sum of the three phases."""
    matmul_peak = gpu.peak_for(dtype)
    elementwise_peak = gpu.peak_for("fp32")  # the optimizer runs on CUDA cores, not tensor cores
    bandwidth = gpu.memory_bandwidth_bytes_per_s
    phases = {
        "forward": roofline_seconds(forward_flops, forward_bytes, matmul_peak, mfu, bandwidth),
        "backward": roofline_seconds(backward_flops, backward_bytes, matmul_peak, mfu, bandwidth),
        "optimizer": roofline_seconds(optimizer_flops, optimizer_bytes, elementwise_peak, mfu, bandwidth),
    }
    return {"phases": phases, "step_seconds": sum(p["seconds"] for p in phases.values()),
            "matmul_peak_flops_per_s": matmul_peak, "elementwise_peak_flops_per_s": elementwise_peak}



def throughput(batch: int | None, tokens: int | None, step_seconds: float,
               inference_seconds: float) -> dict[str, float | None]:
    """Samples and tokens per second of a training step and of an inference batch (None where unknown)."""
    def rate(count, seconds):
        return count / seconds if count and seconds > 0 else None
    return {"samples_per_second": rate(batch, step_seconds), "tokens_per_second": rate(tokens, step_seconds),
            "inference_samples_per_second": rate(batch, inference_seconds),
            "inference_tokens_per_second": rate(tokens, inference_seconds)}


def _attention_assumption(kernels: dict[str, int], target: str | None) -> str:
    if target is None:
        return ("scaled_dot_product_attention counted as torch ran it on the model's device, not as the target's "
                "kernels (those are traced on --device meta): a math path's T x T scores are in the byte model")
    if not kernels:
        return "no scaled_dot_product_attention call in the step"
    used = ", ".join(f"{name} x{calls}" for name, calls in sorted(kernels.items()))
    if set(kernels) <= {"math"}:
        return (f"scaled_dot_product_attention counted as the target's {used} path: its T x T score tensors are in "
                f"the byte model")
    return (f"scaled_dot_product_attention counted as the kernels the target picks ({used}, memory/device_rules.py): "
            f"fused kernels never write the T x T scores, so they are not in the byte model")


def time_estimate(result: dict[str, Any], gpu: GpuSpec, precision_name: str, mfu: float = DEFAULT_MFU,
                  allow_tf32: bool = False) -> dict[str, Any]:
    """The roofline step time on GPU for a step_flops() result, with its assumptions in words."""
    precision = PRECISIONS[precision_name]
    dtype = math_dtype(precision_name, allow_tf32)
    moved = result["bytes_moved"]
    estimate = estimate_step_time(forward_flops=result["forward_flops"], backward_flops=result["backward_flops"],
                                  optimizer_flops=result["optimizer_flops"], forward_bytes=moved["forward"],
                                  backward_bytes=moved["backward"], optimizer_bytes=moved["optimizer"],
                                  gpu=gpu, dtype=dtype, mfu=mfu)
    step_seconds = estimate["step_seconds"]
    inference_seconds = estimate["phases"]["forward"]["seconds"]
    batch, tokens = result.get("batch_size"), result.get("tokens_per_batch")
    assumptions = [
        "time per phase = max(FLOPs / (peak x MFU), bytes moved / bandwidth); step = forward + backward + optimizer",
        f"matmul peak: {gpu.name} {dtype} {gpu.peak_for(dtype) / 1e12:g} TFLOP/s (dense, from gpus.py) for "
        f"--precision {precision_name}" + (" with --allow-tf32" if allow_tf32 else ""),
        f"MFU {mfu:g}" + (f"; {MFU_SOURCE}" if mfu == DEFAULT_MFU else " (from --mfu)"),
        f"bandwidth: {gpu.memory_bandwidth_bytes_per_s / 1e9:g} GB/s (gpus.py)",
        "bytes moved per forward/backward phase: every executed non-view aten op reads each tensor input and "
        "writes each output once (eager PyTorch, no fusion, no cache reuse): includes weight reads by matmuls, "
        "activation writes and re-reads, gradient writes; *_like/new_* creation ops write only their output, "
        "empty* ops nothing",
        f"floating tensors counted at {precision.activation_bytes} bytes per element for --precision "
        f"{precision_name}, whatever dtype the model was loaded in (FLOPs do not depend on dtype)",
        f"optimizer step ({result['optimizer']}): {OPTIMIZER_STEPS[result['optimizer']].derivation}; each tensor touched "
        f"once at {precision.parameter_bytes} bytes per element (a fused kernel; foreach temporaries not counted); "
        f"elementwise peak {gpu.peak_for('fp32') / 1e12:g} TFLOP/s (fp32 CUDA cores) x MFU",
        "attention FLOPs are not discounted for causal masks (FlopCounterMode's convention); backward counts "
        "what the traced kernels do (fused kernels: 2.5x forward, recomputing the scores; math: 2x)",
        _attention_assumption(result.get("attention_kernels", {}), result.get("attention_kernels_of")),
        "inference latency = the forward phase of the training step (train-mode forward; eval mode skips dropout)",
        "one card, no data-parallel communication, no host-device copies, no kernel-launch overhead",
    ]
    if precision.weight_cast_bytes_per_parameter:
        assumptions.append(f"autocast: every floating parameter is read at 4 bytes and written as a 2-byte copy "
                           f"once per forward and once per backward ({precision.weight_cast_bytes_per_parameter} "
                           f"bytes per parameter per phase)")
    if dtype not in gpu.peak_flops_per_s:
        assumptions.append(f"{gpu.name} has no {dtype} tensor-core rate in gpus.py: its fp32 rate is used")
    out: dict[str, Any] = {
        "time_model": "roofline",
        "gpu": {"name": gpu.name, "description": gpu.description, "math_dtype": dtype,
                "peak_flops_per_s": estimate["matmul_peak_flops_per_s"],
                "memory_bandwidth_bytes_per_s": gpu.memory_bandwidth_bytes_per_s},
        "mfu": mfu,
        "phases": estimate["phases"],
        "estimated_step_seconds": step_seconds,
        "inference_seconds_per_batch": inference_seconds,
        **throughput(batch, tokens, step_seconds, inference_seconds),
        "assumptions": assumptions,
    }
    return out
