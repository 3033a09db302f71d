# Correct third-party models: torch's own nn.TransformerEncoder and nn.MultiheadAttention with a key padding
# mask (True = padding, as their documentation says), pooled with a masked mean. Source: the installed torch
# package (pytorch/pytorch), its layers unmodified; the masked mean is the documented way to pool.
import torch
from torch import nn

from _inputs import set_batch


def _masked_mean(h, padding_mask):
    keep = (~padding_mask).unsqueeze(-1).to(h.dtype)
    return (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)


class EncoderPool(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, 2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)

    def forward(self, items, padding_mask):
        return _masked_mean(self.encoder(items, src_key_padding_mask=padding_mask), padding_mask)


class MultiheadAttentionPool(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, 2, batch_first=True)

    def forward(self, items, padding_mask):
        h, weights = self.attention(items, items, items, key_padding_mask=padding_mask)
        return _masked_mean(h, padding_mask), weights


class EncoderTokens(EncoderPool):
    """Per-position output [B, N, D] (no pooling): compared at real positions only."""

    def forward(self, items, padding_mask):
        return self.encoder(items, src_key_padding_mask=padding_mask)


def inputs(batch_size: int = 4, max_items: int = 12):
    return set_batch(batch_size, max_items)
