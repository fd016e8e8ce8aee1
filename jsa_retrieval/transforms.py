"""Waveform → log power spectrogram, and image → normalised tensor (the paper's settings: Hann window,
centred STFT, log(S + 1e-7) / 12; ImageNet mean and std)."""
from __future__ import annotations

import functools

import numpy as np
import torch
import torchaudio
from PIL import Image
from torchvision import transforms as T

from .config import DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def crop_or_tile(samples: np.ndarray, length: int, offset: int | None = None) -> np.ndarray:
    """A window of `length` samples: centred unless `offset` is given; short audio is tiled first."""
    if samples.size == 0:
        return np.zeros(length, np.float32)
    if samples.size < length:
        samples = np.tile(samples, int(np.ceil(length / samples.size)))
    start = (samples.size - length) // 2 if offset is None else int(np.clip(offset, 0, samples.size - length))
    return np.ascontiguousarray(samples[start:start + length], dtype=np.float32)


def log_spectrogram(samples: np.ndarray | torch.Tensor, config: DataConfig) -> torch.Tensor:
    """(1, F, T) log power spectrogram: Hann window, centred STFT (torchaudio), `log(|X|^2 + 1e-7) / 12`.

    With the paper's settings (5 s at 16 kHz, n_fft 512, hop 160) this is 257 x 501. Silent or constant
    input stays finite because of the offset inside the log.
    """
    wave = torch.as_tensor(samples, dtype=torch.float32)
    power = _power_spectrogram(config.n_fft, config.win_length, config.hop_length)(wave)
    return (torch.log(power + config.log_offset) / config.log_scale).unsqueeze(0)


@functools.lru_cache(maxsize=8)
def _power_spectrogram(n_fft: int, win_length: int, hop_length: int) -> torchaudio.transforms.Spectrogram:
    return torchaudio.transforms.Spectrogram(n_fft=n_fft, win_length=win_length, hop_length=hop_length,
                                             window_fn=torch.hann_window, power=2.0, center=True)


def image_transform(config: DataConfig, train: bool) -> T.Compose:
    """Test: squash to image_size (bicubic) so normalised boxes line up. Train: resize, random crop, flip."""
    normalise = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:
        return T.Compose([
            T.Resize(config.train_resize, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomCrop(config.image_size),
            T.RandomHorizontalFlip(),
            *normalise,
        ])
    return T.Compose([
        T.Resize((config.image_size, config.image_size), interpolation=T.InterpolationMode.BICUBIC),
        *normalise,
    ])


def squash_image(image: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) uint8 view of an image as the test transform sees it."""
    return np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.uint8)
