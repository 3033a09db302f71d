# Source: allenai/allennlp, allennlp/modules/seq2vec_encoders/cnn_encoder.py, CnnEncoder.forward
#   buggy at 00bb6c59b3ac8fdc78dfe8d5b9b645ce8ed085c0 (tokens * mask, then max over every convolution window:
#   windows over padding (relu(bias) of an all-zero window) can win the max)
#   fixed in the current file (09c2322d68152fd4265f1ddf533ed19c88677db4): windows that reach a masked token get
#   the dtype's minimum before the max
#   issue https://github.com/allenai/allennlp/issues/4739 "The maxpool in cnn_encoder can be triggered by pad tokens"
# Reduced: the same convolutions, mask arithmetic and max re-written; mask is bool [B, T], True at real tokens
# (allennlp's convention); not a verbatim copy.
import torch
from torch import nn

from _inputs import set_batch


class CnnEncoderBuggy(nn.Module):
    def __init__(self, embedding_dim: int = 16, num_filters: int = 8, ngram_filter_sizes=(2, 3)):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, num_filters, size) for size in ngram_filter_sizes)
        self.activation = nn.ReLU()

    def forward(self, x, mask):
        tokens = torch.transpose(x * mask.unsqueeze(-1), 1, 2)
        return torch.cat([self.activation(conv(tokens)).max(dim=2)[0] for conv in self.convs], dim=1)


class CnnEncoderFixed(CnnEncoderBuggy):
    def forward(self, x, mask):
        tokens = torch.transpose(x * mask.unsqueeze(-1), 1, 2)
        batch_size = tokens.shape[0]
        last_unmasked = mask.sum(dim=1).unsqueeze(dim=-1)
        outputs = []
        for conv in self.convs:
            pool_length = tokens.shape[2] - conv.kernel_size[0] + 1
            activations = self.activation(conv(tokens))
            indices = torch.arange(pool_length).unsqueeze(0).expand(batch_size, pool_length)
            window_mask = indices.ge(last_unmasked - conv.kernel_size[0] + 1).unsqueeze(1).expand_as(activations)
            activations = activations + window_mask * torch.finfo(activations.dtype).min
            outputs.append(activations.max(dim=2)[0])
        pooled = torch.cat(outputs, dim=1)
        return torch.where(pooled == torch.finfo(pooled.dtype).min, torch.zeros_like(pooled), pooled)


def inputs(batch_size: int = 4, max_items: int = 12):
    return set_batch(batch_size, max_items, mask_name="mask", true_is_padding=False)
