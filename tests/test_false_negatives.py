"""k-reciprocal false-negative mining (JSA Eq. 12-13) on vectors with hand-made neighbourhoods."""
from __future__ import annotations

import math

import pytest
import torch

from training.false_negatives import reciprocal_false_negatives


def unit_vectors(degrees: list[float], scales: list[float] | None = None) -> torch.Tensor:
    """(B, 2) vectors at the given angles; cosine neighbours follow the angular distances."""
    scales = scales or [1.0] * len(degrees)
    return torch.tensor([[s * math.cos(math.radians(a)), s * math.sin(math.radians(a))]
                         for a, s in zip(degrees, scales)])


# Image angles 0, 10, 30, 100, 115. Nearest other (k = 1): 0->1, 1->0, 2->1, 3->4, 4->3.
#   reciprocal: {0,1}, {3,4}; (2,1) is one-sided (1's nearest is 0).
# Audio angles 0, 12, 50, 200, 300. Nearest other: 0->1, 1->0, 2->1, 3->4, 4->0.
#   reciprocal: {0,1} only; (3,4) is reciprocal in the image modality alone.
IMAGE = unit_vectors([0, 10, 30, 100, 115])
AUDIO = unit_vectors([0, 12, 50, 200, 300])


def pairs_mask(size: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    for i, j in pairs:
        mask[i, j] = mask[j, i] = True
    return mask


def test_k1_keeps_pairs_reciprocal_in_both_modalities_only():
    mask = reciprocal_false_negatives(IMAGE, AUDIO, k=1)
    assert torch.equal(mask, pairs_mask(5, [(0, 1)]))


def test_k2_gives_the_hand_computed_triangle():
    # Image k=2: N(0)={1,2}, N(1)={0,2}, N(2)={1,0}, N(3)={4,2}, N(4)={3,2} -> reciprocal 01, 02, 12, 34.
    # Audio k=2: N(0)={1,2}, N(1)={0,2}, N(2)={1,0}, N(3)={4,2}, N(4)={0,1} -> reciprocal 01, 02, 12.
    mask = reciprocal_false_negatives(IMAGE, AUDIO, k=2)
    assert torch.equal(mask, pairs_mask(5, [(0, 1), (0, 2), (1, 2)]))


def test_modalities_are_intersected_not_united():
    image_only = reciprocal_false_negatives(IMAGE, IMAGE, k=1)
    assert torch.equal(image_only, pairs_mask(5, [(0, 1), (3, 4)]))
    audio_only = reciprocal_false_negatives(AUDIO, AUDIO, k=1)
    assert torch.equal(audio_only, pairs_mask(5, [(0, 1)]))


def test_neighbours_are_by_cosine_not_by_norm():
    scaled = unit_vectors([0, 10, 30, 100, 115], scales=[5.0, 0.1, 3.0, 0.5, 9.0])
    assert torch.equal(reciprocal_false_negatives(scaled, AUDIO, k=2), reciprocal_false_negatives(IMAGE, AUDIO, k=2))


def test_mask_is_symmetric_with_false_diagonal_and_no_gradient():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(32, 8, generator=generator, requires_grad=True)
    audio = (image.detach() + 0.3 * torch.randn(32, 8, generator=generator)).requires_grad_()
    mask = reciprocal_false_negatives(image, audio, k=4)
    assert mask.dtype == torch.bool and mask.shape == (32, 32)
    assert torch.equal(mask, mask.T)
    assert not mask.diagonal().any()
    assert mask.any()
    assert not mask.requires_grad


def test_whole_batch_neighbourhood_marks_nothing():
    for k in (4, 5, 20, 0):  # B = 5: k >= B - 1 covers everyone; k = 0 has no neighbours
        assert not reciprocal_false_negatives(IMAGE, AUDIO, k=k).any()
    assert reciprocal_false_negatives(IMAGE, AUDIO, k=3).any()


def test_mining_that_switches_itself_off_says_so():
    from training.false_negatives import MiningDisabledWarning

    vectors = torch.randn(4, 8)
    with pytest.warns(MiningDisabledWarning, match="k = 3 needs a batch of more than 4"):
        mask = reciprocal_false_negatives(vectors, vectors, 3)
    assert not mask.any()
