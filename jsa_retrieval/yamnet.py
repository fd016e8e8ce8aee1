"""YAMNet in PyTorch: Google's AudioSet classifier (MobileNetV1 on log-mel patches, 521 classes, Apache-2.0),
ported exactly from tensorflow/models research/audioset/yamnet (yamnet.py, features.py, params.py).

Why exact: the weights were trained on this frontend and TF's 'SAME' padding, so every detail that shifts a
sample or a pixel (frame placement, the periodic window, the DC-less mel matrix, asymmetric stride-2 padding,
the BatchNorm epsilon) is kept. Layout: log-mel input is (B, 1, T, 64), time as the height axis, as in YAMNet.

    model = YAMNet.load("yamnet-audioset")                 # converted weights from the cache (see audio_weights)
    scores = model.scores(patches(log_mel_from_waveform(wave)))   # (P, 521) per 0.96 s patch
"""
from __future__ import annotations

import csv
import functools
import io
import math
import re
from collections import OrderedDict
from importlib import resources
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class YAMNetParams:
    """The hyperparameters YAMNet was trained with (upstream params.py), in samples and frames."""

    sample_rate: int = 16000
    window_samples: int = 400      # 0.025 s
    hop_samples: int = 160         # 0.010 s
    fft_length: int = 512          # next power of two above the window
    mel_bands: int = 64
    mel_min_hz: float = 125.0
    mel_max_hz: float = 7500.0
    log_offset: float = 0.001
    patch_frames: int = 96         # 0.96 s
    patch_hop_frames: int = 48     # 0.48 s
    num_classes: int = 521
    batchnorm_epsilon: float = 1e-4

    @property
    def num_spectrogram_bins(self) -> int:
        return self.fft_length // 2 + 1


PARAMS = YAMNetParams()

# (kernel, stride, filters): layer1 is a full convolution, layers 2-14 are depthwise-separable.
LAYER_DEFS = ((3, 2, 32), (3, 1, 64), (3, 2, 128), (3, 1, 128), (3, 2, 256), (3, 1, 256), (3, 2, 512),
              (3, 1, 512), (3, 1, 512), (3, 1, 512), (3, 1, 512), (3, 1, 512), (3, 2, 1024), (3, 1, 1024))


# ---------------------------------------------------------------------------------------------- frontend maths

def hertz_to_mel(hertz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale, as tf.signal uses: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hertz, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=4)
def _mel_matrix_np(num_bins: int, num_mel: int, sample_rate: float, low_hz: float, high_hz: float) -> np.ndarray:
    bins_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_bins))[1:, None]  # DC bin excluded (HTK)
    edges = np.linspace(hertz_to_mel(low_hz), hertz_to_mel(high_hz), num_mel + 2)
    lower, center, upper = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    lower_slope = (bins_mel - lower) / (center - lower)
    upper_slope = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    return np.pad(weights, ((1, 0), (0, 0))).astype(np.float32)  # the zeroed DC row re-added


def mel_matrix(num_bins: int = PARAMS.num_spectrogram_bins, num_mel: int = PARAMS.mel_bands,
               sample_rate: float = PARAMS.sample_rate, low_hz: float = PARAMS.mel_min_hz,
               high_hz: float = PARAMS.mel_max_hz) -> torch.Tensor:
    """(num_bins, num_mel) weights of tf.signal.linear_to_mel_weight_matrix: triangles linear in mel, not Hz,
    between num_mel + 2 equally spaced mel edges; row 0 (DC) is zero; no area normalisation.
    Computed in float64 and rounded to float32 (TF computes in float32: differences ~1e-7)."""
    return torch.from_numpy(_mel_matrix_np(num_bins, num_mel, float(sample_rate), float(low_hz), float(high_hz)).copy())


MEL_MATRIX = mel_matrix  # the (257, 64) matrix YAMNet uses: MEL_MATRIX()


def periodic_hann(length: int) -> torch.Tensor:
    """0.5 - 0.5 cos(2 pi n / length): tf.signal.stft's default window."""
    return torch.hann_window(length, periodic=True, dtype=torch.float32)


def stft_magnitude(waveform: torch.Tensor, params: YAMNetParams = PARAMS) -> torch.Tensor:
    """(T, 257) |STFT| as tf.signal.stft computes it: frames of 400 samples every 160 starting at sample 0,
    only whole frames (pad_end=False), periodic Hann, each frame zero-padded to 512 at its end.

    Not torch.stft: it frames n_fft (512) samples with the window centred, which shifts and drops frames."""
    if waveform.dim() != 1:
        raise ValueError(f"waveform must be 1-D (samples,), got shape {tuple(waveform.shape)}")
    if waveform.numel() < params.window_samples:
        raise ValueError(f"waveform of {waveform.numel()} samples is shorter than one {params.window_samples}-"
                         "sample STFT frame; pad it with pad_waveform first")
    frames = waveform.float().unfold(0, params.window_samples, params.hop_samples)
    return torch.fft.rfft(frames * periodic_hann(params.window_samples), n=params.fft_length).abs()


