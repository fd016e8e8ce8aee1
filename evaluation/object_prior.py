"""Object-guided localization (OGL, EZ-VSL Sec. 3.3): an audio-free object prior fused with the model's map.

EZ-VSL adds to its audio-visual map S_av an object map S_obj computed by a *separate* ImageNet-pretrained
ResNet-18: the mean absolute activation of its last convolutional stage over channels (7 x 7 for 224-px
input). Both maps are upsampled to 224 x 224, min-max normalised per sample, and fused at full resolution
as ``normalise(w · norm(S_av) + (1 - w) · norm(S_obj))`` with w = 0.4 on the audio-visual map (their
``test.py``, ``--alpha 0.4``). The prior knows nothing about sound: it reports how much of a localization
score comes from "where the objects are" rather than "which object sounds", which is why jsar reports it as a
separate column and JSA's IQR (which needs no external network) beside it.

ResNet-18 weights come from a local file or torchvision's weights API (hub cache, else download), and
EfficientNet-Lite0's from its pip-installed weight package: the networks are jsar's own image trunks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jsa_retrieval.encoders import WeightsUnavailable, build_image_trunk

OBJECT_BACKBONES = ("resnet18", "efficientnet-lite0")
OGL_WEIGHT = 0.4
"""EZ-VSL's weight on the audio-visual map; the object map gets 1 - 0.4 = 0.6."""

OBJECT_INPUT_SIZE = 224
"""The prior sees images at the ImageNet resolution its backbone was trained at, whatever the model's size."""


class ObjectPrior(nn.Module):
    """Audio-free object map from an ImageNet CNN: mean |last conv stage activation| over channels.

    `features` maps ImageNet-normalised (B, 3, 224, 224) images to (B, C, h', w'): one of jsar's image trunks,
    which take care of their own input convention (EfficientNet-Lite's TF-Lite scaling included).
    """

    def __init__(self, name: str, features: nn.Module, input_size: int = OBJECT_INPUT_SIZE) -> None:
        super().__init__()
        self.name = name
        self.features = features
        self.input_size = input_size

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, 3, 224, 224): the resolution the backbone was trained at."""
        images = images.float()
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False)
        return images

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, h', w') object map at the backbone's native grid (7 x 7 for both backbones)."""
        activations = self.features(self.preprocess(images))  # (B, C, h', w')
        return activations.abs().mean(dim=1)  # EZ-VSL's NormReducer: |x|.mean over channels

    @torch.no_grad()
    def object_map(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, 3, S, S) -> (B, h, w) on the model's map grid (area-averaged when the grids differ)."""
        native = self(images)
        if tuple(native.shape[-2:]) == tuple(grid):
            return native
        return F.adaptive_avg_pool2d(native.unsqueeze(1), grid).squeeze(1)


def load_object_prior(backbone: str = "resnet18", weights: str | Path | None = None,
                      device: torch.device | str = "cpu") -> ObjectPrior:
    """The OGL object network in eval mode on `device`, built by the same code as jsar's image encoders.

    `backbone` is 'resnet18' (EZ-VSL's choice; `weights` = a local torchvision resnet18 .pth, default
    torchvision's ImageNet weights through its weights API: hub cache, else download) or 'efficientnet-lite0'
    (weights from its pip package; `weights` is ignored). Raises ValueError saying how to provide weights when
    they are unavailable.
    """
    if backbone not in OBJECT_BACKBONES:
        raise ValueError(f"unknown OGL backbone {backbone!r}; choose one of {OBJECT_BACKBONES}")
    source = str(weights) if backbone == "resnet18" and weights is not None else "imagenet"
    try:
        trunk = build_image_trunk(backbone, width=64, layer4_stride=2, weights=source)
    except WeightsUnavailable as error:
        raise ValueError(f"OGL's {backbone} object prior: {error} (for OGL: object_weights=PATH / --ogl-weights, "
                         "or ogl='efficientnet-lite0')") from error
    # the EfficientNet trunk converts ImageNet-normalised input to its TF-Lite convention itself
    return ObjectPrior(backbone, trunk.eval()).to(device).eval()


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max over the last two axes; a constant map becomes zeros (EZ-VSL would give NaN)."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


def ogl_fuse(av_map: torch.Tensor | np.ndarray, object_map: torch.Tensor | np.ndarray,
             weight: float = OGL_WEIGHT) -> torch.Tensor | np.ndarray:
    """OGL fusion: normalise(weight · norm(S_av) + (1 - weight) · norm(S_obj)), min-max per sample.

    Maps are (H, W) or (B, H, W), already upsampled to the evaluation resolution: EZ-VSL upsamples both to
    224 x 224 before normalising and fusing, and fusing at 7 x 7 instead would change the thresholded masks.
    Returns the type it was given (numpy in, numpy out), in the av map's float dtype.
    """
    is_numpy = isinstance(av_map, np.ndarray)
    av = torch.as_tensor(av_map)
    av = av if av.is_floating_point() else av.float()
    obj = torch.as_tensor(object_map).to(device=av.device, dtype=av.dtype)
    if av.shape != obj.shape:
        raise ValueError(f"audio-visual map {tuple(av.shape)} and object map {tuple(obj.shape)} differ in shape")
    fused = _min_max(weight * _min_max(av) + (1.0 - weight) * _min_max(obj))
    return fused.numpy() if is_numpy else fused
