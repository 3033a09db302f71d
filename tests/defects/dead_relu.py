"""Planted defect: a dead ReLU layer. fc1's bias is -100, so every pre-activation is far below 0
(inputs are standard normal, |w.x| is a few units), relu1 outputs exactly 0 for every sample and
unit, and nothing upstream of relu1 ever receives a gradient. grads.py: kind `dead_units` on relu1."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.fc1 = nn.Linear(16, width)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(width, width)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(width, 1)
        with torch.no_grad():
            self.fc1.bias.fill_(-100.0)

    def forward(self, x):
        return self.head(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


def example_inputs(batch_size: int = 16):
    return (torch.randn(batch_size, 16),)
