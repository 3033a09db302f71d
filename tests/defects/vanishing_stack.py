"""Planted defect: vanishing gradients. 20 Linear(32, 32) + Sigmoid layers with weights drawn
N(0, 0.05**2). Backward through one layer multiplies the gradient by sigmoid' <= 0.25 times the
weight's gain 0.05*sqrt(32) = 0.28, i.e. about 0.07 per layer; 0.07**19 = 1e-22 from the last
layer to the first. grads.py: kind `vanishing_gradient`."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, depth: int = 20, width: int = 32):
        super().__init__()
        blocks = []
        for _ in range(depth):
            linear = nn.Linear(width, width)
            nn.init.normal_(linear.weight, std=0.05)
            nn.init.zeros_(linear.bias)
            blocks += [linear, nn.Sigmoid()]
        self.layers = nn.Sequential(*blocks)

    def forward(self, x):
        return self.layers(x)


def example_inputs(batch_size: int = 16):
    return (torch.randn(batch_size, 32),)