def log_mel_from_magnitude(magnitude: torch.Tensor, params: YAMNetParams = PARAMS) -> torch.Tensor:
    """(..., T, 257) |STFT| -> (..., T, 64) log(mel + 0.001)."""
    mel = magnitude @ mel_matrix(params.num_spectrogram_bins, params.mel_bands, params.sample_rate,
                                 params.mel_min_hz, params.mel_max_hz).to(magnitude.device, magnitude.dtype)
    return torch.log(mel + params.log_offset)


def log_mel_from_waveform(waveform: torch.Tensor, params: YAMNetParams = PARAMS) -> torch.Tensor:
    """(N,) waveform at 16 kHz in [-1, 1] -> (T, 64) log-mel spectrogram, T = 1 + (N - 400) // 160."""
    return log_mel_from_magnitude(stft_magnitude(torch.as_tensor(waveform), params), params)


def log_mel_from_power(power: torch.Tensor, params: YAMNetParams = PARAMS) -> torch.Tensor:
    """(B, 257, T) |STFT|^2 with n_fft 512 -> (B, 1, T, 64) YAMNet input, magnitude = sqrt(power).

    Exactly YAMNet's features only when the STFT framing matches (400-sample periodic Hann every 160 samples);
    e.g. torch.stft(F.pad(wave, (56, 56)), 512, 160, 400, periodic_hann(400), center=False)."""
    if power.dim() != 3 or power.shape[1] != params.num_spectrogram_bins:
        raise ValueError(f"power must be (B, {params.num_spectrogram_bins}, T), got shape {tuple(power.shape)}")
    magnitude = power.clamp_min(0).sqrt().transpose(1, 2)
    return log_mel_from_magnitude(magnitude, params).unsqueeze(1)


def pad_waveform(waveform: torch.Tensor, params: YAMNetParams = PARAMS) -> torch.Tensor:
    """Zero-pad the end so the log-mel splits into whole patches: at least one patch (15600 samples), then
    a whole number of patch hops (7680 samples), as upstream features.pad_waveform does."""
    min_samples = params.patch_frames * params.hop_samples + params.window_samples - params.hop_samples
    hop = params.patch_hop_frames * params.hop_samples
    length = max(waveform.shape[-1], min_samples)
    length = min_samples + math.ceil((length - min_samples) / hop) * hop
    return F.pad(waveform, (0, length - waveform.shape[-1]))


def patches(log_mel: torch.Tensor, params: YAMNetParams = PARAMS) -> torch.Tensor:
    """(T, 64) log-mel -> (P, 1, 96, 64) patches every 48 frames; only whole patches (tf.signal.frame)."""
    if log_mel.shape[0] < params.patch_frames:
        raise ValueError(f"log-mel of {log_mel.shape[0]} frames is shorter than one {params.patch_frames}-frame "
                         "patch; pad the waveform with pad_waveform first")
    return log_mel.unfold(0, params.patch_frames, params.patch_hop_frames).transpose(1, 2).unsqueeze(1)


def waveform_patches(waveform: torch.Tensor, params: YAMNetParams = PARAMS) -> torch.Tensor:
    """(N,) 16 kHz waveform -> (P, 1, 96, 64): YAMNet's whole frontend, padding included."""
    return patches(log_mel_from_waveform(pad_waveform(torch.as_tensor(waveform, dtype=torch.float32), params),
                                         params), params)


# ------------------------------------------------------------------------------------------------- network

def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME': output ceil(size / stride); the odd pixel of padding goes after (bottom/right)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d (no bias) with TF 'SAME' padding, computed per input size: asymmetric for stride 2 on even sizes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = (same_padding(x.shape[-2], self.kernel_size[0], self.stride[0]),
                                        same_padding(x.shape[-1], self.kernel_size[1], self.stride[1]))
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, None, self.stride, (top, left), 1, self.groups)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, None, self.stride, 0, 1, self.groups)


class CenteredBatchNorm2d(nn.BatchNorm2d):
    """Keras BatchNormalization(center=True, scale=False): a learned shift (`bias`), no scale (`weight`)."""

    def __init__(self, channels: int, eps: float = PARAMS.batchnorm_epsilon) -> None:
        super().__init__(channels, eps=eps, momentum=0.01, affine=False)  # Keras momentum 0.99
        self.bias = nn.Parameter(torch.zeros(channels))


