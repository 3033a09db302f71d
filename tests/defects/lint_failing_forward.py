"""Side-effect check: forward mutates a parameter and a buffer, changes mode and RNG, then raises."""
import torch
from torch import nn


class FailsHalfway(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        with torch.no_grad():  # LINT: grad-disabled
            self.linear.weight.mul_(2.0)  # LINT: parameter-in-place
            self.calls += 1
        torch.rand(3)
        self.train(not self.training)
        raise RuntimeError("planted failure after mutating the model")


def example_inputs(batch_size: int = 4):
    return torch.randn(batch_size, 8)
