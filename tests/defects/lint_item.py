"""Planted defect: .item() inside forward turns the scale into a Python float (no gradient to `gate`)."""
import torch
from torch import nn


class ItemScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.gate = nn.Linear(8, 1)

    def forward(self, x):
        scale = self.gate(x).mean().item()  # LINT: tensor-to-python
        return self.linear(x) * scale


def example_inputs(batch_size: int = 4):
    return torch.randn(batch_size, 8)
