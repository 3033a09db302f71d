"""Planted defect: a custom autograd.Function whose backward forgets the factor 2 of d(x^2)/dx."""
import torch
from torch import nn


class WrongSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad_output):  # LINT: custom-function-gradcheck
        (x,) = ctx.saved_tensors
        return grad_output * x  # should be 2 * x


class SquareNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        return WrongSquare.apply(self.linear(x))


def example_inputs(batch_size: int = 4):
    return torch.randn(batch_size, 8)
