"""Clean control: a small torch nn.TransformerEncoder (2 layers, d_model 32) with a linear head.
grads.py must raise no RISK or CAUTION on it."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, d_model: int = 32):
        super().__init__()
        self.embed = nn.Linear(8, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 1)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)))


def example_inputs(batch_size: int = 4):
    return (torch.randn(batch_size, 10, 8),)
