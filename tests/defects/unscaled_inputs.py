"""Planted defect: unscaled inputs. An MLP regressor fed raw features in 0..100 (e.g. ages, percentages) with no
standardisation, trained with MSE to targets of the same size. The first layer's pre-activations are ~100x what
the default init expects, the output and the error are hundreds, and the global gradient norm passes 1e3 at
initialisation. grads.py: kind `exploding_gradient` whose measured cause is the input `x` ranging 0..100."""

import torch
from torch import nn


class Model(nn.Module):
    def __init__(self, features: int = 16, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)


def example_inputs(batch_size: int = 32):
    return (torch.rand(batch_size, 16) * 100,)


def mse_loss(output):
    """MSE to a target that is the (unscaled) sum of the first four features."""
    return ((output.squeeze(-1) - 400.0) ** 2).mean()
