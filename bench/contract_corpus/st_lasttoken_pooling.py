# Source: huggingface/sentence-transformers, sentence_transformers/models/Pooling.py, pooling_mode_lasttoken
#   buggy before PR #2111: gather index = argmin(attention_mask) - 1, clamped at 0, so a row with no padding
#   (argmin 0) pools its FIRST token instead of its last
#   fixed in PR https://github.com/huggingface/sentence-transformers/pull/2111 "Fix indexing of lasttoken
#   pooling for longest sequence": rows whose minimum is 1 use seq_len - 1
# Reduced: the gather re-written with the same ops over token embeddings from an nn.Embedding + one
# TransformerEncoderLayer with the padding mask; not a verbatim copy.
import torch
from torch import nn

from _inputs import VOCAB, token_batch


class LastTokenBuggy(nn.Module):
    def __init__(self, dim: int = 32):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.layer = nn.TransformerEncoderLayer(dim, 2, dim_feedforward=64, dropout=0.0, batch_first=True)

    def _tokens(self, input_ids, attention_mask):
        return self.layer(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)

    def _index(self, attention_mask):
        return torch.clamp(torch.argmin(attention_mask, 1, keepdim=False) - 1, min=0)

    def forward(self, input_ids, attention_mask):
        tokens = self._tokens(input_ids, attention_mask)
        bs, _, hidden = tokens.shape
        index = self._index(attention_mask).unsqueeze(-1).repeat(1, hidden).unsqueeze(1)
        return torch.gather(tokens, 1, index).squeeze(1)


class LastTokenFixed(LastTokenBuggy):
    def _index(self, attention_mask):
        values, indices = torch.min(attention_mask, 1, keepdim=False)
        return torch.where(values == 0, indices, attention_mask.shape[1]) - 1


def inputs(batch_size: int = 4, seq_len: int = 12):
    return token_batch(batch_size, seq_len)
