"""Sound source localization maps (paper Sec. 3.5): the coarse map from a model, upsampled to the image and
min-max normalised per sample as the field's evaluation code does (bicubic to
224 x 224, align_corners=False)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

INTERPOLATING_MODES = ("linear", "bilinear", "bicubic", "trilinear")


@dataclass
class LocalizationMaps:
    """coarse (B, h, w) raw map (ca^{a,v} or Eq. 14); full (B, H, W) upsampled, min-max normalised to [0, 1]."""

    coarse: torch.Tensor
    full: torch.Tensor
    upsample_mode: str


def upsample_and_normalise(coarse: torch.Tensor, size: int | tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """(B, h, w) -> (B, H, W) in [0, 1]: F.interpolate (align_corners=False where it applies), then per-sample
    min-max. A constant coarse map has no location to prefer, so it becomes zeros rather than NaN (its
    upsampled copy is judged by the coarse map, since bicubic rounding would otherwise be stretched to [0, 1])."""
    coarse = coarse.float()
    align = False if mode in INTERPOLATING_MODES else None
    full = F.interpolate(coarse.unsqueeze(1), size=size, mode=mode, align_corners=align).squeeze(1)
    low = full.amin(dim=(1, 2), keepdim=True)
    span = full.amax(dim=(1, 2), keepdim=True) - low
    varies = (coarse.amax(dim=(1, 2)) > coarse.amin(dim=(1, 2))).view(-1, 1, 1) & (span > 0)
    return torch.where(varies, (full - low) / span.clamp_min(torch.finfo(full.dtype).tiny), torch.zeros_like(full))


def coarse_map(model: nn.Module, audio, image, iqr: bool = False, alpha: float | None = None) -> torch.Tensor:
    """The one rule for a (sound, picture) pair's coarse map (B, h, w) from encoded sides (AudioSide, ImageSide):
    ca^{a,v} (Sec. 3.5), or with `iqr` the refined map of Eq. 14 (alpha defaults to config.model.iqr_alpha)."""
    return model.refined_map(audio, image, alpha) if iqr else model.cross_map(audio, image)


def pair_maps(model: nn.Module, audio, image, size: int | tuple[int, int], iqr: bool = False,
              alpha: float | None = None, upsample_mode: str = "bicubic") -> LocalizationMaps:
    """`coarse_map` and its upsampled, min-max normalised copy at `size`: what every map jsar shows or scores
    is made of (localize, the search engine's hit maps, per-epoch validation)."""
    coarse = coarse_map(model, audio, image, iqr, alpha)
    size = (size, size) if isinstance(size, int) else tuple(size)
    return LocalizationMaps(coarse=coarse, full=upsample_and_normalise(coarse, size, upsample_mode),
                            upsample_mode=upsample_mode)


@torch.no_grad()
def localize(model: nn.Module, images: torch.Tensor, spectrograms: torch.Tensor, iqr: bool = False,
             alpha: float | None = None, upsample_mode: str = "bicubic") -> LocalizationMaps:
    """Maps for images (B, 3, S, S) and spectrograms (B or 1, 1, F, T) on the model's device.

    `iqr` uses the refined map (Eq. 14; alpha defaults to config.model.iqr_alpha) instead of the cross map.
    Runs in eval mode (no token masking) and restores the model's previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        image = model.encode_image(images.to(device))
        audio = model.encode_audio(spectrograms.to(device))
        return pair_maps(model, audio, image, tuple(images.shape[-2:]), iqr, alpha, upsample_mode)
    finally:
        model.train(was_training)

