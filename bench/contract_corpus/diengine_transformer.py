# Source: opendilab/DI-engine, ding/torch_utils/network/transformer.py, Attention / Transformer
#   buggy at 3bf01a9212c0b4a1a4d0877884941d5ad70630cd (score.masked_fill(~mask, -1e9) with the result dropped:
#   the mask has no effect)
#   fixed at dc064896e164cae1061db8b1ffe7cd084a0aed1f (score.masked_fill_(~mask, value=-1e9))
#   issue https://github.com/opendilab/DI-engine/issues/333
# Reduced: one TransformerLayer (attention, LayerNorm, MLP) re-written with the same ops; the mask is
# [B, N] bool, True at valid entries, expanded to [B, 1, N, N] as Transformer.forward does; not a verbatim copy.
import math

import torch
import torch.nn.functional as F
from torch import nn

from _inputs import set_batch


class _Attention(nn.Module):
    def __init__(self, dim, head_dim, heads, in_place):
        super().__init__()
        self.heads, self.head_dim, self.in_place = heads, head_dim, in_place
        self.pre = nn.Linear(dim, head_dim * heads * 3)
        self.project = nn.Linear(head_dim * heads, dim)

    def _split(self, x, transpose=False):
        b, n = x.shape[:2]
        x = x.view(b, n, self.heads, self.head_dim).permute(0, 2, 1, 3)
        return x.permute(0, 1, 3, 2) if transpose else x

    def forward(self, x, mask):
        b, n = x.shape[:2]
        query, key, value = torch.chunk(self.pre(x), 3, dim=2)
        query, key, value = self._split(query), self._split(key, True), self._split(value)
        score = torch.matmul(query, key) / math.sqrt(self.head_dim)
        if self.in_place:
            score.masked_fill_(~mask, value=-1e9)
        else:
            score.masked_fill(~mask, value=-1e9)  # the buggy line: out of place, result unused
        attention = torch.matmul(F.softmax(score, dim=-1), value).permute(0, 2, 1, 3).contiguous()
        return self.project(attention.view(b, n, -1))


class DITransformerBuggy(nn.Module):
    in_place = False

    def __init__(self, input_dim: int = 16, dim: int = 32):
        super().__init__()
        self.embedding = nn.Sequential(nn.Linear(input_dim, dim), nn.ReLU())
        self.attention = _Attention(dim, 8, 2, self.in_place)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x, mask):
        mask = mask.unsqueeze(dim=1).repeat(1, mask.shape[1], 1).unsqueeze(dim=1)
        x = self.embedding(x)
        x = self.norm1(x + self.attention(x, mask))
        return self.norm2(x + self.mlp(x))


class DITransformerFixed(DITransformerBuggy):
    in_place = True


def inputs(batch_size: int = 4, max_items: int = 12):
    return set_batch(batch_size, max_items, mask_name="mask", true_is_padding=False)