class ConvLayer(nn.Sequential):
    """layer1: 3x3 convolution -> BN -> ReLU."""

    def __init__(self, in_channels: int, kernel: int, stride: int, filters: int) -> None:
        super().__init__(OrderedDict(conv=SameConv2d(in_channels, filters, kernel, stride, bias=False),
                                     bn=CenteredBatchNorm2d(filters), relu=nn.ReLU()))


class SeparableLayer(nn.Sequential):
    """layers 2-14: depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU."""

    def __init__(self, in_channels: int, kernel: int, stride: int, filters: int) -> None:
        super().__init__(OrderedDict(
            depthwise=SameConv2d(in_channels, in_channels, kernel, stride, groups=in_channels, bias=False),
            depthwise_bn=CenteredBatchNorm2d(in_channels), depthwise_relu=nn.ReLU(),
            pointwise=nn.Conv2d(in_channels, filters, 1, bias=False),
            pointwise_bn=CenteredBatchNorm2d(filters), pointwise_relu=nn.ReLU()))


class YAMNet(nn.Module):
    """(B, 1, T, 64) log-mel patches -> (B, 521) AudioSet logits; `features` gives the (B, 1024, T/32, 2) map.

    T = 96 is what YAMNet was trained on; other lengths work (the map grows with time, as a trunk needs).
    """

    def __init__(self, num_classes: int = PARAMS.num_classes) -> None:
        super().__init__()
        layers, channels = OrderedDict(), 1
        for i, (kernel, stride, filters) in enumerate(LAYER_DEFS):
            kind = ConvLayer if i == 0 else SeparableLayer
            layers[f"layer{i + 1}"] = kind(channels, kernel, stride, filters)
            channels = filters
        self.layers = nn.Sequential(layers)
        self.out_channels = channels
        self.classifier = nn.Linear(channels, num_classes)
        self.class_names: list[str] = []
        self.to(memory_format=torch.channels_last)  # depthwise convolutions are faster on CPU in this memory order


    def features(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, 64) -> (B, 1024, ceil(T / 32), 2): the last convolutional map, before pooling."""
        if log_mel.dim() != 4 or log_mel.shape[1] != 1:
            raise ValueError(f"YAMNet expects log-mel patches (B, 1, T, 64), got shape {tuple(log_mel.shape)}")
        return self.layers(log_mel.contiguous(memory_format=torch.channels_last)).contiguous()

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 1024, H, W) -> (B, 1024): YAMNet's embedding (global average pool)."""
        return features.mean(dim=(2, 3))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 1024, H, W) -> (B, 521) logits: global average pool, then the dense layer."""
        return self.classifier(self.embed(features))

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, 64) -> (B, 521) logits."""
        return self.classify(self.features(log_mel))

    @torch.no_grad()
    def scores(self, log_mel: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, 64) -> (B, 521) sigmoid class scores, as YAMNet's `predictions`."""
        return torch.sigmoid(self(log_mel))

    @classmethod
    def load(cls, spec: str = "yamnet-audioset") -> "YAMNet":
        """The pretrained network in eval mode, with `class_names` set: `spec` is a registered weights name or a
        local archive / converted .pt (see `audio_weights.resolve_audio_weights`)."""
        from .audio_weights import resolve_audio_weights

        converted = resolve_audio_weights(spec)
        model = cls(num_classes=len(converted.class_names))
        model.load_state_dict(converted.state_dict, strict=True)
        model.class_names = list(converted.class_names)
        return model.eval()


# ------------------------------------------------------------------------------------ converting TF weights

