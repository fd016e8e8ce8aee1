"""Predicted false negatives from k-reciprocal nearest neighbours of target slots (JSA paper Sec. 3.4, Eq. 12-13).

Two clips whose image target slots are mutual k-nearest neighbours, and whose audio target slots are too, probably
show the same kind of source; treating them as negatives of each other would push apart what belongs together, so
InfoNCE (Eq. 7) leaves such pairs out of its denominators.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor


class MiningDisabledWarning(UserWarning):
    """k-reciprocal mining switched itself off because the batch is too small for its k (shown once)."""


warnings.simplefilter("once", MiningDisabledWarning)


@torch.no_grad()
def reciprocal_false_negatives(image_target: Tensor, audio_target: Tensor, k: int) -> Tensor:
    """(B, B) bool mask, True at (i, j) when j is in R_k(i) = R_k^v(i) ∩ R_k^a(i) (Eq. 13).

    image_target, audio_target: (B, d) target slots (any norm; neighbours by cosine). N_k(i) are the k most
    similar other items (self excluded); R_k^v(i) = {j : j in N_k^v(i) and i in N_k^v(j)} (Eq. 12), likewise for
    audio. The mask is symmetric with a False diagonal and carries no gradient.
    When k >= B - 1 every item neighbours every other, so every pair would be reciprocal and InfoNCE would lose
    all its negatives; such a neighbourhood says nothing, and no pair is marked (likewise for k <= 0); the first
    time that switches mining off with k > 0 a warning says so.
    """
    size = image_target.shape[0]
    if k <= 0 or k >= size - 1:
        if k > 0:
            warnings.warn(f"k-reciprocal false-negative mining is off: k = {k} needs a batch of more than {k + 1} "
                          f"items (this one has {size}); lower train.reciprocal_k or raise the batch size",
                          MiningDisabledWarning, stacklevel=2)
        return torch.zeros(size, size, dtype=torch.bool, device=image_target.device)
    return _reciprocal_neighbours(image_target, k) & _reciprocal_neighbours(audio_target, k)


def _reciprocal_neighbours(vectors: Tensor, k: int) -> Tensor:
    """(B, d) -> (B, B) bool: (i, j) True when each is among the other's k nearest neighbours (Eq. 12)."""
    unit = F.normalize(vectors.float(), dim=-1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(float("-inf"))  # an item is not its own neighbour
    nearest = similarity.topk(k, dim=1).indices
    neighbours = torch.zeros_like(similarity, dtype=torch.bool).scatter_(1, nearest, True)
    return neighbours & neighbours.T
