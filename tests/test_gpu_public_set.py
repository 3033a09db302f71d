"""The CUDA target against real H200 runs: the five public configurations that need no torchvision, and the
three that do (ResNet-50, ViT-B/16, ConvNeXt-T) where torchvision imports (bench/vision_import.py: not in CI)
(tests/fixtures/gpu_measurements: builders, protocol and every measured figure, torch 2.11 on an NVIDIA H200).

Each is built on meta tensors with the fixture's own builder and run through the engines memory.py and
flops.py --gpu h200 use (estimate_memory for the CUDA target; kernel_time.trace_step / step_time). The
bounds are stated in the README beside the errors they currently hold:
- training-step peak (max_memory_allocated of the steady step): every |error| <= 5 %, median <= 2 %;
- reserved peak (the caching allocator's segments, max_memory_reserved): every error within +-5 % (the five
  without torchvision; ConvNeXt-T's is -8.8 %, README);
- step time (median of 5 synchronised steady steps): every |error| <= 10 %, median <= 5 %.
"""

import json
import os
import statistics
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "gpu_measurements")
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, FIXTURES)
sys.path.insert(0, os.path.join(REPO, "bench"))

import importlib.util  # noqa: E402

# Loaded by path under its own name: the contract corpus (bench/contract_corpus) has a `cases` module of its own,
# which a plain `import cases` returns when both tests run in one session.
_spec = importlib.util.spec_from_file_location("gpu_measurement_cases", os.path.join(FIXTURES, "cases.py"))
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)
from vision_import import torchvision_status  # noqa: E402
from model_expert.flops import kernel_time  # noqa: E402
from model_expert.gpus import CUDA_CONTEXT_BYTES, find_gpu  # noqa: E402
from model_expert.inputs import ModelInputs  # noqa: E402
from model_expert.memory import EstimateOptions, estimate_memory  # noqa: E402

with open(os.path.join(FIXTURES, "h200.json")) as handle:
    MEASURED = json.load(handle)
NEEDS_TORCHVISION = ("resnet50-fp32-sgdm", "vit-b16-bf16amp-adamw", "convnext-tiny-fp16amp-adamw")
PUBLIC = [name for name in cases.CASES if name not in NEEDS_TORCHVISION]
VISION = [] if "not installed" in torchvision_status() else list(NEEDS_TORCHVISION)
PRECISION = {"bf16-params": "bf16"}  # the fixture's name for --precision bf16


def percent(estimate, measured):
    return 100.0 * (estimate - measured) / measured


@pytest.fixture(scope="module")
def results():
    gpu = find_gpu("h200")
    out = {}
    for name in PUBLIC + VISION:
        builder, precision, optimizer = cases.CASES[name]
        torch.manual_seed(0)
        with torch.device("meta"):
            model, args, kwargs, loss = builder(None)
        inputs = ModelInputs(args=args, kwargs=kwargs)
        precision = PRECISION.get(precision, precision)
        estimate = estimate_memory(model, lambda device: inputs, loss,
                                   EstimateOptions(optimizer=optimizer, precision=precision, target_device="cuda",
                                                   gpu_name=gpu.name, inference=False), name)
        kernels = kernel_time.trace_step(model, inputs, loss, precision, optimizer, name)
        measured = MEASURED["cases"][name]
        out[name] = {
            "peak": percent(estimate.peak_bytes, measured["peak_steady_step"]),
            "reserved": percent(estimate.reserved_peak_bytes, measured["reserved_peak"]),
            "time": percent(kernel_time.step_time(kernels, gpu)["step_seconds"], measured["step_ms_median"] / 1e3),
            "flops": sum(k.flops for k in kernels if k.phase != "optimizer"),
        }
    return out


def test_the_context_is_the_measured_one():
    assert CUDA_CONTEXT_BYTES == MEASURED["env"]["context_bytes"] == 650_969_088


def test_training_step_peak_within_bounds(results):
    errors = {name: r["peak"] for name, r in results.items()}
    assert all(abs(e) <= 5.0 for e in errors.values()), errors
    assert statistics.median(abs(e) for e in errors.values()) <= 2.0, errors


def test_reserved_peak_within_bounds(results):
    errors = {name: r["reserved"] for name, r in results.items() if name in PUBLIC}
    assert all(-5.0 <= e <= 5.0 for e in errors.values()), errors


def test_step_time_within_bounds(results):
    errors = {name: r["time"] for name, r in results.items()}
    assert all(abs(e) <= 10.0 for e in errors.values()), errors
    assert statistics.median(abs(e) for e in errors.values()) <= 5.0, errors


def test_traced_flops_equal_the_measured_flop_counter(results):
    """FlopCounterMode on the GPU counted matmuls, convolutions and attention; the trace counts the same, except
    that it also counts cuDNN's LSTM, which FlopCounterMode has no formula for (its Linear head alone is measured)."""
    for name, r in results.items():
        measured = MEASURED["cases"][name]["flops_fwd_bwd"]
        if name.startswith("convnext"):
            # FlopCounterMode's weight gradient of a grouped convolution crosses all channels (test_flops): the
            # GPU's count holds 1.62 TFLOPs of depthwise weight gradients that are really 1/groups of that
            assert r["flops"] == pytest.approx(3 * 285e9, rel=0.01) and r["flops"] < measured  # 32 x 4.45 GMACs x 2
        elif name.startswith("lstm"):
            batch, steps, hidden, vocab, embedding, layers = 64, 128, 1024, 10000, 512, 2
            head = 3 * 2 * batch * steps * hidden * vocab  # forward + two backward matmuls
            assert measured == head
            lstm = 3 * 2 * batch * steps * 4 * hidden * ((embedding + hidden) + (layers - 1) * (2 * hidden))
            assert r["flops"] == head + lstm
        else:
            # Llama's rotary-frequency product (2 x 64 x 1024 FLOPs) is the one small difference: 6e-9 of the total
            assert r["flops"] == pytest.approx(measured, rel=1e-6), name
