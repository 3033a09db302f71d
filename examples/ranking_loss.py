"""Seed-style RankingLoss: pairwise margin ranking over the models scored for each dataset.

For every dataset b and every pair of models (i, j) with relevance[b, i] > relevance[b, j], the
loss asks scores[b, i] to exceed scores[b, j] by `margin`:
    mean over such pairs of relu(margin - (scores[b, i] - scores[b, j]))
"""

from __future__ import annotations

import torch
from torch import nn


class RankingLoss(nn.Module):
    def __init__(self, margin: float = 0.1):
        super().__init__()
        self.margin = margin

    def forward(self, scores: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
        # scores, relevance: (B, M)
        score_gap = scores.unsqueeze(2) - scores.unsqueeze(1)                        # (B, M, M)
        preferred = relevance.unsqueeze(2) > relevance.unsqueeze(1)                  # (B, M, M)
        hinge = torch.relu(self.margin - score_gap)
        return (hinge * preferred).sum() / preferred.sum().clamp(min=1)


def synthetic_relevance(batch_size: int, num_models: int) -> torch.Tensor:
    """A fixed relevance per dataset: model i is (i * 7 + b) mod M; deterministic and free of any RNG."""
    models = torch.arange(num_models).unsqueeze(0)                                   # (1, M)
    datasets = torch.arange(batch_size).unsqueeze(1)                                # (B, 1)
    return ((models * 7 + datasets) % num_models).float()                           # (B, M)


def ranking_loss(scores: torch.Tensor) -> torch.Tensor:
    """--loss entry point: RankingLoss(margin=0.1) of the scores against a synthetic relevance."""
    relevance = synthetic_relevance(scores.shape[0], scores.shape[1]).to(device=scores.device, dtype=scores.dtype)
    return RankingLoss(margin=0.1)(scores, relevance)
