"""Planted defect: a forward that makes NaN. `features` takes the log of a Linear's output, which
is negative for about half the entries, so its output holds NaN and every gradient is NaN.
grads.py: kind `non_finite_activation` naming `features` (the first module whose output was not
finite), and `non_finite_gradient`."""

import torch
from torch import nn


class LogFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 32)

    def forward(self, x):
        return torch.log(self.proj(x))  # the bug: log of a value that can be negative


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = LogFeatures()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.features(x))


def example_inputs(batch_size: int = 16):
    return (torch.randn(batch_size, 16),)
