"""Clean control (no defect): a small MLP with PyTorch's default init, BatchNorm and dropout.
grads.py must raise no RISK or CAUTION on it."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x):
        return self.net(x)


def example_inputs(batch_size: int = 16):
    return (torch.randn(batch_size, 16),)
