"""Planted defect: exploding gradients. 20 bias-free Linear(32, 32) layers with PyTorch's default
init scaled x3. Default init is U(-1/sqrt(32), 1/sqrt(32)), std 1/sqrt(3*32), so each layer
multiplies the signal's norm by about 3*sqrt(32)/sqrt(3*32) = sqrt(3) = 1.73, forward and
backward: 1.73**20 = 5.9e4. grads.py: kind `exploding_gradient`."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, depth: int = 20, width: int = 32):
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(depth)])
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.mul_(3.0)

    def forward(self, x):
        return self.layers(x)


def example_inputs(batch_size: int = 16):
    return (torch.randn(batch_size, 32),)
