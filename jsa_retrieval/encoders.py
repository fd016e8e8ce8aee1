"""Image and audio encoders f_v, f_a (paper Sec. 3.1): ResNet-18 trunks plus a 1x1 projection to c.

torchvision's `ResNet` hard-codes a base width of 64 for `BasicBlock`, so the trunk is assembled here from
`torchvision.models.resnet.BasicBlock` with a configurable width; at width 64, 3 input channels and layer4
stride 2 its parameter names and shapes are exactly torchvision's resnet18 (minus avgpool/fc), so ImageNet
state dicts load strictly.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.models.resnet import BasicBlock

RESNET18_BLOCKS = (2, 2, 2, 2)


class WeightsUnavailable(RuntimeError):
    """Requested image-encoder weights cannot be found locally (nothing is ever downloaded)."""


class ResNetTrunk(nn.Module):
    """ResNet-18 without avgpool/fc: (B, in_channels, H, W) -> (B, 8 * width, H / 32, W / 32).

    `layer4_stride=1` keeps layer4 at stride 16 overall, which gives a 7x7 map from 112-px images.
    """

    def __init__(self, in_channels: int = 3, width: int = 64, layer4_stride: int = 2) -> None:
        super().__init__()
        self.layer4_stride = layer4_stride
        self.out_channels = 8 * width
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, RESNET18_BLOCKS[0], stride=1)
        self.layer2 = self._make_layer(2 * width, RESNET18_BLOCKS[1], stride=2)
        self.layer3 = self._make_layer(4 * width, RESNET18_BLOCKS[2], stride=2)
        self.layer4 = self._make_layer(8 * width, RESNET18_BLOCKS[3], stride=layer4_stride)
        for module in self.modules():  # torchvision's ResNet initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def output_size(self, size: int) -> int:
        """Spatial length after the trunk for an input length `size` (conv arithmetic, no forward pass)."""
        size = (size + 2 * 3 - 7) // 2 + 1  # conv1
        size = (size + 2 * 1 - 3) // 2 + 1  # maxpool
        for stride in (2, 2, self.layer4_stride):  # layer2..4: first 3x3 conv (pad 1) sets the size
            size = (size + 2 * 1 - 3) // stride + 1
        return size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def imagenet_cache_path() -> Path:
    """Where torchvision caches resnet18 ImageNet weights: <torch hub dir>/checkpoints/<file name of the url>."""
    file_name = ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def load_trunk_weights(trunk: ResNetTrunk, weights: str) -> None:
    """Fill `trunk` from 'imagenet' (local torch hub cache only), a .pth path, or leave it random for 'none'.

    Never falls back silently: an unavailable source raises `WeightsUnavailable`.
    """
    if weights == "none":
        return
    if weights == "imagenet":
        if trunk.out_channels != 512:
            raise ValueError("image_weights='imagenet' needs encoder_width=64 (torchvision's resnet18); "
                             f"this encoder has width {trunk.out_channels // 8}")
        path = imagenet_cache_path()
        if not path.is_file():
            raise WeightsUnavailable(
                f"ImageNet ResNet-18 weights not found in the local torch hub cache ({path}); nothing is "
                "downloaded: put resnet18-f37072fd.pth there, or pass a local .pth via --image-weights PATH "
                "(config model.image_weights), or use 'none' for random init"
            )
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailable(
                f"image weights {weights!r} is neither 'imagenet', 'none' nor an existing .pth file; pass a local "
                "ResNet-18 state dict via --image-weights PATH (config model.image_weights)"
            )
    state = torch.load(path, map_location="cpu", weights_only=True)
    trunk_state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    try:
        trunk.load_state_dict(trunk_state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path} does not match this ResNet-18 trunk (width {trunk.out_channels // 8}, "
                         f"{trunk.conv1.in_channels} input channels): {error}") from error


class ImageEncoder(nn.Module):
    """f_v: image (B, 3, S, S) -> tokens v (B, h*w, c) and grid (h, w); c = embed_dim via a 1x1 conv."""

    def __init__(self, embed_dim: int, width: int = 64, layer4_stride: int = 2, weights: str = "none") -> None:
        super().__init__()
        self.trunk = ResNetTrunk(in_channels=3, width=width, layer4_stride=layer4_stride)
        load_trunk_weights(self.trunk, weights)
        self.projection = nn.Conv2d(self.trunk.out_channels, embed_dim, kernel_size=1)

    def grid(self, image_size: int) -> tuple[int, int]:
        """(h, w) of the token grid for square images of side `image_size`."""
        side = self.trunk.output_size(image_size)
        return side, side

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        features = self.projection(self.trunk(images))  # (B, c, h, w)
        height, width = features.shape[-2:]
        return features.flatten(2).transpose(1, 2), (height, width)


class AudioEncoder(nn.Module):
    """f_a: spectrogram (B, 1, F, T) -> tokens a (B, t, c), trained from scratch.

    Max-pooling over frequency only keeps time, so audio tokens are time steps (t = 16 for 257 x 501).
    """

    def __init__(self, embed_dim: int, width: int = 64) -> None:
        super().__init__()
        self.trunk = ResNetTrunk(in_channels=1, width=width, layer4_stride=2)
        self.projection = nn.Conv2d(self.trunk.out_channels, embed_dim, kernel_size=1)

    def num_tokens(self, spectrogram_shape: tuple[int, int]) -> int:
        """t for spectrograms of shape (F, T)."""
        return self.trunk.output_size(spectrogram_shape[1])

    def forward(self, spectrograms: torch.Tensor) -> torch.Tensor:
        features = self.projection(self.trunk(spectrograms))  # (B, c, f, t)
        return features.amax(dim=2).transpose(1, 2)  # max over frequency -> (B, t, c)
