#!/usr/bin/env python3
"""Benchmark: FLOPs of one training step of a Llama-7B-shaped model on meta tensors.

LlamaConfig(hidden 4096, intermediate 11008, 32 layers, 32 heads, vocab 32000), batch 1, 2048 tokens.
Targets: <= 10 s beyond importing torch and transformers, peak RSS <= 1.5 GB.
Run: python bench/llama7b_flops.py
"""

import os
import resource
import sys
import time

start = time.perf_counter()
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402  (transformers imports lazily)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from model_expert import flops  # noqa: E402
from model_expert.gpus import find_gpu  # noqa: E402
from model_expert.inputs import ModelInputs  # noqa: E402

imported = time.perf_counter()

HIDDEN, INTERMEDIATE, LAYERS, HEADS, VOCAB, BATCH, SEQ = 4096, 11008, 32, 32, 32000, 1, 2048
config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, num_key_value_heads=HEADS, vocab_size=VOCAB,
                     max_position_embeddings=SEQ)
with torch.device("meta"):
    model = LlamaForCausalLM(config)
built = time.perf_counter()

ids = torch.zeros(BATCH, SEQ, dtype=torch.long, device="meta")
counter = flops.count_step(model, ModelInputs(kwargs={"input_ids": ids, "labels": ids}))
data = flops.summarise(counter, model, depth=2)
counted = time.perf_counter()

# Closed form per layer: q,k,v,o 4 x 2*T*d^2; gate, up, down 3 x 2*T*d*I; attention 4*T^2*d; LM head 2*T*d*V.
tokens = BATCH * SEQ
closed_forward = LAYERS * (8 * tokens * HIDDEN**2 + 6 * tokens * HIDDEN * INTERMEDIATE
                           + 4 * BATCH * SEQ**2 * HIDDEN) + 2 * tokens * HIDDEN * VOCAB
parameters = sum(p.numel() for p in model.parameters())
a100 = find_gpu("a100")
moved_forward = flops.phase_bytes(counter.traffic["forward"], flops.PRECISIONS["bf16"], parameters)
moved_backward = flops.phase_bytes(counter.traffic["backward"], flops.PRECISIONS["bf16"], parameters)
estimate = flops.estimate_step_time(
    forward_flops=data["forward_flops"], backward_flops=data["backward_flops"],
    optimizer_flops=flops.optimizer_step_flops(parameters, "adamw"), forward_bytes=moved_forward,
    backward_bytes=moved_backward, optimizer_bytes=flops.optimizer_step_bytes(parameters, "adamw", 2),
    gpu=a100, dtype="bf16", mfu=flops.DEFAULT_MFU)

peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
print(f"torch {torch.__version__}, transformers {transformers.__version__}, {os.cpu_count()} CPUs")
print(f"parameters:        {parameters:,}")
print(f"forward FLOPs:     {data['forward_flops']:,} (closed form {closed_forward:,}, "
      f"{'equal' if data['forward_flops'] == closed_forward else 'DIFFERENT'})")
print(f"backward FLOPs:    {data['backward_flops']:,} ({data['backward_flops'] / data['forward_flops']:.3f} x forward)")
print(f"unsupported ops:   {data['unsupported_ops'] or 'none'}")
print(f"A100 bf16 step:    {estimate['step_seconds']:.3f} s at MFU {flops.DEFAULT_MFU} "
      f"(forward {estimate['phases']['forward']['seconds']:.3f} s)")
print(f"import torch+transformers: {imported - start:.2f} s")
print(f"build model on meta:       {built - imported:.2f} s")
print(f"count forward+backward:    {counted - built:.2f} s")
print(f"beyond imports:            {counted - imported:.2f} s (target <= 10 s)")
print(f"peak RSS:                  {peak_rss_bytes / 2**30:.2f} GiB (target <= 1.5 GB)")
ok = counted - imported <= 10 and peak_rss_bytes <= 1.5e9 and data["forward_flops"] == closed_forward
sys.exit(0 if ok else 1)
