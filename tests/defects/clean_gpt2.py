"""Clean control: Hugging Face GPT-2 from a tiny config (2 layers, 64 hidden), causal-LM loss
from `labels` passed as a keyword input. grads.py must raise no RISK or CAUTION on it."""

import torch
import transformers

VOCAB = 100


def Model():
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=64)
    return transformers.GPT2LMHeadModel(config)


def example_inputs(batch_size: int = 2):
    ids = torch.randint(0, VOCAB, (batch_size, 16))
    return {"input_ids": ids, "labels": ids}
