"""The GPU table: one place for every card's memory, peak throughput and bandwidth.

memory_bytes is the total the CUDA driver reports for the card (a little under the marketing
figure). Peak FLOP/s are dense tensor-core figures from the vendors' data sheets (no sparsity),
with FP32 accumulation where the sheet distinguishes it; fp32 is plain CUDA-core FP32 and tf32
the TensorFloat-32 tensor-core rate (what PyTorch uses for fp32 matmuls only when
torch.backends.cuda.matmul.allow_tf32 is set; it is off by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UserError

GiB = 2**30
MiB = 2**20
TERA = 1e12

# What a training run cannot use of the card, on top of what the caching allocator reserves:
# the CUDA context (driver state, PyTorch's, cuBLAS's and cuDNN's kernel images, handles), created before any
# tensor and invisible to the caching allocator. Measured, not assumed: 650,969,088 B on an NVIDIA H200 with
# torch 2.11.0+cu130 once cuBLAS and cuDNN had run (../shared/gpu_measurements/h200.json, env.context_bytes;
# bench/gpu_session.sh prints it on any card it runs on). Other cards, drivers and torch builds differ by tens
# of MiB; no other card has been measured, so this figure stands for all of them.
CUDA_CONTEXT_BYTES = 650_969_088
CUDA_CONTEXT_SOURCE = ("measured on an NVIDIA H200, torch 2.11.0+cu130, after cuBLAS and cuDNN started "
                       "(../shared/gpu_measurements/h200.json env.context_bytes)")
# Only for rules that see allocated bytes but not the allocator (recommend.py's per-sample fallback): the
# caching allocator's reserve runs ahead of memory_allocated() (segments, fragmentation); the H200 measurements
# show reserved / allocated = 1.02 to 1.21. memory.py replays the allocator itself (memory/cuda_allocator.py).
ALLOCATOR_RESERVE_FRACTION = 0.05


@dataclass(frozen=True)
class GpuSpec:
    name: str
    description: str
    memory_bytes: int
    peak_flops_per_s: dict[str, float]  # by math dtype: fp32, tf32, bf16, fp16
    memory_bandwidth_bytes_per_s: float
    aliases: tuple[str, ...] = field(default=())

    def usable_memory_bytes(self) -> int:
        """memory_bytes - CUDA_CONTEXT_BYTES - ALLOCATOR_RESERVE_FRACTION x memory_bytes: what allocated tensors may fill."""
        return self.memory_bytes - CUDA_CONTEXT_BYTES - int(ALLOCATOR_RESERVE_FRACTION * self.memory_bytes)

    def peak_for(self, dtype: str) -> float:
        """Peak FLOP/s for a math dtype; a dtype the card lacks (bf16 on V100) runs at its fp32 rate."""
        return self.peak_flops_per_s.get(dtype, self.peak_flops_per_s["fp32"])


def _gpu(name, description, memory_gib, fp32, tf32, bf16, fp16, bandwidth_gb_s, aliases=()):
    peaks = {"fp32": fp32 * TERA, "fp16": fp16 * TERA}
    if tf32:
        peaks["tf32"] = tf32 * TERA
    if bf16:
        peaks["bf16"] = bf16 * TERA
    return GpuSpec(name=name, description=description, memory_bytes=int(memory_gib * GiB),
                   peak_flops_per_s=peaks, memory_bandwidth_bytes_per_s=bandwidth_gb_s * 1e9,
                   aliases=tuple(aliases))


GPUS: dict[str, GpuSpec] = {spec.name: spec for spec in (
    #     name          description                         GiB    fp32   tf32   bf16   fp16   GB/s
    _gpu("rtx3060-12gb", "NVIDIA GeForce RTX 3060 12 GB",    11.76, 12.7,  25.4,  25.4,  25.4,  360, ("rtx3060", "12gb")),
    _gpu("rtx4060ti-16gb", "NVIDIA GeForce RTX 4060 Ti 16 GB", 15.70, 22.1, 22.1, 22.1, 22.1,  288, ("rtx4060ti", "16gb")),
    _gpu("rtx3090-24gb", "NVIDIA GeForce RTX 3090 24 GB",    23.69, 35.6,  35.6,  71.0,  71.0,  936, ("rtx3090",)),
    _gpu("rtx4090-24gb", "NVIDIA GeForce RTX 4090 24 GB",    23.65, 82.6,  82.6,  165.2, 165.2, 1008, ("rtx4090", "24gb")),
    _gpu("v100-32gb",    "NVIDIA V100 SXM2 32 GB",           31.74, 15.7,  None,  None,  125.0, 900, ("v100",)),
    _gpu("a100-40gb",    "NVIDIA A100 SXM4 40 GB",           39.39, 19.5,  156.0, 312.0, 312.0, 1555, ("a100-40",)),
    _gpu("a100-80gb",    "NVIDIA A100 SXM4 80 GB",           79.25, 19.5,  156.0, 312.0, 312.0, 2039, ("a100", "a100-80")),
    _gpu("h100-80gb",    "NVIDIA H100 SXM5 80 GB",           79.19, 67.0,  494.7, 989.4, 989.4, 3350, ("h100",)),
    _gpu("h200-141gb",   "NVIDIA H200 SXM 141 GB",           139.8, 67.0,  494.7, 989.4, 989.4, 4800, ("h200",)),
)}

# The cards the reviews are sized for: a single consumer GPU, and the user's cluster node
# (Purdue Anvil's GPU nodes carry 4 x NVIDIA A100 40 GB).
DEFAULT_CONSUMER_GPU = "rtx3060-12gb"
DEFAULT_CLUSTER_GPU = "a100-40gb"
DEFAULT_CLUSTER_GPUS_PER_NODE = 4

_BY_ALIAS = {alias: spec for spec in GPUS.values() for alias in (spec.name, *spec.aliases)}


def usable_memory_assumption(spec: GpuSpec) -> str:
    """The budget rule behind usable_memory_bytes(), in words."""
    return (f"budget on {spec.name}: {spec.memory_bytes:,} B card memory - {CUDA_CONTEXT_BYTES:,} B CUDA context "
            f"({CUDA_CONTEXT_SOURCE}) - {ALLOCATOR_RESERVE_FRACTION:.0%} allocator reserve/fragmentation margin = "
            f"{spec.usable_memory_bytes():,} B for allocated tensors")


def gpu_names() -> list[str]:
    return list(GPUS)


def find_gpu(name: str) -> GpuSpec:
    spec = _BY_ALIAS.get(name.strip().lower())
    if spec is None:
        raise UserError(f"unknown --gpu '{name}'; expected one of {', '.join(GPUS)}")
    return spec