_KERAS_VARIABLE = re.compile(r"(?:^|/)layer_with_weights-(\d+)/(\w+)/\.ATTRIBUTES/VARIABLE_VALUE$")
_BN_ATTRIBUTES = {"beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def keras_variables(tensors: dict[str, np.ndarray]) -> dict[tuple[int, str], np.ndarray]:
    """{(layer_with_weights index, attribute): array} from a Keras SavedModel's checkpoint names, e.g.
    'layer-1/layer/_func/_yamnet/layer_with_weights-3/beta/.ATTRIBUTES/VARIABLE_VALUE' -> (3, 'beta').
    Optimizer and metric variables ('keras_api/...', '.OPTIMIZER_SLOT') are left out."""
    found: dict[tuple[int, str], np.ndarray] = {}
    for name, value in tensors.items():
        match = _KERAS_VARIABLE.search(name)
        if match is None or name.startswith("keras_api/") or "OPTIMIZER_SLOT" in name:
            continue
        key = (int(match.group(1)), match.group(2))
        if key in found:
            raise ValueError(f"two checkpoint variables map to layer_with_weights-{key[0]}/{key[1]}: "
                             "not a single YAMNet SavedModel")
        found[key] = value
    return found


def yamnet_variable_map() -> dict[tuple[int, str], str]:
    """(Keras layer_with_weights index, attribute) -> this port's state-dict key.

    Keras numbers only layers that own weights, in build order: 0 conv, 1 its BN; then per separable layer
    n = 2..14 four of them from 2 + 4 (n - 2): depthwise, BN, pointwise, BN; 54 the dense classifier."""
    mapping = {(0, "kernel"): "layers.layer1.conv.weight"}
    mapping.update({(1, attr): f"layers.layer1.bn.{key}" for attr, key in _BN_ATTRIBUTES.items()})
    for n in range(2, len(LAYER_DEFS) + 1):
        base, prefix = 2 + 4 * (n - 2), f"layers.layer{n}"
        mapping[(base, "depthwise_kernel")] = f"{prefix}.depthwise.weight"
        mapping.update({(base + 1, attr): f"{prefix}.depthwise_bn.{key}" for attr, key in _BN_ATTRIBUTES.items()})
        mapping[(base + 2, "kernel")] = f"{prefix}.pointwise.weight"
        mapping.update({(base + 3, attr): f"{prefix}.pointwise_bn.{key}" for attr, key in _BN_ATTRIBUTES.items()})
    dense = 2 + 4 * (len(LAYER_DEFS) - 1)
    mapping[(dense, "kernel")] = "classifier.weight"
    mapping[(dense, "bias")] = "classifier.bias"
    return mapping


def _to_torch_layout(key: str, value: np.ndarray) -> torch.Tensor:
    """TF kernels are (H, W, in, out) [depthwise: (H, W, C, 1)], dense (in, out); torch wants out first."""
    tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    if key.endswith("depthwise.weight"):
        tensor = tensor.permute(2, 3, 0, 1)
    elif key.endswith("conv.weight") or key.endswith("pointwise.weight"):
        tensor = tensor.permute(3, 2, 0, 1)
    elif key == "classifier.weight":
        tensor = tensor.t()
    return tensor.contiguous()


def state_dict_from_tf(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A strict YAMNet state dict from the float tensors of a YAMNet Keras checkpoint (tf_bundle.read_bundle)."""
    variables, mapping = keras_variables(tensors), yamnet_variable_map()
    missing = sorted(set(mapping) - set(variables))
    if missing:
        index, attr = missing[0]
        raise ValueError(f"checkpoint lacks layer_with_weights-{index}/{attr} ({len(missing)} YAMNet variables "
                         "missing): not a YAMNet SavedModel")
    state = {key: _to_torch_layout(key, variables[source]) for source, key in mapping.items()}
    # The reference network's random initialisation must not draw from the global generator: this runs inside
    # model creation after the training seed is set, on the first run only (later runs read the converted file).
    with torch.random.fork_rng(devices=[]):
        reference = YAMNet(num_classes=state["classifier.bias"].shape[0]).state_dict()
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(reference[key].shape):
            raise ValueError(f"checkpoint tensor for {key} has shape {tuple(tensor.shape)}, YAMNet needs "
                             f"{tuple(reference[key].shape)}")
    for key, tensor in reference.items():  # buffers Keras has no counterpart for
        state.setdefault(key, torch.zeros_like(tensor))
    return state


# --------------------------------------------------------------------------------------------------- classes

def class_names(class_map_csv: str) -> list[str]:
    """Display names, in class order, from YAMNet's class map CSV text (header index,mid,display_name)."""
    rows = list(csv.reader(io.StringIO(class_map_csv)))
    if not rows or [cell.strip() for cell in rows[0][:3]] != ["index", "mid", "display_name"]:
        raise ValueError("class map CSV must start with the header index,mid,display_name")
    return [row[2] for row in rows[1:] if row]


def top_tags(scores: torch.Tensor | np.ndarray, names: list[str], k: int = 3,
             min_score: float = 0.1) -> list[tuple[str, float]]:
    """The k best (name, score) of a (C,) score vector, best first, dropping scores below `min_score`."""
    values = np.asarray(torch.as_tensor(scores).detach().cpu(), dtype=np.float64).reshape(-1)
    if values.shape[0] != len(names):
        raise ValueError(f"{values.shape[0]} scores for {len(names)} class names")
    order = np.argsort(-values, kind="stable")[:k]
    return [(names[i], float(values[i])) for i in order if values[i] >= min_score]


@functools.lru_cache(maxsize=1)
def shipped_class_names() -> list[str]:
    """YAMNet's 521 AudioSet display names from the class map shipped in jsar (jsa_retrieval/data, Apache-2.0, as
    in tensorflow/models): a checkpoint names its sound tags without the weights archive at hand."""
    text = resources.files("jsa_retrieval").joinpath("data/yamnet_class_map.csv").read_text(encoding="utf-8")
    return class_names(text)
