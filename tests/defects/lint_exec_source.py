"""Bad input: a module class created by exec has no source file to read; lint must skip it, not crash."""
import torch
from torch import nn

_SOURCE = '''
class HiddenLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        return self.linear(x) * x.sum().item()
'''
_namespace = {"nn": nn, "__name__": __name__}
exec(compile(_SOURCE, "<generated>", "exec"), _namespace)
HiddenLayer = _namespace["HiddenLayer"]


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = HiddenLayer()

    def forward(self, x):
        return self.hidden(x)


def example_inputs(batch_size: int = 4):
    return torch.randn(batch_size, 8)
