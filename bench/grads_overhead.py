#!/usr/bin/env python3
"""Per-batch cost of grads.py's sampling step against a plain forward + backward.

For each model: the plain step is `zero grads; loss = loss_fn(model(*args, **kwargs)); loss.backward()`
in train mode; the sampled step is `grads.run_batch` (forward hooks on every module, norms via
torch._foreach_norm, one host transfer). Both are timed REPEATS times after a warm-up, alternating,
and the medians compared. Budget (issue 4): ratio <= 1.2.

    python bench/grads_overhead.py            # SimilarityTransformer example + GPT-2 small (12x768, seq 256, batch 2)
    python bench/grads_overhead.py --quick    # smaller GPT-2 (4 layers) for a fast look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

from model_expert import grads  # noqa: E402
from model_expert.inputs import ModelInputs, as_model_inputs  # noqa: E402
from model_expert.runner import default_loss  # noqa: E402


def similarity_transformer():
    """The seed's model from examples/ when present, else an equivalent nn.TransformerEncoder stack."""
    try:
        from examples.similarity_transformer import SimilarityTransformer, example_inputs
        return "SimilarityTransformer (examples/, batch 8, 64 images)", SimilarityTransformer(), as_model_inputs(
            example_inputs(batch_size=8), "example_inputs")
    except ImportError:
        layer = torch.nn.TransformerEncoderLayer(256, 8, 1024, 0.1, activation="gelu", batch_first=True, norm_first=True)
        model = torch.nn.Sequential(torch.nn.Linear(512, 256), torch.nn.TransformerEncoder(layer, 4))
        return "TransformerEncoder 4x256 (stand-in)", model, ModelInputs(args=(torch.randn(8, 64, 512),))


def gpt2_small(layers: int):
    import transformers
    config = transformers.GPT2Config(n_layer=layers, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 50257, (2, 256))
    return f"GPT-2 {layers}x768 (seq 256, batch 2)", model, ModelInputs(kwargs={"input_ids": ids, "labels": ids})


def plain_step(model, parameters, inputs):
    for parameter in parameters:
        parameter.grad = None
    default_loss(model(*inputs.args, **inputs.kwargs)).backward()


def measure(label, model, inputs, repeats):
    model.train()
    parameters = [p for _, p in grads.unique_parameters(model)]
    probe = grads.ForwardProbe(model, count_underflow=False)
    plain, sampled = [], []
    with probe.attached():
        probe.start_batch(0)
        grads.run_batch(model, parameters, inputs, None, probe, None, "cpu", label)  # warm-up (and order)
    plain_step(model, parameters, inputs)  # warm-up
    for _ in range(repeats):
        start = time.perf_counter()
        plain_step(model, parameters, inputs)
        plain.append(time.perf_counter() - start)
        with probe.attached():
            probe.start_batch(1)
            start = time.perf_counter()
            grads.run_batch(model, parameters, inputs, None, probe, None, "cpu", label)
            sampled.append(time.perf_counter() - start)
    plain_seconds, sampled_seconds = statistics.median(plain), statistics.median(sampled)
    print(f"{label}: plain forward+backward {plain_seconds * 1e3:.1f} ms, grads.py sampled step "
          f"{sampled_seconds * 1e3:.1f} ms, ratio {sampled_seconds / plain_seconds:.3f} "
          f"(median of {repeats}; {len(list(model.modules()))} modules hooked)")
    return sampled_seconds / plain_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="GPT-2 with 4 layers instead of 12")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for build in (similarity_transformer, lambda: gpt2_small(4 if args.quick else 12)):
        label, model, inputs = build()
        measure(label, model, inputs, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
