#!/usr/bin/env python3
"""Estimated vs measured peak memory of real training steps on a CUDA GPU.

Each configuration is a real model (Hugging Face GPT-2/BERT/T5/Llama-style built from configs,
torch's TransformerEncoder with a padding mask, an LSTM, a CNN, an MLP, the project's examples
when present) with a precision, an optimizer and optionally gradient checkpointing. On CUDA it
runs the shared training step (memory/step.py) until the optimizer state exists, resets the peak
stats, runs one more step and reads torch.cuda.max_memory_allocated(); the estimate comes from
the meta-tensor engine with the card's name. `--dry-run` runs the estimates only (on CPU), so a
test can keep this script from rotting.

Usage: python bench/gpu_memory_validation.py [--dry-run] [--only NAME ...] [--out results.json|results.md]
Targets (issue 3): median |error| <= 5 %, worst <= 15 %, no under-estimate worse than -10 %.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from model_expert import render  # noqa: E402
from model_expert.inputs import ModelInputs  # noqa: E402
from model_expert.memory import EstimateOptions, estimate_memory  # noqa: E402


@dataclass
class Config:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[str], ModelInputs]  # device -> inputs
    precision: str = "fp32"
    optimizer: str = "adamw"
    checkpointing: bool = False
    loss: Callable[[Any], torch.Tensor] | None = None


def _ids(batch, tokens, vocab, device, seed=0):
    if device == "meta":
        return torch.zeros(batch, tokens, dtype=torch.long, device="meta")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, tokens), generator=generator).to(device)


def gpt2():
    import transformers
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=4, n_embd=512, n_head=8, vocab_size=16000, n_positions=512, bos_token_id=0, eos_token_id=0))


def lm_inputs(batch, tokens, vocab):
    def build(device):
        ids = _ids(batch, tokens, vocab, device)
        return ModelInputs(kwargs={"input_ids": ids, "labels": ids})
    return build


def bert():
    import transformers
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1536, vocab_size=16000,
        max_position_embeddings=512, num_labels=4))


def bert_inputs(batch, tokens):
    def build(device):
        ids = _ids(batch, tokens, 16000, device)
        mask = torch.ones(batch, tokens, dtype=torch.long, device=device)
        if device != "meta":
            mask[:, tokens * 3 // 4:] = 0  # real padding: the mask path is taken
        labels = torch.zeros(batch, dtype=torch.long, device=device)
        return ModelInputs(kwargs={"input_ids": ids, "attention_mask": mask, "labels": labels})
    return build


def t5():
    import transformers
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        d_model=384, d_ff=1536, d_kv=64, num_heads=6, num_layers=3, num_decoder_layers=3, vocab_size=16000,
        decoder_start_token_id=0, pad_token_id=0))


def llama():
    import transformers
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
        vocab_size=16000, max_position_embeddings=1024))


class MaskedEncoder(nn.Module):
    def __init__(self, d_model=512, heads=8, layers=4):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=2048, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 1)

    def forward(self, x, mask):
        return self.head(self.encoder(x, src_key_padding_mask=mask)).squeeze(-1)


def encoder_inputs(batch, tokens):
    def build(device):
        x = torch.randn(batch, tokens, 512, device=device) if device != "meta" else torch.empty(batch, tokens, 512, device="meta")
        mask = torch.zeros(batch, tokens, dtype=torch.bool, device=device)
        if device != "meta":
            mask[:, tokens * 3 // 4:] = True
        return ModelInputs(args=(x, mask))
    return build


class LSTMRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(256, 512, num_layers=2, batch_first=True)
        self.head = nn.Linear(512, 1)

    def forward(self, x):
        return self.head(self.lstm(x)[0])


def dense_inputs(*shape):
    def build(device):
        if device == "meta":
            return ModelInputs(args=(torch.empty(*shape, device="meta"),))
        return ModelInputs(args=(torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(device),))
    return build


def cnn():
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.MaxPool2d(2))
    return nn.Sequential(block(3, 64), block(64, 128), block(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(256, 100))


def mlp():
    return nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 4096), nn.GELU(), nn.Linear(4096, 10))


def example_configs() -> list[Config]:
    """The project's seed-style examples, when this checkout has them."""
    path = os.path.join(REPO, "examples", "similarity_transformer.py")
    if not os.path.exists(path):
        return []
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_similarity_transformer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def inputs(device):
        with torch.device(device):
            value = module.example_inputs(batch_size=32)
        if isinstance(value, dict):
            return ModelInputs(kwargs=value)
        return ModelInputs(args=value if isinstance(value, tuple) else (value,))
    return [Config("examples.SimilarityTransformer fp32 adamw", module.SimilarityTransformer, inputs),
            Config("examples.SimilarityTransformer bf16-autocast adamw", module.SimilarityTransformer, inputs,
                   "bf16-autocast")]


