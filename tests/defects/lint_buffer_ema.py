"""Control: running statistics kept in buffers under torch.no_grad() (BatchNorm's pattern) are not findings;
the same no_grad around a computation that feeds the output is."""
import torch
from torch import nn


class RunningCentre(nn.Module):
    def __init__(self, width: int = 8, momentum: float = 0.1):
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        h = self.linear(x)
        if self.training:
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * h.mean(0))
                self.updates += 1
        with torch.no_grad():  # LINT: grad-disabled
            centre = self.linear(self.running_mean)
        return h - centre


def example_inputs(batch_size: int = 4):
    return torch.randn(batch_size, 8)
