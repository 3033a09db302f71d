# Source: longzw1997/Open-GroundingDino, TransformerEncoderLayer.forward as quoted in the issue (the file path
#   is not given there and was not verified here)
#   src_mask [B, L, L] is repeated per head with src_mask.repeat(nhead, 1, 1): head-major order, while
#   nn.MultiheadAttention reads a 3-D attn_mask as [B * nhead, L, S] batch-major, so sample b gets another
#   sample's mask once B > 1 and nhead > 1
#   issue https://github.com/longzw1997/Open-GroundingDino/issues/115 (open; the analysis is the issue's;
#   torch's view(bsz, num_heads, L, S) of the mask is what makes it so)
#   a fixed variant uses repeat_interleave(nhead, dim=0)
# Reduced: the layer's self-attention with the repeated mask, the residual and the feed-forward; the mask is
# a per-sample [B, L, L] text mask (True = blocked) built from each row's length; not a verbatim copy.
import torch
from torch import nn

from _inputs import lengths


class EncoderLayerRepeatBuggy(nn.Module):
    def __init__(self, dim: int = 16, nhead: int = 2):
        super().__init__()
        self.nhead = nhead
        self.self_attn = nn.MultiheadAttention(dim, nhead)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, dim))

    def _per_head(self, src_mask):
        return src_mask.repeat(self.nhead, 1, 1)

    def forward(self, src, src_mask):
        # src [B, L, D] batch first for the caller; the layer works sequence first as the original
        x = src.transpose(0, 1)
        attn_mask = self._per_head(src_mask)
        x = self.norm1(x + self.self_attn(x, x, value=x, attn_mask=attn_mask)[0])
        x = self.norm2(x + self.ff(x))
        return x.transpose(0, 1)


class EncoderLayerRepeatFixed(EncoderLayerRepeatBuggy):
    def _per_head(self, src_mask):
        return src_mask.repeat_interleave(self.nhead, dim=0)


def inputs(batch_size: int = 4, seq_len: int = 8):
    src = torch.randn(batch_size, seq_len, 16)
    real = torch.arange(seq_len).unsqueeze(0) < lengths(batch_size, seq_len).unsqueeze(1)   # [B, L]
    src_mask = ~(real.unsqueeze(1) & real.unsqueeze(2))                                     # [B, L, L]
    src_mask[:, torch.arange(seq_len), torch.arange(seq_len)] = False                       # every row sees itself
    return src, src_mask
