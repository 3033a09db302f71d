"""Planted defect: one branch is detached, so `self.branch` never receives a gradient."""
import torch
from torch import nn


class DetachedBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(8, 8)
        self.branch = nn.Linear(8, 8)

    def forward(self, x):
        main = self.trunk(x)
        side = self.branch(x).detach()  # LINT: detach
        return main + side


def example_inputs(batch_size: int = 4):
    return torch.randn(batch_size, 8)
