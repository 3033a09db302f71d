"""Seed-style ModelAutoEncoder: compress a model's descriptor vector into a 512-d embedding.

    x            float32 [B, input_dim]     one descriptor per pre-trained model
    -> dict with reconstruction [B, input_dim], embedding [B, 512] and
       loss = MSE(reconstruction, x) + l1_weight * mean |embedding|  (a scalar)
"""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def _mlp(dims: list[int], activation: str, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers += [ACTIVATIONS[activation](), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class ModelAutoEncoder(nn.Module):
    def __init__(self, input_dim: int = 4096, hidden_dims: list[int] | tuple[int, ...] = (2048, 1024),
                 embedding_dim: int = 512, activation: str = "relu", dropout: float = 0.1, l1_weight: float = 1e-4):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, not {activation!r}")
        dims = [input_dim, *hidden_dims, embedding_dim]
        self.encoder = _mlp(dims, activation, dropout)
        self.decoder = _mlp(dims[::-1], activation, dropout)
        self.l1_weight = l1_weight

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        embedding = self.encoder(x)                                                  # (B, 512)
        reconstruction = self.decoder(embedding)                                     # (B, input_dim)
        loss = nn.functional.mse_loss(reconstruction, x) + self.l1_weight * embedding.abs().mean()
        return {"reconstruction": reconstruction, "embedding": embedding, "loss": loss}


def example_inputs(batch_size: int = 64, input_dim: int = 4096):
    """Built on the default device, so under `with torch.device("meta")` it allocates nothing."""
    return torch.randn(batch_size, input_dim)
