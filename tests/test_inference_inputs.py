"""Inference inputs made in two steps (workers decode and resize, the main process normalises and makes the batch's
spectrograms) equal ClipDataset's test items; JPEG draft decoding happens only where it shrinks the work."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jsa_retrieval.clips import Clip
from jsa_retrieval.config import get_config
from jsa_retrieval.dataset import ClipDataset, InferenceClipDataset, collate_skipping_failures, model_inputs
from jsa_retrieval.decode import load_image
from jsa_retrieval.transforms import image_transform, log_spectrogram, normalise_pixels, squash_image

from conftest import write_image, write_tone


def smooth_photo(path: Path, size: int, seed: int = 0) -> Path:
    """A photo-like JPEG: smooth colour gradients and a few soft blobs (random noise is not what cameras see)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = []
    for _ in range(3):
        blobs = sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.02) for cx, cy in rng.uniform(0, 1, (3, 2)))
        channels.append(0.4 * x + 0.3 * y + 0.5 * blobs / 3)
    pixels = np.clip(np.stack(channels, -1) * 255, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


@pytest.fixture
def clips(tmp_path: Path) -> list[Clip]:
    """Mixed inputs: PNG and JPEG frames, mono 16 kHz, stereo 44.1 kHz, audio shorter and longer than the window."""
    made = []
    for i in range(5):
        suffix = ".jpg" if i % 2 else ".png"
        image = write_image(tmp_path / f"frames/c{i}{suffix}", size=48 + 16 * i, seed=i)
        audio = write_tone(tmp_path / f"audio/c{i}.wav", seconds=0.6 + 0.5 * i, rate=44100 if i == 3 else 16000,
                           channels=2 if i == 3 else 1, freq=300 + 100 * i)
        made.append(Clip(id=f"c{i}", image=image, audio=audio))
    return made


def test_inference_batch_equals_clip_dataset_test_items(clips: list[Clip]) -> None:
    config = get_config("cpu").data
    config.image_size, config.audio_seconds = 64, 1.0
    expected = collate_skipping_failures([ClipDataset(clips, config)[i] for i in range(len(clips))])
    raw = collate_skipping_failures([InferenceClipDataset(clips, config)[i] for i in range(len(clips))])
    assert raw["image"].dtype == torch.uint8 and raw["image"].shape == (5, 64, 64, 3)
    assert raw["audio"].shape == (5, config.num_samples)
    got = model_inputs(raw, config, "cpu")
    assert torch.equal(got["image"], expected["image"])
    assert got["audio"].shape == expected["audio"].shape == (5, 1, *config.spectrogram_shape)
    torch.testing.assert_close(got["audio"], expected["audio"], rtol=0, atol=1e-6)
    assert got["index"].tolist() == [0, 1, 2, 3, 4]


def test_broken_clip_is_reported_and_an_all_failed_batch_passes_through(clips: list[Clip], tmp_path: Path) -> None:
    config = get_config("cpu").data
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    dataset = InferenceClipDataset([Clip(id="bad", image=broken, audio=clips[0].audio), clips[1]], config)
    batch = collate_skipping_failures([dataset[0], dataset[1]])
    assert [clip_id for clip_id, _ in batch["failed"]] == ["bad"]
    assert model_inputs(batch, config, "cpu")["image"].shape == (1, 3, config.image_size, config.image_size)
    only_failed = collate_skipping_failures([dataset[0]])
    assert model_inputs(only_failed, config, "cpu") is only_failed


def test_normalise_pixels_is_the_test_transform_to_the_bit(tmp_path: Path) -> None:
    config = get_config("cpu").data
    images = [load_image(write_image(tmp_path / f"{i}.png", size=90, seed=i)) for i in range(3)]
    pixels = torch.stack([torch.from_numpy(np.array(squash_image(image, config.image_size))) for image in images])
    expected = torch.stack([image_transform(config, train=False)(image) for image in images])
    assert torch.equal(normalise_pixels(pixels), expected)


def test_batched_spectrogram_gives_each_row_its_own() -> None:
    config = get_config("cpu").data
    waves = torch.from_numpy(np.random.default_rng(0).standard_normal((3, config.num_samples)).astype(np.float32))
    batched = log_spectrogram(waves, config)
    assert batched.shape == (3, 1, *config.spectrogram_shape)
    for row in range(3):
        torch.testing.assert_close(batched[row], log_spectrogram(waves[row], config), rtol=0, atol=1e-6)


def test_draft_decodes_a_large_jpeg_at_a_reduced_scale_close_to_the_full_decode(tmp_path: Path) -> None:
    photo = smooth_photo(tmp_path / "photo.jpg", 256)
    assert load_image(photo).size == (256, 256)
    assert load_image(photo, draft_size=64).size == (64, 64)  # 1/4 scale: still >= 64
    assert load_image(photo, draft_size=100).size == (128, 128)  # 1/2 scale
    full = squash_image(load_image(photo), 64).astype(int)
    drafted = squash_image(load_image(photo, draft_size=64), 64).astype(int)
    difference = np.abs(full - drafted)
    assert 0 < difference.max() <= 16 and difference.mean() < 2  # close, but not the same pixels


def test_draft_leaves_small_jpegs_and_other_formats_alone(tmp_path: Path) -> None:
    photo = smooth_photo(tmp_path / "photo.jpg", 120)
    assert np.array_equal(np.asarray(load_image(photo, draft_size=64)), np.asarray(load_image(photo)))
    png = write_image(tmp_path / "big.png", size=256)
    assert load_image(png, draft_size=64).size == (256, 256)


def test_drafting_dataset_keeps_twice_the_image_size_before_the_bicubic_squash(tmp_path: Path) -> None:
    photo = smooth_photo(tmp_path / "photo.jpg", 256)
    config = get_config("cpu").data
    config.image_size = 64
    clip = Clip(id="p", image=photo, audio=write_tone(tmp_path / "p.wav"))
    drafted = InferenceClipDataset([clip], config, draft=True)[0]["image"].numpy()
    assert np.array_equal(drafted, squash_image(load_image(photo, draft_size=128), 64))  # 1/2 scale, not 1/4
    assert not np.array_equal(drafted, InferenceClipDataset([clip], config)[0]["image"].numpy())
