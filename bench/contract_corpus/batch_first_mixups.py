# Source: two documented batch-mixing bugs, a batch-first tensor fed to torch attention that reads dim 0 as the
# sequence (nn.TransformerEncoder / nn.MultiheadAttention default batch_first=False), so attention runs
# ACROSS the samples of a batch.
#
# Source 1: IBM/TabFormer, models/hierarchical.py, TabFormerEmbeddings.forward
#   buggy at 600d4e9^ ([B, T*ncols, F] given straight to the encoder); fixed at
#   600d4e922a3278d2928c3221d7aa90da71647a12 (permute(1, 0, 2) before and after the encoder)
#   PR https://github.com/IBM/TabFormer/pull/14 "bug fix: set the correct ordering of dimensions in the input tensor"
# Source 2: om-ai-lab/OmDet, omdet/omdet_v2_turbo/ela_encoder.py, TransformerLayer
#   buggy at 542ce974ee22e16f9e532500e3f84e4702c03abf (torch.nn.MultiheadAttention(d_model, nhead, dropout) on
#   [B, H*W, C]); fixed by the maintainers with batch_first=True
#   issue https://github.com/om-ai-lab/OmDet/issues/19 "Batched MultiHeadAttention"
# Reduced: the embedding/encoder/projection of TabFormer and the encoder layer (attention, residual, LayerNorm,
# feed-forward, 2-D sin-cos positions left out) of OmDet re-written with the same ops; not verbatim copies.
import torch
import torch.nn.functional as F
from torch import nn


class TabFormerEmbeddingsBuggy(nn.Module):
    permute = False

    def __init__(self, vocab_size: int = 50, field_hidden: int = 8, ncols: int = 3, hidden: int = 16):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, field_hidden, padding_idx=0)
        layer = nn.TransformerEncoderLayer(d_model=field_hidden, nhead=2, dim_feedforward=field_hidden, dropout=0.0)
        self.transformer_encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.lin_proj = nn.Linear(field_hidden * ncols, hidden)

    def forward(self, input_ids):
        embeds = self.word_embeddings(input_ids)
        shape = list(embeds.size())
        embeds = embeds.view([shape[0], -1, shape[-1]])
        if self.permute:
            embeds = self.transformer_encoder(embeds.permute(1, 0, 2)).permute(1, 0, 2).contiguous()
        else:
            embeds = self.transformer_encoder(embeds)
        return self.lin_proj(embeds.view(shape[:-2] + [-1]))


class TabFormerEmbeddingsFixed(TabFormerEmbeddingsBuggy):
    permute = True


def tabformer_inputs(batch_size: int = 4, seq_len: int = 5):
    return torch.randint(1, 50, (batch_size, seq_len, 3))


class ELATransformerLayerBuggy(nn.Module):
    batch_first = False

    def __init__(self, d_model: int = 16, nhead: int = 2, dim_feedforward: int = 32):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, 0.0, batch_first=self.batch_first)
        self.linear1, self.linear2 = nn.Linear(d_model, dim_feedforward), nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def forward(self, feature_map):
        b, c, h, w = feature_map.shape
        src = feature_map.flatten(start_dim=2).transpose(1, 2)               # [B, H*W, C]
        src = self.norm1(src + self.self_attn(src, src, value=src)[0])
        src = self.norm2(src + self.linear2(F.relu(self.linear1(src))))
        return src.transpose(1, 2).reshape(-1, c, h, w)


class ELATransformerLayerFixed(ELATransformerLayerBuggy):
    batch_first = True


def ela_inputs(batch_size: int = 4, height: int = 3, width: int = 4):
    return torch.randn(batch_size, 16, height, width)
