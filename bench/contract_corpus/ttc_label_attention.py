# Source: InseeFrLab/torchTextClassifiers, torchTextClassifiers/model/components/text_embedder.py, LabelAttention
#   buggy at 9a8b215^ (attn_mask = attention_mask == 0 passed to F.scaled_dot_product_attention, whose bool
#   mask is True where attention is ALLOWED: the labels attend to the padding only)
#   fixed at 9a8b215dde66d6d549f4e479899edbb7c287fc12 (attention_mask == 1)
#   PR https://github.com/InseeFrLab/torchTextClassifiers/pull/92 "fix: correct LabelAttention mask"
# Reduced: the label cross-attention re-written with the same ops (label queries, QK rms-norm, SDPA with the
# bool mask, output projection); token embeddings come from an nn.Embedding; not a verbatim copy.
import torch
import torch.nn.functional as F
from torch import nn

from _inputs import VOCAB, token_batch


def _norm(x):
    return F.rms_norm(x, (x.size(-1),))


class LabelAttentionBuggy(nn.Module):
    keep_value = 0  # the buggy comparison

    def __init__(self, dim: int = 32, heads: int = 2, num_classes: int = 5):
        super().__init__()
        self.heads, self.head_dim, self.num_classes = heads, dim // heads, num_classes
        self.embed = nn.Embedding(VOCAB, dim)
        self.label_embeds = nn.Embedding(num_classes, dim)
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k = nn.Linear(dim, dim, bias=False)
        self.c_v = nn.Linear(dim, dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, input_ids, attention_mask):
        tokens = self.embed(input_ids)
        b, t, _ = tokens.shape
        labels = _norm(self.label_embeds(torch.arange(self.num_classes).expand(b, -1)))
        q = self.c_q(labels).view(b, self.num_classes, self.heads, self.head_dim)
        k = self.c_k(tokens).view(b, t, self.heads, self.head_dim)
        v = self.c_v(tokens).view(b, t, self.heads, self.head_dim)
        q, k = _norm(q), _norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        attn_mask = (attention_mask == self.keep_value).unsqueeze(1).unsqueeze(2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.c_proj(y.transpose(1, 2).reshape(b, self.num_classes, -1))


class LabelAttentionFixed(LabelAttentionBuggy):
    keep_value = 1


def inputs(batch_size: int = 4, seq_len: int = 12):
    return token_batch(batch_size, seq_len)
