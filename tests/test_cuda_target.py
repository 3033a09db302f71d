"""The CUDA target's own mechanisms: the caching allocator's replay, the fused dropout's bool mask, cuDNN's LSTM.

Closed forms beside each assert; the allocator's rules are c10/cuda/CUDACachingAllocator.cpp's."""

import os
import sys

import pytest
import torch
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from model_expert.inputs import ModelInputs  # noqa: E402
from model_expert.memory import EstimateOptions, estimate_memory  # noqa: E402
from model_expert.memory import cuda_allocator, cuda_lstm, device_rules  # noqa: E402
from model_expert.memory.cuda_allocator import CachingAllocator, replay  # noqa: E402
from model_expert.memory.estimate import saved_activation_bytes  # noqa: E402

MiB = 2**20


# --- the caching allocator ----------------------------------------------------------------------------

def test_segment_sizes_and_splitting_follow_the_allocator_rules():
    a = CachingAllocator()
    a.malloc(1)  # small pool: 512 B block from a 2 MiB segment
    assert (a.allocated_bytes, a.reserved_bytes) == (512, 2 * MiB)
    a.malloc(MiB + 1)  # large pool, < 10 MiB: a 20 MiB segment, split (19 MiB - 512 left > 1 MiB)
    assert (a.allocated_bytes, a.reserved_bytes) == (512 + MiB + 512, 22 * MiB)
    a.malloc(11 * MiB)  # best fit: the 20 MiB segment's free 19 MiB - 512 B, split again (8 MiB - 512 B left)
    assert (a.allocated_bytes, a.reserved_bytes) == (512 + MiB + 512 + 11 * MiB, 22 * MiB)
    b = CachingAllocator()
    b.malloc(11 * MiB)  # >= 10 MiB, nothing cached: its own 12 MiB segment; the 1 MiB rest is not > 1 MiB: whole
    assert (b.allocated_bytes, b.reserved_bytes) == (12 * MiB, 12 * MiB)
    for request in (0, 1, 512, 513, 3 * MiB + 1, 11 * MiB + 512, 10 * MiB + 512):  # same rule as memory_allocated()
        fresh = CachingAllocator()
        fresh.malloc(request)
        assert fresh.allocated_bytes == device_rules.cuda_block_bytes(request)


def test_cached_blocks_are_reused_best_fit_and_fragmentation_costs_a_segment():
    a = CachingAllocator()
    first = a.malloc(4 * MiB)
    a.free(first)
    a.malloc(3 * MiB)  # fits the cached 20 MiB segment
    assert a.reserved_bytes == 20 * MiB
    b = CachingAllocator()
    x, _y = b.malloc(8 * MiB), b.malloc(8 * MiB)  # one 20 MiB segment: 8 + 8 used, 4 free
    b.free(x)  # free 8 MiB at the front, 4 MiB at the back, not adjacent
    b.malloc(12 * MiB)  # 20 MiB segment holds 12 MiB free in two pieces: a new 12 MiB segment
    assert b.reserved_bytes == 32 * MiB and b.allocated_bytes == 20 * MiB


def test_freed_neighbours_merge():
    a = CachingAllocator()
    blocks = [a.malloc(4 * MiB) for _ in range(4)]  # 16 MiB of one 20 MiB segment
    a.free(blocks[1])
    a.free(blocks[2])  # merges with blocks[1]: 8 MiB contiguous
    a.malloc(8 * MiB)
    assert a.reserved_bytes == 20 * MiB


def test_capacity_releases_cached_segments_before_running_out():
    events = [(1, 15 * MiB), (1, None), (2, 19 * MiB)]  # a 16 MiB segment cached, then a 20 MiB one needed
    assert replay(events).peak_reserved_bytes == 36 * MiB
    capped = replay(events, capacity_bytes=22 * MiB)  # 16 + 20 > 22: the free 16 MiB segment goes back first
    assert not capped.out_of_memory and capped.releases == 1 and capped.peak_reserved_bytes == 20 * MiB
    assert replay(events, capacity_bytes=19 * MiB).out_of_memory


def test_replayed_allocated_peak_equals_the_tracker_peak():
    model = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512))
    est = estimate_memory(model, lambda d: ModelInputs(args=(torch.ones(64, 512, device=d),)), None,
                          EstimateOptions(target_device="cuda", inference=False))
    assert est.reserved_peak_bytes >= est.peak_bytes and est.reserved_peak_bytes % (2 * MiB) == 0
    assert estimate_memory(model, lambda d: ModelInputs(args=(torch.ones(64, 512, device=d),)), None,
                           EstimateOptions(target_device="cpu", inference=False)).reserved_peak_bytes is None


# --- dropout on CUDA: native_dropout keeps a bool mask --------------------------------------------------

