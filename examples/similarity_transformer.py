"""Seed-style SimilarityTransformer: rank pre-trained models for a dataset.

A dataset is a variable-length set of CLIP image embeddings, padded to T and masked; the candidate
models are a fixed set of M 512-d embeddings from the ModelAutoEncoder. The transformer encodes the
dataset set, pools it (ignoring padding) and scores every model against it.

    dataset_embeddings  float32 [B, T, 512]   CLIP features, padded
    padding_mask        bool    [B, T]        True where a position is padding
    model_embeddings    float32 [M, 512]      one row per candidate model (shared by the batch)
    -> scores           float32 [B, M]        unbounded ranking logits
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SimilarityTransformer(nn.Module):
    def __init__(self, model_embedding_dim: int = 512, dataset_embedding_dim: int = 512, d_model: int = 256,
                 num_heads: int = 8, num_layers: int = 4, dim_feedforward: int = 1024, dropout: float = 0.1,
                 activation: str = "gelu"):
        super().__init__()
        self.dataset_proj = nn.Linear(dataset_embedding_dim, d_model)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward, dropout, activation=activation,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.model_proj = nn.Sequential(nn.Linear(model_embedding_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.scale = 1.0 / math.sqrt(d_model)

    def forward(self, dataset_embeddings: torch.Tensor, padding_mask: torch.Tensor,
                model_embeddings: torch.Tensor) -> torch.Tensor:
        tokens = self.dataset_proj(dataset_embeddings)                               # (B, T, D)
        tokens = self.encoder(tokens, src_key_padding_mask=padding_mask)             # (B, T, D)
        keep = (~padding_mask).unsqueeze(-1).to(tokens.dtype)                        # (B, T, 1)
        pooled = (tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)         # (B, D)
        models = self.model_proj(model_embeddings)                                   # (M, D)
        return pooled @ models.T * self.scale                                        # (B, M)


def example_inputs(batch_size: int = 8, max_images: int = 64, num_models: int = 32, dim: int = 512):
    """A padded batch: dataset b holds between max_images/4 and max_images images.

    Built on the default device, so under `with torch.device("meta")` it allocates nothing."""
    lengths = torch.linspace(max_images // 4, max_images, batch_size).round().long()        # (B,)
    padding_mask = torch.arange(max_images).unsqueeze(0) >= lengths.unsqueeze(1)            # (B, T)
    dataset_embeddings = torch.randn(batch_size, max_images, dim)                           # (B, T, 512)
    model_embeddings = torch.randn(num_models, dim)                                         # (M, 512)
    return dataset_embeddings, padding_mask, model_embeddings
