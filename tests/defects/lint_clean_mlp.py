"""Control: a plain MLP with nothing to report."""
import torch
from torch import nn


class CleanMLP(nn.Module):
    def __init__(self, width: int = 16, depth: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, residual: bool = True) -> torch.Tensor:
        for layer in self.layers:
            h = torch.relu(layer(self.norm(x)))
            x = x + h if residual else h
        if x.dim() == 3 and x.shape[1] > 1:
            x = x.mean(dim=1)
        return x


def example_inputs(batch_size: int = 4):
    return torch.randn(batch_size, 16)