def test_cuda_dropout_saves_a_bool_mask_where_meta_saves_a_noise_tensor():
    class Drop(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(256, 256)

        def forward(self, x):
            return nn.functional.dropout(self.lin(x), 0.1, self.training).sum()
    model, inputs = Drop().to("meta"), ModelInputs(args=(torch.ones(32, 256, device="meta"),))
    elements = 32 * 256
    cpu = saved_activation_bytes(model, inputs, "cpu")
    cuda = saved_activation_bytes(model, inputs, "cuda")
    # both save the Linear's input (ones: an input, not counted); CPU saves the fp32 noise (4 B per element),
    # CUDA the bool mask (1 B per element)
    assert cpu == 4 * elements and cuda == 1 * elements
    inplace = nn.Sequential(nn.Linear(256, 256), nn.Dropout(0.1, inplace=True)).to("meta")  # dropout_: composite on CUDA too
    assert saved_activation_bytes(inplace, inputs, "cuda") >= 4 * elements


# --- cuDNN's LSTM ----------------------------------------------------------------------------------------

def test_cudnn_lstm_reserve_is_six_l_minus_one_values_per_hidden_unit():
    assert cuda_lstm.reserve_bytes(128, 64, 1024, 2, 1, torch.float32) == 369_098_752  # the H200 measurement's
    assert cuda_lstm.reserve_bytes(10, 4, 8, 1, 2, torch.bfloat16) == 5 * 2 * 10 * 4 * 8 * 2


def test_cudnn_lstm_saves_input_output_and_reserve():
    lstm = nn.LSTM(32, 64, num_layers=2, batch_first=True).to("meta")
    batch, steps = 8, 16
    inputs = ModelInputs(args=(torch.ones(batch, steps, 32, device="meta", requires_grad=True),))
    saved = saved_activation_bytes(lstm, inputs, "cuda")
    h0_c0 = 2 * (2 * batch * 64 * 4)  # zeros made by nn.LSTM
    output = batch * steps * 64 * 4
    reserve = (6 * 2 - 1) * steps * batch * 64 * 4
    assert saved == h0_c0 + output + reserve


# --- the per-kernel step time ----------------------------------------------------------------------------

def test_kernel_cost_is_the_largest_of_compute_memory_and_launch_floor():
    from model_expert.flops import kernel_time
    from model_expert.gpus import find_gpu
    h200 = find_gpu("h200")  # fp32 67 TFLOP/s, bf16 989.4 TFLOP/s, 4,800 GB/s (gpus.py)
    fp32_mm = kernel_time.Kernel("forward", "mm", flops=10**12, bytes=0, unit="fp32")
    assert kernel_time.kernel_seconds(fp32_mm, h200) == pytest.approx(1e12 / (67e12 * kernel_time.ACHIEVED_FRACTION["fp32"]))
    copy = kernel_time.Kernel("forward", "copy_", flops=0, bytes=4 * 10**9, unit="memory")
    assert kernel_time.kernel_seconds(copy, h200) == pytest.approx(4e9 / (4800e9 * kernel_time.BANDWIDTH_FRACTION))
    tiny = kernel_time.Kernel("forward", "add", flops=0, bytes=1024, unit="memory", launches=3)
    assert kernel_time.kernel_seconds(tiny, h200) == pytest.approx(3 * kernel_time.GPU_KERNEL_FLOOR_SECONDS)


def test_the_step_is_a_queue_the_cpu_fills_and_the_gpu_drains():
    from model_expert.flops import kernel_time as kt
    from model_expert.gpus import find_gpu
    h200 = find_gpu("h200")
    tiny = [kt.Kernel("forward", "add", 0, 1024, "memory") for _ in range(10)]
    # short kernels: the GPU waits for the CPU, so the step is the CPU's issue time plus the last kernel's floor
    assert kt.step_time(tiny, h200)["step_seconds"] == pytest.approx(10 * kt.CPU_OP_SECONDS + kt.GPU_KERNEL_FLOOR_SECONDS)
    big = [kt.Kernel("backward", "copy_", 0, 48 * 10**9, "memory") for _ in range(3)]  # 12.5 ms each
    each = 48e9 / (4800e9 * kt.BANDWIDTH_FRACTION)
    # long kernels: issued long before the GPU gets to them, so the step is the first issue plus the kernels
    assert kt.step_time(big, h200)["step_seconds"] == pytest.approx(kt.CPU_BACKWARD_OP_SECONDS + 3 * each)
    # a .item() between them makes the CPU wait for the GPU: the next op's issue time is no longer hidden
    synced = big[:1] + [kt.Kernel("backward", "_local_scalar_dense", 0, 0, "memory", 0, sync=True)] + big[1:]
    assert kt.step_time(synced, h200)["step_seconds"] == pytest.approx(2 * kt.CPU_BACKWARD_OP_SECONDS + 3 * each)
    # autocast's dispatch and further launches cost CPU time of their own
    cast = kt.Kernel("forward", "_to_copy", 0, 1024, "memory", launches=2, autocast=True)
    assert kt.cpu_seconds(cast) == pytest.approx(kt.CPU_OP_SECONDS + kt.CPU_AUTOCAST_OP_SECONDS + kt.CPU_LAUNCH_SECONDS)


def test_convolutions_count_their_layout_conversions_and_depthwise_runs_on_cuda_cores():
    from model_expert.flops import kernel_time
    x = torch.ones(2, 8, 16, 16, device="meta")

    def traced(model, inputs, precision="fp32"):
        return kernel_time.trace_step(model.to("meta"), ModelInputs(args=(inputs,)), None, precision, "sgd")
    conv = traced(nn.Conv2d(8, 16, 3, padding=1), x)
    forward = next(k for k in conv if k.name == "convolution")
    backward = next(k for k in conv if k.name == "convolution_backward")
    inp, out = 2 * 8 * 16 * 16 * 4, 2 * 16 * 16 * 16 * 4  # NCHW input and output bytes, fp32
    assert forward.extra_bytes == 2 * (inp + out)  # input to NHWC, output back: each read once and written once
    # the model's input needs no gradient: the output gradient and the input are converted, no input gradient
    assert backward.extra_bytes == 2 * (out + inp)
    channels_last = traced(nn.Conv2d(8, 16, 3, padding=1), x.contiguous(memory_format=torch.channels_last))
    assert all(k.extra_bytes == 0 for k in channels_last if k.name.startswith("convolution"))
    depthwise = traced(nn.Conv2d(8, 8, 7, padding=3, groups=8), x, "bf16-autocast")
    assert {k.unit for k in depthwise if k.name.startswith("convolution")} == {"depthwise"}
    norm = traced(nn.BatchNorm2d(8), x)
    assert next(k for k in norm if k.name == "native_batch_norm").extra_bytes == inp  # the statistics pass
    assert next(k for k in norm if k.name == "native_batch_norm_backward").extra_bytes == 2 * inp  # grad + input


def test_traced_kernels_pick_the_unit_and_count_foreach_launches():
    from model_expert.flops import kernel_time
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(50)])  # 100 parameter tensors
    inputs = ModelInputs(args=(torch.ones(4, 8, device="meta"),))
    fp32 = kernel_time.trace_step(model, inputs, None, "fp32", "sgd")
    assert {k.unit for k in fp32 if k.name in ("addmm", "mm")} == {"fp32"}  # no TF32 for matmuls by default
    bf16 = kernel_time.trace_step(model, inputs, None, "bf16-autocast", "sgd")
    assert {k.unit for k in bf16 if k.name in ("addmm", "mm")} == {"tensor"}
    assert any(k.name == "_to_copy" for k in bf16 if k.phase == "forward")  # autocast's casts are kernels
    # SGD's foreach update: one _foreach_add_ over 100 tensors = ceil(100 / 36) = 3 launches
    update = [k for k in fp32 if k.phase == "optimizer" and k.name == "_foreach_add_"]
    assert [k.launches for k in update] == [3]
    conv = nn.Conv2d(3, 8, 3).to("meta")
    kernels = kernel_time.trace_step(conv, ModelInputs(args=(torch.ones(2, 3, 16, 16, device="meta"),)), None,
                                     "fp32", "sgd")
    assert {k.unit for k in kernels if k.name.startswith("convolution")} == {"tf32"}  # cudnn.allow_tf32 default


