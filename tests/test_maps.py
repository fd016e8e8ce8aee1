import pytest
import torch
import torch.nn.functional as F

from jsa_retrieval.config import cpu_config
from jsa_retrieval.maps import localize, upsample_and_normalise
from jsa_retrieval.models import create_model

CONFIG = cpu_config()
SIZE = CONFIG.data.image_size
FREQ, TIME = CONFIG.data.spectrogram_shape


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(CONFIG, "jsa")


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.randn(2, 3, SIZE, SIZE), torch.randn(2, 1, FREQ, TIME)


@pytest.fixture(scope="module")
def maps(model, batch):
    return localize(model, *batch)


def test_full_map_has_image_size_and_spans_zero_to_one(maps):
    assert maps.coarse.shape == (2, 7, 7) and maps.full.shape == (2, SIZE, SIZE)
    assert maps.upsample_mode == "bicubic"
    torch.testing.assert_close(maps.full.flatten(1).amin(dim=1), torch.zeros(2))
    torch.testing.assert_close(maps.full.flatten(1).amax(dim=1), torch.ones(2))


@torch.no_grad()
def test_coarse_map_is_the_models_cross_map_in_eval_mode(model, batch, maps):
    model.eval()
    images, spectrograms = batch
    expected = model.cross_map(model.encode_audio(spectrograms), model.encode_image(images))
    torch.testing.assert_close(maps.coarse, expected)


@torch.no_grad()
def test_iqr_uses_the_refined_map_with_the_config_alpha_by_default(model, batch):
    model.eval()
    images, spectrograms = batch
    image, audio = model.encode_image(images), model.encode_audio(spectrograms)
    refined = localize(model, images, spectrograms, iqr=True)
    torch.testing.assert_close(refined.coarse, model.refined_map(audio, image, CONFIG.model.iqr_alpha))
    custom = localize(model, images, spectrograms, iqr=True, alpha=0.2)
    torch.testing.assert_close(custom.coarse, 0.2 * model.cross_map(audio, image)
                               + 0.8 * image.intra_map.reshape(2, 7, 7))


def test_localize_restores_training_mode_and_does_not_mask(model, batch, maps):
    model.train()
    again = localize(model, *batch)
    assert model.training
    torch.testing.assert_close(again.coarse, maps.coarse, rtol=0, atol=0)  # no random token masking


def test_one_sound_against_many_images_gives_one_map_per_image(model, batch):
    images, spectrograms = batch
    shared = localize(model, images, spectrograms[:1])
    assert shared.full.shape == (2, SIZE, SIZE)
    torch.testing.assert_close(shared.coarse[1], localize(model, images[1:], spectrograms[:1]).coarse[0],
                               rtol=1e-4, atol=1e-7)


def test_upsampling_matches_interpolate_then_min_max():
    coarse = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    full = upsample_and_normalise(coarse, 4, "bilinear")
    expected = F.interpolate(coarse[:, None], size=4, mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(full, (expected - expected.min()) / (expected.max() - expected.min()))
    nearest = upsample_and_normalise(coarse, (4, 4), "nearest")
    torch.testing.assert_close(nearest[0, :2, :2], torch.zeros(2, 2))
    torch.testing.assert_close(nearest[0, 2:, 2:], torch.ones(2, 2))


def test_constant_map_normalises_to_zeros_not_nan():
    coarse = torch.stack([torch.full((7, 7), 0.3), torch.arange(49.0).reshape(7, 7)])
    full = upsample_and_normalise(coarse, SIZE, "bicubic")
    assert not torch.isnan(full).any()
    torch.testing.assert_close(full[0], torch.zeros(SIZE, SIZE))
    assert full[1].min() == 0 and full[1].max() == 1


def test_baseline_maps_localize_too():
    torch.manual_seed(2)
    baseline = create_model(CONFIG, "ezvsl")
    maps = localize(baseline, torch.randn(1, 3, SIZE, SIZE), torch.randn(1, 1, FREQ, TIME), iqr=True,
                    upsample_mode="bilinear")
    assert maps.full.shape == (1, SIZE, SIZE) and 0 <= maps.full.min() and maps.full.max() <= 1
