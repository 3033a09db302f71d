"""Run under torchrun (gloo, CPU): every strategy on every model given, one after the other, and the
busiest rank's real peak: the CPU allocator's own events (torch.profiler, profile_memory=True, as
`memory.py --measure` counts them), summed from before the model is copied, highest over the steady
steps. Writes {model: {strategy: [peak of rank 0, rank 1, ...]}} as JSON (rank 0).

  torchrun --nproc-per-node 2 tests/dp_worker.py --model FILE.py:Class:inputs_fn ... --out peaks.json
"""

import argparse
import copy
import gc
import importlib.util
import json
import os
import sys

import torch
import torch.distributed as dist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from model_expert.memory.measure import CpuMeter  # noqa: E402

STRATEGIES = ("ddp", "zero1", "zero2", "fsdp")


def load(spec):
    path, cls, inputs = spec.rsplit(":", 2)
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return cls, getattr(module, cls), getattr(module, inputs)


def wrap(model, strategy, world_size):
    """The user's own code for each strategy: torch's implementation, default settings, AdamW."""
    if strategy in ("ddp", "zero1"):
        from torch.nn.parallel import DistributedDataParallel
        wrapped = DistributedDataParallel(model)
        if strategy == "ddp":
            return wrapped, torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
        from torch.distributed.optim import ZeroRedundancyOptimizer
        return wrapped, ZeroRedundancyOptimizer(wrapped.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-3)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh("cpu", (world_size,))
    reshard = strategy == "fsdp"
    for name, child in model.named_children():
        if isinstance(child, torch.nn.ModuleList):
            for block in child:
                fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def measure(model_class, make_inputs, strategy, world_size, steps):
    torch.manual_seed(0)
    original = model_class()
    meter = CpuMeter()
    dist.barrier()
    with meter.session():
        model = copy.deepcopy(original)
        inputs = tuple(t.clone() for t in make_inputs())
        work, optimizer = wrap(model, strategy, world_size)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = work(*inputs)
            loss.backward()
            optimizer.step()
            dist.barrier()

        step()  # warm-up: the optimizer state gets created
        for index in range(steps):
            with meter.window(f"step{index}"):
                step()
        del work, optimizer, model, inputs
        gc.collect()
    return max(meter.peaks[f"step{index}"] for index in range(steps))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", required=True)
    parser.add_argument("--strategy", action="append", choices=STRATEGIES)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    results = {}
    for spec in args.model:
        name, model_class, make_inputs = load(spec)
        for strategy in args.strategy or STRATEGIES:
            peak = measure(model_class, make_inputs, strategy, world_size, args.steps)
            peaks = [None] * world_size
            dist.all_gather_object(peaks, peak)
            results.setdefault(name, {})[strategy] = peaks
    if rank == 0:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
