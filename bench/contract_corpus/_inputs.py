"""Padded batches as a caller builds them: real items first, padding at the tail of each row (lengths vary).

Shared by the corpus's model files (their inputs factories); the model code stays in each file.
"""

import torch

VOCAB = 100


def lengths(batch_size: int, seq_len: int) -> torch.Tensor:
    """batch_size lengths spread from about a quarter of seq_len to seq_len (the longest row is unpadded)."""
    return torch.linspace(max(2, seq_len // 4), seq_len, batch_size).round().long()


def token_batch(batch_size: int = 4, seq_len: int = 12, eos: int | None = None):
    """Hugging Face style: input_ids int64 [B, T], attention_mask int64 [B, T] with 1 at real tokens."""
    keep = torch.arange(seq_len).unsqueeze(0) < lengths(batch_size, seq_len).unsqueeze(1)
    input_ids = torch.randint(3, VOCAB - 2, (batch_size, seq_len))
    if eos is not None:  # the tokenizer's end-of-text token at each row's last real position
        last = keep.long().sum(1) - 1
        input_ids[torch.arange(batch_size), last] = eos
    input_ids = input_ids.masked_fill(~keep, 0)  # the pad token id
    return {"input_ids": input_ids, "attention_mask": keep.long()}


def set_batch(batch_size: int = 4, max_items: int = 12, dim: int = 16, mask_name: str = "padding_mask",
              true_is_padding: bool = True):
    """Sets of feature vectors [B, N, dim] and a bool mask [B, N] (True at padding, or True at real items)."""
    items = torch.randn(batch_size, max_items, dim)
    pad = torch.arange(max_items).unsqueeze(0) >= lengths(batch_size, max_items).unsqueeze(1)
    items = items.masked_fill(pad.unsqueeze(-1), 0.0)
    return {"x" if mask_name != "padding_mask" else "items": items, mask_name: pad if true_is_padding else ~pad}
