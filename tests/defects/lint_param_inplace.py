"""Planted defect: forward renormalises its own weight in place (outside the optimizer)."""
import torch
from torch import nn


class SelfNormalising(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        self.weight.data.div_(self.weight.data.norm())  # LINT: parameter-in-place
        return x @ self.weight


def example_inputs(batch_size: int = 4):
    return torch.randn(batch_size, 8)
