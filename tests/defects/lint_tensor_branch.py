"""Planted defect: a Python `if` on a tensor's value picks the path for the whole batch."""
import torch
from torch import nn


class ValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.positive = nn.Linear(8, 8)
        self.negative = nn.Linear(8, 8)

    def forward(self, x, mask=None):
        if mask is not None and x.shape[0] > 1:
            x = x * mask
        if x.sum() > 0:  # LINT: tensor-branch
            return self.positive(x)
        return self.negative(x)


def example_inputs(batch_size: int = 4):
    return torch.randn(batch_size, 8)
