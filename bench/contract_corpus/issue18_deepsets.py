# Source: model-expert issue 18 (this repository): DeepSets-style scorers written the way a user of this
# project writes them (phi per item, pool over the set, rho), with the caller's padding_mask True at the tail
# of each set. Not from a public repository: the issue's own planted cases.
import torch
from torch import nn

from _inputs import set_batch


class _Scorer(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.phi, self.rho = nn.Linear(dim, dim), nn.Linear(dim, 1)


class CountPaddingPool(_Scorer):
    """Zeroes the padded items, then divides by the padded length N."""

    def forward(self, items, padding_mask):
        keep = (~padding_mask).unsqueeze(-1).float()
        return self.rho((self.phi(items) * keep).sum(dim=1) / items.shape[1]).squeeze(-1)


class InvertedMask(_Scorer):
    """Reads True as keep: with the caller's True-at-padding mask it pools exactly the padding."""

    def forward(self, items, padding_mask):
        keep = padding_mask.unsqueeze(-1).float()
        return self.rho((self.phi(items) * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)).squeeze(-1)


class CorrectScorer(_Scorer):
    def forward(self, items, padding_mask):
        keep = (~padding_mask).unsqueeze(-1).float()
        return self.rho((self.phi(items) * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)).squeeze(-1)


def inputs(batch_size: int = 4, max_items: int = 12):
    return set_batch(batch_size, max_items)
