"""Per-rank memory and traffic of data-parallel training, from torch's own engines.

DDP (DistributedDataParallel), ZeRO-1 (DDP + ZeroRedundancyOptimizer), ZeRO-2 and FSDP/ZeRO-3 (FSDP2
`fully_shard`) run for real in this one process, on fake tensors (FakeTensorMode: shapes, no data) with
torch's fake process group of N ranks standing in for the others, as torch's own FSDP2 memory tracker
does. The step runs under the same tracker and target-device rules as the single-device estimate, so
the engines' own buffers (DDP's gradient buckets, the all-gathered parameters of the unit being computed
and the prefetched one, reduce-scatter inputs, ZeRO's broadcasts, padded shards) are counted where they
are alive. Every collective the engine issues is counted, with its size, for the traffic per rank.

Where the engine cannot run a model on fake tensors, the closed form of `sharding` is used instead and
labelled as such, with the reason.
"""

from __future__ import annotations

import contextlib
import inspect
import functools
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._pytree import tree_flatten

from ..errors import UserError
from ..guard import _restore_rng, _rng_state, preserved
from ..inputs import ModelInputs
from . import device_rules, sharding
from .estimate import (BLOCK_RULES, FOREACH_BY_TARGET, EstimateOptions, _fold, _Workspaces, _without_unused_workspace,
                       enable_checkpointing, meta_copy)
from .optimizer_state import OPTIMIZER_RULES, state_tensors, unique_trainable
from .step import PRECISIONS, MetaGradScaler, cast_inputs, training_step
from .tracker import AllocationTracker, StorageRecord, plausible_scalar

aten = torch.ops.aten
c10d = torch.ops.c10d

STRATEGY_NAMES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
WARMUP_STEPS = 1  # creates the optimizer state (and, for DDP, the buckets as they stay)
MEASURED_STEPS = 2  # the peak is the highest of these; the traffic is the last one's


# --- traffic: what each rank sends per collective (ring algorithms) ---------------------------------
def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]


@dataclass(frozen=True)
class Collective:
    name: str  # as reported
    buffer: Callable[[tuple], int]  # the full (unsharded) buffer's bytes, from the op's arguments
    sent: Callable[[int, int], int]  # (buffer bytes, N) -> bytes one rank sends
    role: str  # the role of the buffers the op touches, for the breakdown


def _broadcast_sent(buffer_bytes: int, world_size: int) -> int:
    """Pipelined ring broadcast: every rank but the last forwards the buffer once; per rank on average (N-1)/N."""
    return (world_size - 1) * buffer_bytes // world_size


COLLECTIVES: dict[Any, Collective] = {
    c10d.allreduce_.default: Collective("all_reduce", lambda a: sum(map(_nbytes, _tensors(a[0]))),
                                        sharding.all_reduce_bytes, "grads"),
    c10d._allgather_base_.default: Collective("all_gather", lambda a: _nbytes(a[0]),
                                              sharding.all_gather_bytes, "params"),
    c10d.allgather_.default: Collective("all_gather", lambda a: sum(map(_nbytes, _tensors(a[0]))),
                                        sharding.all_gather_bytes, "params"),
    c10d._reduce_scatter_base_.default: Collective("reduce_scatter", lambda a: _nbytes(a[1]),
                                                   sharding.reduce_scatter_bytes, "grads"),
    c10d.reduce_scatter_.default: Collective("reduce_scatter", lambda a: sum(map(_nbytes, _tensors(a[1]))),
                                             sharding.reduce_scatter_bytes, "grads"),
    c10d.broadcast_.default: Collective("broadcast", lambda a: sum(map(_nbytes, _tensors(a[0]))),
                                        _broadcast_sent, "params"),
}


# gloo's all_gather_into_tensor and reduce_scatter_tensor work on a copy of the full (unsharded) buffer, alive
# until the asynchronous work completes (measured with the CPU allocator on 2 and 4 gloo ranks: 2x and 4x the
# shard, and nothing left after); all-reduce and broadcast work in place.
GLOO_COPIES = frozenset({"all_gather", "reduce_scatter"})


