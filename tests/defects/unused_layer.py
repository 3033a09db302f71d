"""Planted defect: an unused layer. `extra` is built (and counted, and handed to the optimizer)
but forward never calls it. grads.py: kind `unused` on extra."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.extra = nn.Linear(32, 32)  # the bug: never called
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(torch.relu(self.fc1(x)))


def example_inputs(batch_size: int = 16):
    return (torch.randn(batch_size, 16),)
