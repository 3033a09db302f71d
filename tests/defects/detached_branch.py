"""Planted defect: a detached branch. `branch` runs and its output changes the result, but
`.detach()` cuts it out of the graph, so branch.weight never gets a gradient.
grads.py: kind `detached` on branch."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(16, 32)
        self.branch = nn.Linear(16, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        mixed = torch.tanh(self.trunk(x)) + self.branch(x).detach()  # the bug: .detach()
        return self.head(mixed)


def example_inputs(batch_size: int = 16):
    return (torch.randn(batch_size, 16),)