@dataclass
class Traffic:
    calls: Counter = field(default_factory=Counter)
    buffer_bytes: Counter = field(default_factory=Counter)
    sent_bytes: Counter = field(default_factory=Counter)

    def by_collective(self) -> dict[str, dict[str, int]]:
        return {name: {"calls": self.calls[name], "buffer_bytes": self.buffer_bytes[name],
                       "sent_bytes": self.sent_bytes[name]} for name in sorted(self.calls)}


# --- the tracker, for fake tensors and FSDP's storage resizes -------------------------------------
def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (what this rank stores); any other tensor as it is."""
    return getattr(tensor, "_local_tensor", tensor)


class EngineTracker(AllocationTracker):
    """AllocationTracker for fake tensors: DTensors count by their local shard, storages FSDP frees and
    re-allocates in place (UntypedStorage.resize_) count by their current size, and collectives are tallied."""

    def __init__(self, block_bytes: Callable[[int], int], world_size: int, gloo: bool = False):
        super().__init__(block_bytes, devices=("cpu", "cuda", "meta"))
        self.world_size = world_size
        self.traffic = Traffic()
        self.counting = False
        self.gloo = gloo
        # gloo's copies of the buffers of the last step's worth of collectives, per kind
        self.gloo_copies: dict[str, deque] = {}

    def keep_one_step_of_copies(self) -> None:
        """From now on each kind keeps as many copies as one step issues (what the warm-up step issued)."""
        self.gloo_copies = {kind: deque(copies, maxlen=len(copies)) for kind, copies in self.gloo_copies.items()}

    def register(self, tensor: torch.Tensor, category: str) -> None:
        if isinstance(tensor, torch.Tensor):
            super().register(_local(tensor), category)

    def resized(self, storage: torch.UntypedStorage, new_bytes: int) -> None:
        """STORAGE now holds NEW_BYTES: the running total moves by the difference (the peak likewise)."""
        key = storage._cdata
        record = self.live.get(key)
        if record is None:
            if new_bytes <= 0:
                return
            tensor = torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)
            self.register(tensor, "temporaries")
            return
        new = self.block_bytes(new_bytes)
        if new < record.nbytes and self._peak_dirty:
            self._peak_snapshot = dict(self.live)
            self._peak_dirty = False
        self.live[key] = StorageRecord(nbytes=new, category=record.category, phase=self.phase)
        self.current_bytes += new - record.nbytes
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
            self.peak_phase = self.phase
            self._peak_dirty = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and args[0].device.type != "meta":
            self.data_dependent_reads[".item() / bool() on a tensor"] += 1
            return plausible_scalar(args[0])
        collective = COLLECTIVES.get(func)
        if collective is not None:
            for tensor in _tensors((args, kwargs)):
                self.register(tensor, collective.role)
            if self.gloo and collective.name in GLOO_COPIES:
                copy = torch.empty(collective.buffer(args), dtype=torch.uint8, device="cpu")
                self.register(copy, "temporaries")
                self.gloo_copies.setdefault(collective.name, deque()).append(copy)
            if self.counting:
                buffer = collective.buffer(args)
                self.traffic.calls[collective.name] += 1
                self.traffic.buffer_bytes[collective.name] += buffer
                self.traffic.sent_bytes[collective.name] += collective.sent(buffer, self.world_size)
        return super().__torch_dispatch__(func, types, args, kwargs)


@contextlib.contextmanager
def _storage_resizes(tracker: EngineTracker) -> Iterator[None]:
    """FSDP frees and re-allocates unsharded parameters with UntypedStorage.resize_, which no dispatch sees."""
    original = torch.UntypedStorage.resize_

    @functools.wraps(original)
    def resize_(storage, size):
        result = original(storage, size)
        tracker.resized(storage, int(size))
        return result

    torch.UntypedStorage.resize_ = resize_
    try:
        yield
    finally:
        torch.UntypedStorage.resize_ = original


# --- the fake world -------------------------------------------------------------------------------
@contextlib.contextmanager
def fake_world(rank: int, world_size: int) -> Iterator[None]:
    """A fake process group of WORLD_SIZE ranks in which this process is RANK; torch's DDP checks that read
    tensor data (parameter shapes across ranks, the bucket rebuild's index broadcast) are off."""
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from torch._C._distributed_c10d import Reducer
    import torch.nn.parallel.distributed as ddp_module

    if dist.is_initialized():
        raise UserError("a torch.distributed process group is already initialised in this process; run the "
                        "distributed estimate from a plain `python scripts/memory.py ...`, not under torchrun")
    verify, rebuild = ddp_module._verify_param_shape_across_processes, Reducer._rebuild_buckets
    ddp_module._verify_param_shape_across_processes = lambda *args, **kwargs: None
    Reducer._rebuild_buckets = lambda self: False
    dist.init_process_group("fake", rank=rank, world_size=world_size, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()
        ddp_module._verify_param_shape_across_processes, Reducer._rebuild_buckets = verify, rebuild


def _allreduce_hook(state, bucket):
    """DDP's default hook (divide by N, all-reduce the bucket in place), issued synchronously: the fake
    group's futures carry no value for DDP's built-in C++ hook."""
    buffer = bucket.buffer()
    buffer.div_(dist.get_world_size())
    dist.all_reduce(buffer)
    future = torch.futures.Future()
    future.set_result(buffer)
    return future


def shard_units(model: nn.Module, classes: tuple[str, ...] | None) -> list[nn.Module]:
    """The modules fully_shard wraps, innermost first: every element of every nn.ModuleList (or every module
    whose class name is in CLASSES); the root is added by the caller."""
    units = []
    for _, module in reversed(list(model.named_modules())):
        if module is model:
            continue
        if classes is not None:
            if type(module).__name__ in classes:
                units.append(module)
        elif isinstance(module, nn.ModuleList):
            units.extend(reversed([child for child in module if any(True for _ in child.parameters())]))
    seen, result = set(), []
    for unit in units:
        if id(unit) not in seen:
            seen.add(id(unit))
            result.append(unit)
    return result


@dataclass
class Engine:
    model: nn.Module  # what the step calls (the DDP wrapper, or the FSDP-sharded model)
    optimizer: torch.optim.Optimizer | None
    inner_optimizer: torch.optim.Optimizer | None  # where the state lives (ZeRO wraps a local optimizer)
    description: str
    rank_loads: list[int] | None = None  # per rank: the bytes it owns, where ranks differ (ZeRO-1)


def _optimizer_class(name: str, params, foreach: bool) -> torch.optim.Optimizer:
    return OPTIMIZER_RULES[name].build(params, foreach)


def build_engine(work: nn.Module, strategy: str, optimizer_name: str, foreach: bool,
                 shard_classes: tuple[str, ...] | None, mesh) -> Engine:
    """Wrap WORK the way STRATEGY's torch implementation does and build its optimizer."""
    has_optimizer = OPTIMIZER_RULES[optimizer_name].build is not None
    if strategy in ("ddp", "zero1"):
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(work)
        wrapped.register_comm_hook(None, _allreduce_hook)
        trainable = unique_trainable(wrapped.parameters())
        if strategy == "ddp" or not has_optimizer:
            optimizer = _optimizer_class(optimizer_name, trainable, foreach) if has_optimizer else None
            return Engine(wrapped, optimizer, optimizer, "DistributedDataParallel, default 25 MiB buckets: a full "
                          "replica; gradients copied into the buckets and all-reduced there")
        from torch.distributed.optim import ZeroRedundancyOptimizer
        probe = OPTIMIZER_RULES[optimizer_name].build([nn.Parameter(torch.zeros(1))], foreach)
        accepted = inspect.signature(type(probe).__init__).parameters
        defaults = {k: v for k, v in probe.defaults.items() if k in accepted and k != "params"}
        zero = ZeroRedundancyOptimizer(trainable, optimizer_class=type(probe), **defaults)
        loads = [sum(_nbytes(p) for group in groups for p in group["params"])
                 for groups in zero._partition_parameters()]
        return Engine(wrapped, zero, zero.optim, "DDP + ZeroRedundancyOptimizer: full replica and gradients; "
                      "each rank keeps the optimizer state of its share of the parameters, steps it, and "
                      "broadcasts the updated parameters", loads)
    from torch.distributed.fsdp import fully_shard
    reshard = strategy in ("zero3", "fsdp")
    for unit in shard_units(work, shard_classes):
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(work, mesh=mesh, reshard_after_forward=reshard)
    optimizer = _optimizer_class(optimizer_name, unique_trainable(work.parameters()), foreach) if has_optimizer else None
    how = ("fully_shard(): parameters all-gathered per unit before its forward and again before its backward, "
           "freed after each" if reshard else
           "fully_shard(reshard_after_forward=False): parameters all-gathered per unit before its forward and "
           "kept unsharded until its backward is done")
    return Engine(work, optimizer, optimizer, f"FSDP2 {how}; gradients reduce-scattered; each rank keeps a 1/N "
                  f"shard (padded to equal size) of parameters, gradients and optimizer state")


@dataclass
class RankRun:
    peak_bytes: int
    breakdown: dict[str, int]
    breakdown_detail: dict[str, int]
    peak_phase: str
    traffic: Traffic
    rank_loads: list[int] | None
    description: str
    data_dependent_reads: int
    sdpa_backends: dict[str, int]


def _fake_inputs(inputs: ModelInputs) -> ModelInputs:
    """Meta inputs as fake tensors on the CPU (the fake mode is active)."""
    def fake(value):
        return torch.empty_like(value, device="cpu") if isinstance(value, torch.Tensor) else value
    return ModelInputs(args=torch.utils._pytree.tree_map(fake, inputs.args),
                       kwargs=torch.utils._pytree.tree_map(fake, inputs.kwargs))


def run_rank(model: nn.Module, build_inputs: Callable[[str], ModelInputs], loss_fn: Callable | None,
             options: EstimateOptions, strategy: str, world_size: int, rank: int,
             shard_classes: tuple[str, ...] | None, model_name: str) -> RankRun:
    """One rank's steady steps under STRATEGY's engine, on fake tensors; its peak, breakdown and traffic."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    precision = PRECISIONS[options.precision]
    target = options.target_device
    with preserved(model):
        work = meta_copy(model)
    if precision.param_dtype is not None:
        work = work.to(precision.param_dtype)
    if options.gradient_checkpointing:
        enable_checkpointing(work, model_name)
    work.train()
    tracker = EngineTracker(BLOCK_RULES[target], world_size, gloo=target == "cpu")
    function_mode = device_rules.TargetFunctionMode(target, precision.autocast_dtype, options.sdpa_backend,
                                                    memory_kernels=False)
    with fake_world(rank, world_size):
        mesh = None
        if strategy in ("zero2", "zero3", "fsdp"):
            from torch.distributed.device_mesh import init_device_mesh
            mesh = init_device_mesh("cpu", (world_size,))
        with FakeTensorMode(allow_non_fake_inputs=True):
            work.to_empty(device="cpu")
            inputs = _fake_inputs(cast_inputs(build_inputs("meta"), precision.param_dtype))
            with _storage_resizes(tracker), function_mode.recompute_in_backward(), function_mode, tracker:
                engine = build_engine(work, strategy, options.optimizer, FOREACH_BY_TARGET[target], shard_classes,
                                      mesh)
                step_model = engine.model
                for parameter in step_model.parameters():
                    tracker.register(parameter, "params")
                for buffer in step_model.buffers():
                    tracker.register(buffer, "buffers")
                for value in _tensors((inputs.args, inputs.kwargs)):
                    tracker.register(value, "inputs")
                scaler = MetaGradScaler(device="cpu") if precision.grad_scaler else None
                workspace_bytes = device_rules.cublas_workspace_bytes(options.gpu_name) if target == "cuda" else 0
                workspaces = _Workspaces(tracker, workspace_bytes, ("main", "autograd"))
                tracker.on_op = workspaces.on_op

                def label_grads() -> None:
                    for parameter in step_model.parameters():
                        tracker.relabel(parameter.grad, "grads")

                def phase(name: str) -> None:
                    tracker.phase = name
                    if name == "optimizer":
                        label_grads()

                def step() -> None:
                    training_step(step_model, inputs, loss_fn, engine.optimizer, function_mode.autocast, scaler,
                                  phase, model_name)
                    label_grads()
                    for tensor in state_tensors(engine.inner_optimizer):
                        tracker.relabel(tensor, "optimizer_state")

                for _ in range(WARMUP_STEPS):
                    step()
                tracker.keep_one_step_of_copies()
                retained = _retained_buckets(step_model) if strategy in ("ddp", "zero1") else []
                for tensor in retained:
                    tracker.relabel(tensor, "grads")
                tracker.reset_peak()
                for index in range(MEASURED_STEPS):
                    tracker.counting = index == MEASURED_STEPS - 1
                    step()
                tracker.counting = False
                peak, detail = _without_unused_workspace(tracker, workspaces)
                result = RankRun(peak_bytes=peak, breakdown=_fold(detail), breakdown_detail=detail,
                                 peak_phase=tracker.peak_phase, traffic=tracker.traffic,
                                 rank_loads=engine.rank_loads, description=engine.description,
                                 data_dependent_reads=sum(tracker.data_dependent_reads.values()),
                                 sdpa_backends=dict(function_mode.sdpa_backends_used))
                del engine, step_model, scaler, retained
    return result


def _retained_buckets(model: nn.Module) -> list[torch.Tensor]:
    """One gradient bucket set, per dtype: what DDP's rebuild may leave alive beside the new buckets."""
    sizes: Counter = Counter()
    for parameter in unique_trainable(model.parameters()):
        sizes[parameter.dtype] += parameter.numel()
    return [torch.empty(count, dtype=dtype, device="cpu") for dtype, count in sizes.items()]


def busiest_rank(strategy: str, rank_loads: list[int] | None) -> int:
    """Which rank holds the most: ZeRO-1's greedy partition may give ranks unequal shares; FSDP pads every
    shard to the size of rank 0's (torch.chunk gives the first ranks the larger pieces); DDP ranks are equal."""
    if rank_loads:
        return max(range(len(rank_loads)), key=lambda r: (rank_loads[r], -r))
    return 0


def _what_fails(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:200]}"


ENGINE_ASSUMPTIONS = (
    "per rank: torch's own implementation run in this one process on fake tensors (shapes, no data) with "
    "torch's fake process group of N ranks (torch.testing._internal.distributed.fake_pg), under the same "
    "allocation tracker and target-device rules as the single-device estimate; the peak is the highest of "
    "two steady steps after one warm-up step; each rank runs the given batch",
    "traffic: every collective the engine issued in one steady step, as bytes one rank sends: all-reduce "
    "2(N-1)/N x buffer, all-gather and reduce-scatter (N-1)/N x the unsharded buffer, broadcast (N-1)/N x "
    "buffer (ring algorithms)",
    "gloo (CPU target): all_gather_into_tensor and reduce_scatter_tensor work on a copy of the full buffer "
    "(measured: N x the shard on N = 2 and 4 ranks, none after), freed when gloo's worker finishes it, which "
    "lags the step: each copy is counted until one step's worth of further collectives of its kind were issued",
    "DDP (and ZeRO-1, which runs on DDP): its bucket rebuild at the 2nd iteration (which reads data through the "
    "process group) is not run; instead one more bucket set is counted for every measured step: real gloo "
    "launches hold one more buffer of exactly that size in some runs (measured on 2 and 4 ranks, an MLP and a set "
    "transformer; that it is the pre-rebuild buckets is inferred from its size); a launch without it peaks that "
    "much lower",
)
NCCL_NOTE = ("NCCL's own buffers are not modelled: they are allocated by NCCL outside PyTorch's allocator "
             "(torch.cuda.memory_allocated does not count them); NCCL documents NCCL_BUFFSIZE = 4 MiB per channel "
             "and peer connection by default (docs.nvidia.com/deeplearning/nccl, Environment Variables), so "
             "several tens to hundreds of MiB per GPU depending on channels and peers")
CPU_KERNEL_NOTE = ("the CPU target's oneDNN LSTM/convolution buffer rules apply to meta tensors only and are not "
                   "applied in the per-rank run")


def distributed_estimate(model: nn.Module, build_inputs: Callable[[str], ModelInputs], loss_fn: Callable | None,
                         options: EstimateOptions, strategy: str, world_size: int,
                         shard_classes: tuple[str, ...] | None = None, model_name: str = "the model",
                         fallback: Callable[[], dict] | None = None) -> dict[str, Any]:
    """Per-rank peak bytes of the busiest rank, its breakdown, and the bytes it sends per step, from STRATEGY's
    engine; FALLBACK (the closed form) where the engine cannot run the model, labelled with the reason."""
    rng = _rng_state()  # torch.distributed's set-up draws from Python's RNG
    try:
        run = run_rank(model, build_inputs, loss_fn, options, strategy, world_size, 0, shard_classes, model_name)
        rank = busiest_rank(strategy, run.rank_loads)
        if rank != 0:
            run = run_rank(model, build_inputs, loss_fn, options, strategy, world_size, rank, shard_classes,
                           model_name)
    except Exception as error:  # the engine could not run this model on fake tensors
        if fallback is None:
            raise
        # A model that fails on meta tensors too raises its own error here: only the engine's limits fall back.
        result = fallback()
        result.update({"method": "closed form (fallback)", "fallback_reason": _what_fails(error)})
        result["assumptions"] = [f"{strategy}: the engine could not run {model_name} on fake tensors "
                                 f"({_what_fails(error)}); per-GPU = the closed form: the single-GPU breakdown "
                                 f"with sharded parts / N, which leaves out the engine's own buffers (an "
                                 f"under-estimate)"]
        return result
    finally:
        _restore_rng(rng)
    assumptions = list(ENGINE_ASSUMPTIONS) + [f"{strategy}: {run.description}"]
    if strategy in ("zero2", "zero3", "fsdp"):
        units = "classes " + ", ".join(shard_classes) if shard_classes else "every element of the nn.ModuleLists"
        assumptions.append(f"sharding units: {units}, then the root")
    if run.rank_loads:
        assumptions.append("busiest rank: rank " + str(rank) + " (optimizer-state shares per rank: "
                           + ", ".join(f"{b:,} B" for b in run.rank_loads) + " of parameters)")
    if run.data_dependent_reads:
        assumptions.append(f"{run.data_dependent_reads} data-dependent read(s) (.item(), bool(tensor)) on fake "
                           f"tensors assumed True / 1 / 1.0")
    if options.target_device == "cuda":
        assumptions.append(NCCL_NOTE)
    else:
        assumptions.append(CPU_KERNEL_NOTE)
    return {"strategy": strategy, "world_size": world_size, "method": "engine", "description": run.description,
            "busiest_rank": rank, "per_gpu_peak_bytes": run.peak_bytes, "per_gpu_peak_phase": run.peak_phase,
            "per_gpu_breakdown": run.breakdown,
            "communication_bytes_per_step": sum(run.traffic.sent_bytes.values()),
            "communication_by_collective": run.traffic.by_collective(), "assumptions": assumptions}
