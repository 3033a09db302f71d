"""Planted defects for the remaining rules, reached through a helper method and a helper function,
beside look-alikes that must NOT be reported (shape checks, None checks, flags, buffer updates)."""
import torch
from torch import nn
from torch import no_grad as frozen  # an alias: still torch.no_grad


def _scale_of(h):
    return torch.tensor(h.abs().max())  # LINT: tensor-rewrap


class ManyRules(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        self.register_buffer("seen", torch.zeros(()))
        self.memory = torch.zeros(8)  # a plain tensor attribute, not a buffer
        self.steps = 0

    def _normalise(self, h):
        peak = h.abs().max().tolist()  # LINT: tensor-to-python
        return h / (1.0 + peak)

    @frozen()  # LINT: grad-disabled
    def _statistics(self, h):
        return h.mean(0)

    def forward(self, x: torch.Tensor, mask=None, use_head: bool = True, steps: int = 2):
        if mask is not None and x.shape[0] > 1 and x.dim() == 2 and self.training:
            x = x.masked_fill(mask, 0.0)
        h = self._normalise(self.linear(x))
        h = h * _scale_of(h)
        self.memory += self._statistics(h)  # LINT: tensor-attribute-in-place
        self.seen += 1
        self.steps += 1
        raw = h.data  # LINT: data-access
        torch.set_grad_enabled(False)  # LINT: grad-disabled
        torch.set_grad_enabled(True)
        while (h > 10).any():  # LINT: tensor-branch
            h = h / 2
        h = h if mask else -h  # LINT: tensor-branch
        for parameter in self.head.parameters():
            parameter.copy_(parameter * 0.5)  # LINT: parameter-in-place
        logits = self.head(h + raw) if use_head else h
        label = logits.argmax(-1)  # LINT: zero-gradient-op
        picked = logits[torch.arange(logits.shape[0]), logits.argmin(-1)]  # index: gradient reaches logits
        for _ in range(steps):
            picked = picked * 1.0
        return logits, label.float(), picked


def example_inputs(batch_size: int = 4):
    return torch.randn(batch_size, 8)
