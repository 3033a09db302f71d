"""Planted defect: the projection runs under torch.no_grad() inside forward and never trains."""
import torch
from torch import nn


class NoGradProjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.projection = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        with torch.no_grad():  # LINT: grad-disabled
            h = self.projection(x)
        return self.head(h)


def example_inputs(batch_size: int = 4):
    return torch.randn(batch_size, 8)