def test_cudnn_lstm_is_stated_and_no_longer_a_caution():
    lstm = nn.LSTM(8, 16, batch_first=True)
    est = estimate_memory(lstm, lambda d: ModelInputs(args=(torch.ones(4, 12, 8, device=d),)),
                          lambda out: out[0].sum(), EstimateOptions(target_device="cuda", inference=False))
    assert est.unmodelled_buffers == [] and any("cuDNN RNN call" in line for line in est.assumptions)
    gru = estimate_memory(nn.GRU(8, 16, batch_first=True), lambda d: ModelInputs(args=(torch.ones(4, 12, 8, device=d),)),
                          lambda out: out[0].sum(), EstimateOptions(target_device="cuda", inference=False))
    assert len(gru.unmodelled_buffers) == 1 and "GRU" in gru.unmodelled_buffers[0]


def test_linear_on_a_transposed_input_adds_its_bias_in_place_as_the_device_does():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(64, 1000)

        def forward(self, x):  # x: (T, B, 64) time-major, as cuDNN's LSTM leaves it
            return self.out(x.transpose(0, 1))
    est = estimate_memory(Head(), lambda d: ModelInputs(args=(torch.ones(16, 8, 64, device=d),)), None,
                          EstimateOptions(target_device="cuda", optimizer="none"))
    weight, bias, x, output = 64 * 1000 * 4, 4096, 16 * 8 * 64 * 4, 8 * 16 * 1000 * 4  # bias 4,000 B -> 4,096
    cublas_workspace = 32 * MiB  # the forward thread's, Hopper assumed
    # matmul folds the non-contiguous input with a copy (x again), mm writes the output, add_ adds the bias in place:
    # no second output-sized tensor (at::add would allocate one)
    assert est.inference_peak_bytes == weight + bias + x + x + output + cublas_workspace
