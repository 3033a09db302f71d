"""A few training steps of the bundled SimilarityTransformer with RankingLoss, under torchrun: the script the
SLURM launch script from `recommend.py --slurm-out` starts. It takes the flags that script passes
(--batch-size per rank, --grad-accum, --lr) and trains with what recommend.py recommends for this model:
AdamW (weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8), linear warm-up over the first 10 % of the steps then
ReduceLROnPlateau(factor=0.5, patience=3, min_lr=1e-6) on the loss, gradient clipping at global norm 1.0.

  torchrun --nproc-per-node 2 examples/train.py --batch-size 8 --grad-accum 1 --lr 2e-4 --steps 5

DistributedDataParallel over NCCL on GPUs, over gloo on CPUs. Synthetic data (example_inputs), seeded per rank.
"""

import argparse
import contextlib
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ranking_loss import ranking_loss  # noqa: E402
from similarity_transformer import SimilarityTransformer, example_inputs  # noqa: E402

WARMUP_FRACTION = 0.10
CLIP_NORM = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, required=True, help="per-rank micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--lr", type=float, default=2e-4, help="peak learning rate")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = DistributedDataParallel(SimilarityTransformer().to(device), device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    warmup_steps = max(1, round(WARMUP_FRACTION * args.steps))
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3, min_lr=1e-6)
    generator = torch.Generator().manual_seed(1000 + rank)

    for step in range(args.steps):
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for micro in range(args.grad_accum):
            torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=generator)))
            inputs = [t.to(device) for t in example_inputs(batch_size=args.batch_size)]
            sync = contextlib.nullcontext() if micro == args.grad_accum - 1 else model.no_sync()
            with sync:
                loss = ranking_loss(model(*inputs)) / args.grad_accum
                loss.backward()
            total += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        optimizer.step()
        dist.all_reduce(total)
        mean_loss = total.item() / world_size
        if step < warmup_steps:
            warmup.step()
        else:
            plateau.step(mean_loss)
        if rank == 0:
            print(f"step {step + 1}/{args.steps} loss {mean_loss:.4f} grad_norm {grad_norm.item():.3f} "
                  f"lr {optimizer.param_groups[0]['lr']:.2e} ranks {world_size}", flush=True)
    if rank == 0:
        print(f"training finished: {args.steps} steps, {world_size} ranks, global batch "
              f"{args.batch_size * args.grad_accum * world_size}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
