#!/usr/bin/env python3
"""Training memory of a Llama-7B-shaped model (6,738,415,616 params), batch 1 x 2048 tokens, AdamW,
bf16-autocast, estimated on meta tensors. Prints the estimate, the seconds it took (after importing
torch and transformers) and the peak RSS. Usage: python bench/llama7b_memory.py [--precision P] [--optimizer O]"""

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))

import torch  # noqa: E402
import transformers  # noqa: E402

from model_expert import render  # noqa: E402
from model_expert.inputs import ModelInputs  # noqa: E402
from model_expert.memory import EstimateOptions, estimate_memory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--precision", default="bf16-autocast")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    config = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                      max_position_embeddings=4096)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())

    def inputs(device):
        ids = torch.zeros(1, args.tokens, dtype=torch.long, device=device)
        return ModelInputs(kwargs={"input_ids": ids, "labels": ids})

    estimate = estimate_memory(model, inputs, None, EstimateOptions(
        optimizer=args.optimizer, precision=args.precision, target_device="cuda", gpu_name="h100-80gb",
        gradient_checkpointing=args.gradient_checkpointing))
    seconds = time.perf_counter() - started
    rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(f"Llama-7B shape: {params:,} parameters; batch 1 x {args.tokens} tokens; {args.optimizer}, {args.precision}")
    print(f"training peak   {render.human_bytes(estimate.peak_bytes)} ({estimate.peak_bytes:,} B), during {estimate.peak_phase}")
    for key, value in estimate.breakdown.items():
        print(f"  {key:16s}{render.human_bytes(value)}")
    print(f"inference peak  {render.human_bytes(estimate.inference_peak_bytes)}")
    print(f"attention kernels: {estimate.sdpa_backends}")
    print(f"estimate time   {seconds:.2f} s (after imports)")
    print(f"peak RSS        {rss_bytes / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
