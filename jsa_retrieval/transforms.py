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
    """(1, F, T) log power spectrogram of a waveform (N,), or (B, 1, F, T) of a batch (B, N), on the samples'
    device: Hann window, centred STFT (torchaudio), `log(|X|^2 + 1e-7) / 12`.

    With the paper's settings (5 s at 16 kHz, n_fft 512, hop 160) this is 257 x 501. Silent or constant
    input stays finite because of the offset inside the log. A batch gives each row what the row alone gives.
    """
    wave = torch.as_tensor(samples, dtype=torch.float32)
    power = _power_spectrogram(config.n_fft, config.win_length, config.hop_length, wave.device)(wave)
    return (torch.log(power + config.log_offset) / config.log_scale).unsqueeze(-3)


@functools.lru_cache(maxsize=8)
def _power_spectrogram(n_fft: int, win_length: int, hop_length: int,
                       device: torch.device) -> torchaudio.transforms.Spectrogram:
    return torchaudio.transforms.Spectrogram(n_fft=n_fft, win_length=win_length, hop_length=hop_length,
                                             window_fn=torch.hann_window, power=2.0, center=True).to(device)


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


def normalise_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 with ImageNet mean and std, on the pixels' device.

    The arithmetic of ToTensor + Normalize in the same order, so `normalise_pixels(squash_image(...))` equals the
    test transform to the bit; a batch is normalised at once where the model runs instead of clip by clip.
    """
    images = pixels.permute(0, 3, 1, 2).contiguous().float().div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return images.sub_(mean).div_(std)
