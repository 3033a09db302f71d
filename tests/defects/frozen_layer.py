"""Not a bug, a frozen layer: `encoder` has requires_grad=False (a pre-trained part kept fixed,
as the seed's multi-stage training does with the AutoEncoder). grads.py reports kind `frozen`
(INFO), not a gradient-flow problem."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(16, 32)
        self.encoder.requires_grad_(False)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(torch.relu(self.encoder(x)))


def example_inputs(batch_size: int = 16):
    return (torch.randn(batch_size, 16),)
