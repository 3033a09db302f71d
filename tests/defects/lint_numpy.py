"""Planted defect: a round trip through NumPy inside forward cuts the graph."""
import numpy as np
import torch
from torch import nn


class NumpyNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        h = self.linear(x)
        norms = np.linalg.norm(h.detach().cpu().numpy(), axis=-1, keepdims=True)  # LINT: tensor-to-numpy detach
        return h / torch.from_numpy(norms)


def example_inputs(batch_size: int = 4):
    return torch.randn(batch_size, 8)