def configurations() -> list[Config]:
    return [
        Config("gpt2 fp32 adamw", gpt2, lm_inputs(8, 512, 16000)),
        Config("gpt2 bf16-autocast adamw", gpt2, lm_inputs(8, 512, 16000), "bf16-autocast"),
        Config("gpt2 fp16-autocast adamw", gpt2, lm_inputs(8, 512, 16000), "fp16-autocast"),
        Config("gpt2 bf16-autocast adamw checkpointing", gpt2, lm_inputs(8, 512, 16000), "bf16-autocast", "adamw", True),
        Config("bert fp32 adamw (padding mask)", bert, bert_inputs(16, 256)),
        Config("bert bf16 sgd-momentum", bert, bert_inputs(16, 256), "bf16", "sgd-momentum"),
        Config("t5 bf16-autocast adamw", t5, lm_inputs(8, 256, 16000), "bf16-autocast"),
        Config("llama fp32 sgd", llama, lm_inputs(4, 1024, 16000), "fp32", "sgd"),
        Config("llama bf16-autocast adamw", llama, lm_inputs(4, 1024, 16000), "bf16-autocast"),
        Config("llama bf16 adamw checkpointing", llama, lm_inputs(4, 1024, 16000), "bf16", "adamw", True),
        Config("TransformerEncoder+mask fp32 adamw", MaskedEncoder, encoder_inputs(32, 256)),
        Config("TransformerEncoder+mask fp16-autocast adamw", MaskedEncoder, encoder_inputs(32, 256), "fp16-autocast"),
        Config("LSTM fp32 sgd", LSTMRegressor, dense_inputs(32, 128, 256), "fp32", "sgd"),
        Config("CNN fp32 sgd-momentum", cnn, dense_inputs(64, 3, 64, 64), "fp32", "sgd-momentum"),
        Config("CNN bf16-autocast adamw", cnn, dense_inputs(64, 3, 64, 64), "bf16-autocast"),
        Config("MLP fp32 adamw", mlp, dense_inputs(256, 1024)),
    ] + example_configs()


def gpu_name_for_estimate() -> str | None:
    """The card's name as gpus.py spells it (its cuBLAS workspace size depends on it)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().lower()
    for key in ("h200", "h100", "a100", "v100", "4090", "3090", "4060", "3060"):
        if key in name:
            return {"4090": "rtx4090", "3090": "rtx3090", "4060": "rtx4060ti", "3060": "rtx3060"}.get(key, key)
    return name


def run(config: Config, dry_run: bool, gpu: str | None) -> dict[str, Any]:
    torch.manual_seed(0)
    with torch.device("meta"):
        model_meta = config.build()
    started = time.perf_counter()
    estimate = estimate_memory(model_meta, config.inputs, config.loss, EstimateOptions(
        optimizer=config.optimizer, precision=config.precision, target_device="cuda", gpu_name=gpu,
        gradient_checkpointing=config.checkpointing), model_name=config.name)
    row = {"name": config.name, "estimate_bytes": estimate.peak_bytes, "estimate_phase": estimate.peak_phase,
           "estimate_inference_bytes": estimate.inference_peak_bytes, "estimate_seconds": time.perf_counter() - started,
           "breakdown": estimate.breakdown}
    if dry_run:
        return row
    from model_expert.memory.measure import measure_on_cuda
    torch.manual_seed(0)
    model = config.build()
    measured = measure_on_cuda(model, config.inputs, config.loss, config.optimizer, config.precision,
                               config.checkpointing, config.name)
    row["measured_bytes"] = measured["peak_bytes"]
    row["measured_inference_bytes"] = measured["inference_peak_bytes"]
    row["error_percent"] = 100.0 * (estimate.peak_bytes - measured["peak_bytes"]) / measured["peak_bytes"]
    row["inference_error_percent"] = (100.0 * (estimate.inference_peak_bytes - measured["inference_peak_bytes"])
                                      / measured["inference_peak_bytes"])
    del model
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["error_percent"] for r in rows if "error_percent" in r]
    if not errors:
        return {}
    return {"median_abs_error_percent": statistics.median(abs(e) for e in errors),
            "worst_abs_error_percent": max(abs(e) for e in errors),
            "worst_under_estimate_percent": min(errors),
            "inference_median_abs_error_percent": statistics.median(abs(r["inference_error_percent"]) for r in rows
                                                                    if "inference_error_percent" in r)}


def markdown(rows, summary, device) -> str:
    body = [[r["name"], render.mib(r["estimate_bytes"]), render.mib(r.get("measured_bytes")),
             f"{r['error_percent']:+.1f}%" if "error_percent" in r else "-",
             f"{r['inference_error_percent']:+.1f}%" if "inference_error_percent" in r else "-",
             f"{r['estimate_seconds']:.1f}"] for r in rows]
    lines = [f"Device: {device}", "",
             render.markdown_table(body, ["configuration", "estimate", "measured", "error", "inference error", "est. s"])]
    if summary:
        lines += ["", f"median |error| {summary['median_abs_error_percent']:.1f}%, worst |error| "
                      f"{summary['worst_abs_error_percent']:.1f}%, worst under-estimate "
                      f"{summary['worst_under_estimate_percent']:+.1f}%"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="estimates only (no GPU needed)")
    parser.add_argument("--only", nargs="*", help="run configurations whose name contains one of these words")
    parser.add_argument("--out", help="write the results to this .json or .md file")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.stderr.write("gpu_memory_validation.py: error: no CUDA GPU; run with --dry-run for the estimates alone\n")
        return 2
    gpu = gpu_name_for_estimate()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "none (dry run)"
    configs = [c for c in configurations() if not args.only or any(word in c.name for word in args.only)]
    rows = []
    for config in configs:
        try:
            row = run(config, args.dry_run, gpu)
        except Exception as error:  # one broken configuration must not hide the others
            row = {"name": config.name, "error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                   "estimate_bytes": None, "estimate_seconds": 0.0}
        rows.append(row)
        shown = {k: v for k, v in row.items() if k != "breakdown"}
        print(json.dumps(shown), flush=True)
    good = [r for r in rows if "error" not in r]
    summary = summarise(good)
    text = markdown(good, summary, device)
    failed = [r for r in rows if "error" in r]
    if failed:
        text += "\nFailed: " + "; ".join(f"{r['name']}: {r['error']}" for r in failed) + "\n"
    print(text)
    if args.out:
        if args.out.endswith(".md"):
            content = text
        else:
            content = json.dumps({"device": device, "rows": rows, "summary": summary}, indent=2) + "\n"
        with open(args.out, "w", encoding="utf-8") as stream:
            stream.write(content)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
