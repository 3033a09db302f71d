"""Planted defect: float(t) / int(t) inside forward turn tensors into Python numbers, like .item()."""
import torch
from torch import nn


class FloatCast(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        scale = float(x.abs().mean())  # LINT: tensor-to-python
        steps = int(x.shape[0])  # a shape is not a tensor value: not flagged
        return self.linear(x) * scale * steps


def example_inputs(batch_size: int = 4):
    return torch.randn(batch_size, 8)
