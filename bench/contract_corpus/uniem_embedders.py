# Source: wangyuxinwhy/uniem, uniem/model.py, LastMeanEmbedder / FirstLastEmbedder / LastWeightedEmbedder
#   buggy at ba0a8e4^ (self.encoder(input_ids) without the attention mask: the encoder attends to the padding,
#   so the real tokens' hidden states, and the masked pooling of them, depend on the pad tokens)
#   fixed at ba0a8e43e7ce5fe28b177f2c664fa0575ea03fbc (the encoder gets attention_mask=attention_mask)
#   PR https://github.com/wangyuxinwhy/uniem/pull/23 "fix: attention mask bug"
# Reduced: the three poolings re-written with the same ops over a tiny BERT (uniem loads a Hugging Face
# encoder); the buggy forward takes `mask`, the fixed one `attention_mask`, as in the two versions; not a
# verbatim copy.
import torch
import transformers
from torch import nn

from _inputs import VOCAB, token_batch


def _mean(hidden, mask):
    mask = mask.float()
    return torch.sum(hidden * mask.unsqueeze(-1), dim=1) / torch.sum(mask, dim=-1, keepdim=True)


class _Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = transformers.BertModel(transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64))


class LastMeanBuggy(_Embedder):
    def forward(self, input_ids, mask):
        return _mean(self.encoder(input_ids).last_hidden_state, mask)


class LastMeanFixed(_Embedder):
    def forward(self, input_ids, attention_mask):
        return _mean(self.encoder(input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask)


class FirstLastBuggy(_Embedder):
    def forward(self, input_ids, mask):
        states = self.encoder(input_ids, output_hidden_states=True).hidden_states
        return (_mean(states[0], mask) + _mean(states[-1], mask)) / 2


class FirstLastFixed(_Embedder):
    def forward(self, input_ids, attention_mask):
        states = self.encoder(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        return (_mean(states[0], attention_mask) + _mean(states[-1], attention_mask)) / 2


class LastWeightedBuggy(_Embedder):
    def forward(self, input_ids, mask):
        weights = (torch.arange(input_ids.shape[1]) + 1).float()
        hidden = self.encoder(input_ids).last_hidden_state
        hidden = hidden * mask.unsqueeze(-1).float() * weights.unsqueeze(0).unsqueeze(-1)
        return torch.sum(hidden, dim=1) / torch.sum(weights * mask, dim=-1, keepdim=True)


class LastWeightedFixed(_Embedder):
    def forward(self, input_ids, attention_mask):
        weights = (torch.arange(input_ids.shape[1]) + 1).float()
        hidden = self.encoder(input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden * attention_mask.unsqueeze(-1).float() * weights.unsqueeze(0).unsqueeze(-1)
        return torch.sum(hidden, dim=1) / torch.sum(weights * attention_mask, dim=-1, keepdim=True)


def buggy_inputs(batch_size: int = 4, seq_len: int = 12):
    batch = token_batch(batch_size, seq_len)
    return {"input_ids": batch["input_ids"], "mask": batch["attention_mask"]}


def inputs(batch_size: int = 4, seq_len: int = 12):
    return token_batch(batch_size, seq_len)
