"""A flat or near-flat location cosine c leaves the paper's map and Eq. 8's teacher as they are (issue: a
constant positive c used to give an all-zero fused map, and c = 0.5 +- 0.001 moved the gated teacher by 67 % of
ia's peak)."""
import torch

from jsa_retrieval.models import FLAT_LOCATION_RANGE, fuse_maps, min_max, relative_height
from training.losses import audio_gated_target


def _ia(rows: int = 3, tokens: int = 49) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(rows, tokens).softmax(dim=1)


def test_relative_height_is_min_max_above_the_floor_and_ones_when_flat():
    steep = torch.tensor([[0.0, 0.2, 0.1]])
    torch.testing.assert_close(relative_height(steep, floor=0.05), torch.tensor([[0.0, 1.0, 0.5]]))
    torch.testing.assert_close(relative_height(torch.full((1, 3), 0.7)), torch.ones(1, 3))
    # range 0.01 under a floor of 0.05: contrast 0.2 of min-max's, 1 - 0.2 * (1 - N)
    shallow = torch.tensor([[0.50, 0.51, 0.505]])
    torch.testing.assert_close(relative_height(shallow, floor=0.05), torch.tensor([[0.8, 1.0, 0.9]]))


def test_constant_positive_c_gives_the_papers_map():
    cross = torch.rand(2, 7, 7)
    fused = fuse_maps(cross, torch.full((2, 7, 7), 0.5), beta=1.0)
    torch.testing.assert_close(fused, min_max(cross))


def test_near_flat_c_moves_the_fused_map_by_no_more_than_its_range_over_the_floor():
    torch.manual_seed(1)
    cross = torch.rand(2, 7, 7)
    wobble = 0.001
    location = 0.5 + wobble * (2 * torch.rand(2, 7, 7) - 1)
    fused = fuse_maps(cross, location, beta=1.0)
    assert (fused - min_max(cross)).abs().max() <= 2 * wobble / FLAT_LOCATION_RANGE + 1e-6


def test_gated_teacher_stays_eq8s_under_near_flat_c():
    ia = _ia()
    torch.testing.assert_close(audio_gated_target(ia, torch.full(ia.shape, 0.5), 0.5, 0.1), ia)
    torch.manual_seed(2)
    near_flat = 0.5 + 0.001 * (2 * torch.rand(ia.shape) - 1)
    moved = (audio_gated_target(ia, near_flat, 0.5, 0.1) - ia).abs().max()
    assert moved < 0.05 * ia.max()  # min-max alone moved it by 67 % of ia's peak


def test_a_c_with_contrast_still_drops_the_silent_object():
    ia = torch.tensor([[0.5, 0.5, 0.0, 0.0]])  # two objects, equally salient
    location = torch.tensor([[0.6, 0.0, 0.0, 0.0]])  # c marks the first
    target = audio_gated_target(ia, location, margin=0.5, temperature=0.05)
    assert target[0, 0] > 0.99 and target[0, 1] < 0.01
