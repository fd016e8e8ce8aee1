"""The JSA model (paper Sec. 3) and the two baselines retrieval is compared with (EZ-VSL, Alignment).

Every model answers the same questions: `encode_image` -> ImageSide, `encode_audio` -> AudioSide
(each with an L2-normalised retrieval vector), `cross_map` / `refined_map` -> (B, h, w) localization maps from
one side of each, and `forward` -> the training outputs its objective needs. Encoding the two sides separately
is what lets retrieval store vectors once and compute a map for any (query, hit) pair later.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import JSARConfig, check_config
from .encoders import AudioEncoder, ImageEncoder
from .slot_attention import JointSlotAttention, SlotAttentionOutput, slot_attention_weights


class _BatchOfTensors:
    """`to` and `row` for a side's dataclass: every tensor field is batch-first; None fields stay None."""

    def _map_tensors(self, change):
        return replace(self, **{f.name: change(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None):
        """A copy with every tensor on `device` (and of `dtype` if given); this side is left as it is."""
        return self._map_tensors(lambda tensor: tensor.to(device, dtype))

    def row(self, index: int):
        """Row `index` as a batch of one, on the same device."""
        return self.rows(slice(index, index + 1))

    def rows(self, index: slice | torch.Tensor):
        """The rows `index` (a slice or an index tensor) of every tensor field."""
        return self._map_tensors(lambda tensor: tensor[index])

    @classmethod
    def cat(cls, sides: Sequence["_BatchOfTensors"]):
        """One side from a list of batches: tensor fields concatenated, the rest (None fields, grid) the first's."""
        first = sides[0]
        return replace(first, **{f.name: torch.cat([getattr(side, f.name) for side in sides]) for f in fields(first)
                                 if isinstance(getattr(first, f.name), torch.Tensor)})


@dataclass
class ImageSide(_BatchOfTensors):
    """vector (B, d) L2-normalised retrieval embedding; keys (B, hw, d) per-location keys/features for maps;
    intra_map (B, hw) JSA's ia^{v,v} (None for baselines); grid (h, w) of the keys; location_keys (B, hw, d)
    L2-normalised h_v(v) of JSA's location head (None without one)."""

    vector: torch.Tensor
    keys: torch.Tensor
    intra_map: torch.Tensor | None
    grid: tuple[int, int]
    location_keys: torch.Tensor | None = None


@dataclass
class AudioSide(_BatchOfTensors):
    """vector (B, d) L2-normalised retrieval embedding; queries (B, S, d) (JSA: Q^a; baselines: (B, 1, d) global
    audio vector); time_attention (B, t) attention over audio tokens summing to one (JSA: ia^{a,a});
    location_query (B, d) L2-normalised h_a(p^a) of JSA's location head (None without one); tags (B, classes) the
    pretrained audio trunk's own class scores (AudioSet for yamnet), at inference only (None otherwise)."""

    vector: torch.Tensor
    queries: torch.Tensor
    time_attention: torch.Tensor | None
    location_query: torch.Tensor | None = None
    tags: torch.Tensor | None = None

    REFERENCE_FIELDS = ("vector", "queries", "location_query")

    def reference_state(self) -> dict[str, torch.Tensor]:
        """The tensors every model's presence_matrix and the retrieval similarity read, float32 on the CPU: what a
        checkpoint keeps of its reference sounds (meta `presence_reference`, see metrics.PictureStats)."""
        return {name: getattr(self, name).detach().float().cpu() for name in self.REFERENCE_FIELDS
                if getattr(self, name) is not None}

    @classmethod
    def from_reference_state(cls, state: dict[str, torch.Tensor]) -> "AudioSide":
        """The reference sounds a checkpoint keeps, as a side presence_matrix takes."""
        return cls(vector=state["vector"], queries=state["queries"], time_attention=None,
                   location_query=state.get("location_query"))


@dataclass
class JSAForward:
    """Training outputs of JSAModel (shapes beside each field); ia/ca are target columns of Â (Eq. 3-4)."""

    image_slots: torch.Tensor  # (B, S, d)
    audio_slots: torch.Tensor  # (B, S, d)
    image_queries: torch.Tensor  # (B, S, d)
    audio_queries: torch.Tensor  # (B, S, d)
    image_keys: torch.Tensor  # (B, hw, d)
    audio_keys: torch.Tensor  # (B, t, d)
    image_features: torch.Tensor  # (B, hw, c) encoder output v, JSA input
    audio_features: torch.Tensor  # (B, t, c) encoder output a
    image_reconstruction: torch.Tensor  # (B, hw, c) g_v(slots)
    audio_reconstruction: torch.Tensor  # (B, t, c) g_a(slots)
    ia_vv: torch.Tensor  # (B, hw)
    ia_aa: torch.Tensor  # (B, t)
    ca_av: torch.Tensor  # (B, hw)
    ca_va: torch.Tensor  # (B, t)
    image_target: torch.Tensor  # (B, d) p^v
    audio_target: torch.Tensor  # (B, d) p^a
    image_off_target: torch.Tensor  # (B, d) r^v
    audio_off_target: torch.Tensor  # (B, d) r^a
    location_keys: torch.Tensor | None = None  # (B, hw, d) L2-normalised h_v(v), with a location head
    location_query: torch.Tensor | None = None  # (B, d) L2-normalised h_a(sg(p^a)), with a location head


@dataclass
class EZVSLForward:
    image_features: torch.Tensor  # (B, hw, d) L2-normalised per location
    audio_vector: torch.Tensor  # (B, d) L2-normalised


@dataclass
class AlignmentForward:
    image_features: torch.Tensor  # (B, hw, d) L2-normalised per location (s_L)
    audio_vector: torch.Tensor  # (B, d) L2-normalised (s_L)
    image_projection: torch.Tensor  # (B, p) L2-normalised p_v(avg(v)) (s_A)
    audio_projection: torch.Tensor  # (B, p) L2-normalised p_a(a) (s_A)


def build_image_encoder(config: JSARConfig, image_weights: str | None = None) -> ImageEncoder:
    """f_v as config.model describes it (trunk, width, stride, weights, frozen stages)."""
    settings = config.model
    return ImageEncoder(settings.embed_dim, settings.encoder_width, settings.image_layer4_stride,
                        image_weights or settings.image_weights, backbone=settings.image_encoder,
                        freeze=settings.freeze_image)


def build_audio_encoder(config: JSARConfig, audio_weights: str | None = None) -> AudioEncoder:
    """f_a as config.model describes it (trunk, width, weights, frozen trunk)."""
    settings = config.model
    return AudioEncoder(settings.embed_dim, settings.encoder_width, settings.audio_encoder,
                        audio_weights or settings.audio_weights, settings.freeze_audio, config.data.log_offset,
                        config.data.log_scale)


def min_max(maps: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max of coarse maps (B, ...) to [0, 1]; a constant map becomes zeros (N in the fusion rule)."""
    flat = maps.flatten(1)
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(1e-12)).reshape(maps.shape)


FLAT_LOCATION_RANGE = 0.05
"""A location cosine c whose range over a picture is below this counts as (partly) flat (`relative_height`);
set below the ranges trained heads give matched pairs (docs/realsound.md, "Maps that listen", has the measure)."""


def relative_height(maps: torch.Tensor, floor: float = FLAT_LOCATION_RANGE) -> torch.Tensor:
    """N_floor(m) = 1 - s (1 - N(m)), s = min(1, range(m) / floor), per sample, (B, ...) -> (B, ...) in [0, 1].

    N is the per-sample min-max. A map whose range reaches `floor` gets N(m); a flat one gets all ones, and
    in between the contrast fades continuously, so a c that is 0.5 +- 0.001 everywhere (no evidence of where the
    sound is) no longer becomes a full-contrast 0-1 map as min-max alone would make it."""
    flat = maps.flatten(1)
    spread = flat.amax(dim=1, keepdim=True) - flat.amin(dim=1, keepdim=True)
    strength = (spread / floor).clamp(max=1.0)
    return (1 - strength * (1 - min_max(flat))).reshape(maps.shape)


def fuse_maps(cross: torch.Tensor, location: torch.Tensor, beta: float,
              floor: float = FLAT_LOCATION_RANGE) -> torch.Tensor:
    """M = N(ca) * N_floor([c]+)^beta: JSA's extent, kept only where the sound-conditioned cosine c is positive.

    cross, location: (B, h, w). Where the picture holds one object, c peaks on it and M keeps ca's shape; a
    silent object that c does not mark is removed. A pair whose c is nowhere positive gives a zero map; where
    [c]+ is flat (range 0) M is the paper's N(ca) exactly, and near-flat c moves it only in proportion to its
    range (`relative_height`)."""
    positive = location.clamp_min(0)
    gate = torch.where(positive.flatten(1).amax(dim=1).view(-1, *[1] * (location.dim() - 1)) > 0,
                       relative_height(positive, floor), torch.zeros_like(positive))
    return min_max(cross) * gate ** beta


class LocationHead(nn.Module):
    """1 x 1 heads h_v (image features) and h_a (audio target slot) whose cosine c(x) is a map conditioned on the
    sound, trained like EZ-VSL (multiple-instance InfoNCE). Beyond the paper: Eq. 8's teacher ia^{v,v} is computed
    from the image alone and marks every object; c is what tells which one sounds."""

    def __init__(self, dim: int, stop_gradient: bool = False) -> None:
        super().__init__()
        self.image = nn.Linear(dim, dim)  # h_v
        self.audio = nn.Linear(dim, dim)  # h_a
        self.stop_gradient = stop_gradient

    def keys(self, image_features: torch.Tensor) -> torch.Tensor:
        """(B, hw, d) encoder features -> (B, hw, d) L2-normalised location keys (from sg(v) with
        stop_gradient, so the head's loss leaves the encoder, and with it JSA's training, as they are)."""
        if self.stop_gradient:
            image_features = image_features.detach()
        return F.normalize(self.image(image_features), dim=-1)

    def query(self, audio_target: torch.Tensor) -> torch.Tensor:
        """(B, d) audio target slot -> (B, d) L2-normalised query; the slot is detached so the retrieval vector
        stays trained by Eq. 7 alone."""
        return F.normalize(self.audio(audio_target.detach()), dim=-1)


def location_cosine(location_keys: torch.Tensor, location_query: torch.Tensor) -> torch.Tensor:
    """c(x) = cos(h_v(v_x), h_a(p^a)): (B or 1, hw, d), (B or 1, d) -> (B, hw)."""
    return (location_keys @ location_query.unsqueeze(-1)).squeeze(-1)


def target_column(attention: torch.Tensor, num_target: int) -> torch.Tensor:
    """Target column(s) of Â (B, n, S) -> (B, n); the mean when there are several target slots."""
    return attention[..., :num_target].mean(dim=-1)


class SlotDecoder(nn.Module):
    """g_v / g_a (Eq. 10), training only: spatial-broadcast MLP decoder, slots (B, S, d) -> tokens (B, n, c).

    Each slot plus a learned per-token position goes through the MLP to c features and one alpha logit; alpha is
    softmaxed over slots and weights the sum, so reconstruction succeeds only if the slots split the input.
    """

    def __init__(self, num_tokens: int, slot_dim: int, feature_dim: int, hidden: int) -> None:
        super().__init__()
        self.position = nn.Parameter(0.02 * torch.randn(num_tokens, slot_dim))
        self.mlp = nn.Sequential(nn.Linear(slot_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, feature_dim + 1))

    def forward(self, slots: torch.Tensor) -> torch.Tensor:
        decoded = self.mlp(slots.unsqueeze(2) + self.position)  # (B, S, n, c + 1)
        features, alpha = decoded[..., :-1], decoded[..., -1].softmax(dim=1)  # alpha over slots (B, S, n)
        return (alpha.unsqueeze(-1) * features).sum(dim=1)  # (B, n, c)


class JSAModel(nn.Module):
    """Encoders f_v, f_a -> JointSlotAttention -> target slots for retrieval, ca^{a,v} for localization.

    One JointSlotAttention serves both modalities: it always shares the initial slots S_0 (unless the Table 6
    ablation turns that off) and shares its projection/GRU/MLP weights only when
    config.model.share_modality_weights is set (the `paper` preset keeps one set per modality, App. A). The decoders g_v, g_a are sized for config.data's image and spectrogram shapes.
    """

    model_name = "jsa"

    @property
    def has_image_query(self) -> bool:
        """IQR (Eq. 14) applies to the paper's map only: it adds ia^{v,v} to ca^{a,v}, two attention columns at the
        same logit scale. The fused map is a [0, 1] gate product and the location map a cosine, so adding ia to
        them is not the release's IQR; their refined map is the cross map, as for the baselines."""
        return self.config.model.localization_map == "cross"

    def __init__(self, config: JSARConfig, image_weights: str | None = None,
                 audio_weights: str | None = None) -> None:
        super().__init__()
        settings = config.model
        if settings.num_target_slots < 1 or settings.num_off_target_slots < 1:
            raise ValueError("JSA needs at least one target and one off-target slot")
        self.config = config
        self.num_target = settings.num_target_slots
        self.image_encoder = build_image_encoder(config, image_weights)
        self.audio_encoder = build_audio_encoder(config, audio_weights)
        self.vector_dim = settings.embed_dim  # length of the retrieval vectors (the target slots)
        self.slot_attention = JointSlotAttention(settings.embed_dim, settings.num_slots, settings.iterations,
                                                 settings.mask_ratio, settings.share_initial_slots,
                                                 share_modality_weights=settings.share_modality_weights)
        height, width = self.image_encoder.grid(config.data.image_size)
        time = self.audio_encoder.num_tokens(config.data.spectrogram_shape)
        dim, hidden = settings.embed_dim, settings.decoder_hidden
        self.image_decoder = SlotDecoder(height * width, dim, dim, hidden)  # g_v
        self.audio_decoder = SlotDecoder(time, dim, dim, hidden)  # g_a
        self.location_head = (LocationHead(dim, settings.location_head_stop_gradient) if settings.location_head
                              else None)

    def encode_image(self, images: torch.Tensor) -> ImageSide:
        """images (B, 3, S, S) -> target image slot p^v as vector, K^v as keys, ia^{v,v} as intra_map.

        ia^{v,v} is taken at config.model.infer_logit_scale, the scale `attention_map` gives ca^{a,v}, so that
        IQR (Eq. 14) adds two maps of one kind as the JSA release does (it sharpens both); at scale 1 it is the
        last slot iteration's attention, bit for bit."""
        features, grid = self.image_encoder(images)
        decomposition = self.slot_attention(features, "image")
        intra = slot_attention_weights(decomposition.queries, decomposition.keys, self.slot_attention.eps,
                                       self.config.model.infer_logit_scale)  # Â^{v,v}
        return ImageSide(vector=F.normalize(self._target(decomposition), dim=-1), keys=decomposition.keys,
                         intra_map=target_column(intra, self.num_target), grid=grid,
                         location_keys=None if self.location_head is None else self.location_head.keys(features))

    def encode_audio(self, spectrograms: torch.Tensor) -> AudioSide:
        """spectrograms (B, 1, F, T) -> target audio slot p^a as vector, Q^a as queries, ia^{a,a} over time."""
        tokens, tags = self.audio_encoder.encode(spectrograms, with_tags=not self.training)
        decomposition = self.slot_attention(tokens, "audio")
        target = self._target(decomposition)
        return AudioSide(vector=F.normalize(target, dim=-1), queries=decomposition.queries,
                         time_attention=target_column(decomposition.attention, self.num_target),
                         location_query=None if self.location_head is None else self.location_head.query(target),
                         tags=tags)

    def attention_map(self, audio: AudioSide, image: ImageSide) -> torch.Tensor:
        """ca^{a,v} (Sec. 3.5): audio target query vs image keys, Eq. 3-4 -> (B, h, w); batch 1 broadcasts.
        Logits are scaled by config.model.infer_logit_scale (1.0: the paper)."""
        attention = slot_attention_weights(audio.queries, image.keys, self.slot_attention.eps,
                                           self.config.model.infer_logit_scale)  # Â^{a,v}
        return target_column(attention, self.num_target).reshape(-1, *image.grid)

    def location_map(self, audio: AudioSide, image: ImageSide) -> torch.Tensor:
        """c = cos(h_v(v_x), h_a(p^a)) -> (B, h, w), the location head's sound-conditioned map."""
        if audio.location_query is None or image.location_keys is None:
            raise ValueError("this JSA model has no location head (model.location_head is off)")
        return location_cosine(image.location_keys, audio.location_query).reshape(-1, *image.grid)

    def presence_matrix(self, audio: AudioSide, image: ImageSide) -> torch.Tensor:
        """(A, I) how strongly each picture shows each sound's source: with a location head its peak cosine
        max_x c(x) (the map's own evidence), else the target slots' cosine. The trainer calibrates a cut on val
        (checkpoint meta `presence_cut`) below which a hit is marked "source not visible"."""
        if self.location_head is None:
            return audio.vector @ image.vector.T
        return torch.einsum("jxd,id->ijx", image.location_keys, audio.location_query).amax(dim=-1)

    def cross_map(self, audio: AudioSide, image: ImageSide) -> torch.Tensor:
        """The map jsar shows and scores for a (sound, picture) pair -> (B, h, w), per config.model.localization_map:
        'cross' is the paper's ca^{a,v}; 'fused' is N(ca) * N([c]+)^beta; 'location' is c alone."""
        choice = self.config.model.localization_map
        if choice == "cross":
            return self.attention_map(audio, image)
        if choice == "location":
            return self.location_map(audio, image)
        return fuse_maps(self.attention_map(audio, image), self.location_map(audio, image),
                         self.config.model.fusion_beta)

    def refined_map(self, audio: AudioSide, image: ImageSide, alpha: float | None = None) -> torch.Tensor:
        """Eq. 14 (IQR): alpha * ca^{a,v} + (1 - alpha) * ia^{v,v} -> (B, h, w); alpha defaults to the config's.
        Without an image query for this map (`has_image_query`) the refined map is the cross map."""
        if not self.has_image_query:
            return self.cross_map(audio, image)
        alpha = self.config.model.iqr_alpha if alpha is None else alpha
        intra = image.intra_map.reshape(-1, *image.grid)
        return alpha * self.cross_map(audio, image) + (1 - alpha) * intra

    def forward(self, images: torch.Tensor, spectrograms: torch.Tensor) -> JSAForward:
        image_features, _ = self.image_encoder(images)
        audio_features = self.audio_encoder(spectrograms)
        image = self.slot_attention(image_features, "image")
        audio = self.slot_attention(audio_features, "audio")
        eps = self.slot_attention.eps
        cross_av = slot_attention_weights(audio.queries, image.keys, eps)  # Â^{a,v} (B, hw, S)
        cross_va = slot_attention_weights(image.queries, audio.keys, eps)  # Â^{v,a} (B, t, S)
        return JSAForward(
            image_slots=image.slots, audio_slots=audio.slots, image_queries=image.queries,
            audio_queries=audio.queries, image_keys=image.keys, audio_keys=audio.keys,
            image_features=image_features, audio_features=audio_features,
            image_reconstruction=self.image_decoder(image.slots), audio_reconstruction=self.audio_decoder(audio.slots),
            ia_vv=target_column(image.attention, self.num_target),  # ia^{v,v}
            ia_aa=target_column(audio.attention, self.num_target),  # ia^{a,a}
            ca_av=target_column(cross_av, self.num_target),  # ca^{a,v}
            ca_va=target_column(cross_va, self.num_target),  # ca^{v,a}
            image_target=self._target(image), audio_target=self._target(audio),
            image_off_target=image.slots[:, self.num_target:].mean(dim=1),
            audio_off_target=audio.slots[:, self.num_target:].mean(dim=1),
            location_keys=None if self.location_head is None else self.location_head.keys(image_features),
            location_query=None if self.location_head is None else self.location_head.query(self._target(audio)),
        )

    def _target(self, decomposition: SlotAttentionOutput) -> torch.Tensor:
        """Mean of the target slots (B, d)."""
        return decomposition.slots[:, :self.num_target].mean(dim=1)


class _CosineMapModel(nn.Module):
    """Baseline core: per-location image features vs one global audio vector; the map is their cosine."""

    def __init__(self, config: JSARConfig, image_weights: str | None = None,
                 audio_weights: str | None = None) -> None:
        super().__init__()
        settings = config.model
        self.config = config
        self.image_encoder = build_image_encoder(config, image_weights)
        self.audio_encoder = build_audio_encoder(config, audio_weights)
        self.vector_dim = settings.embed_dim  # length of the retrieval vectors

    def _image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Raw image features v (B, hw, c) and their grid."""
        return self.image_encoder(images)

    def _audio_features(self, spectrograms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Raw audio tokens (B, t, c), the global audio vector a (B, c), max-pooled over time as in EZ-VSL, and
        the trunk's class scores at inference (None in training or without a class head)."""
        tokens, tags = self.audio_encoder.encode(spectrograms, with_tags=not self.training)
        return tokens, tokens.amax(dim=1), tags

    @staticmethod
    def _time_attention(tokens: torch.Tensor, audio_vector: torch.Tensor) -> torch.Tensor:
        """Non-negative cosine of each audio token with the global vector, normalised to sum to one: (B, t)."""
        similarity = (F.normalize(tokens, dim=-1) @ F.normalize(audio_vector, dim=-1).unsqueeze(-1)).squeeze(-1)
        weights = similarity.clamp_min(0) + 1e-8
        return weights / weights.sum(dim=-1, keepdim=True)

    def cross_map(self, audio: AudioSide, image: ImageSide) -> torch.Tensor:
        """Cosine of the global audio vector with every image location -> (B, h, w); batch 1 broadcasts."""
        return (image.keys @ audio.queries.transpose(-1, -2))[..., 0].reshape(-1, *image.grid)

    has_image_query = False  # no IQR: the refined map is the cross map

    def refined_map(self, audio: AudioSide, image: ImageSide, alpha: float | None = None) -> torch.Tensor:
        """Baselines have no image query: the refined map is the cross map."""
        return self.cross_map(audio, image)

    def presence_matrix(self, audio: AudioSide, image: ImageSide) -> torch.Tensor:
        """(A, I) source presence: the peak over locations of the cosine map (EZ-VSL's own matching score)."""
        return torch.einsum("jxd,id->ijx", image.keys, audio.queries[:, 0]).amax(dim=-1)


class EZVSLModel(_CosineMapModel):
    """EZ-VSL: map = cos(v^{xy}, a); retrieval vector = L2-normalised mean of the normalised location features."""

    model_name = "ezvsl"

    def encode_image(self, images: torch.Tensor) -> ImageSide:
        features, grid = self._image_features(images)
        keys = F.normalize(features, dim=-1)
        return ImageSide(vector=F.normalize(keys.mean(dim=1), dim=-1), keys=keys, intra_map=None, grid=grid)

    def encode_audio(self, spectrograms: torch.Tensor) -> AudioSide:
        tokens, audio_vector, tags = self._audio_features(spectrograms)
        vector = F.normalize(audio_vector, dim=-1)
        return AudioSide(vector=vector, queries=vector.unsqueeze(1),
                         time_attention=self._time_attention(tokens, audio_vector), tags=tags)

    def forward(self, images: torch.Tensor, spectrograms: torch.Tensor) -> EZVSLForward:
        features, _ = self._image_features(images)
        _, audio_vector, _ = self._audio_features(spectrograms)
        return EZVSLForward(image_features=F.normalize(features, dim=-1),
                            audio_vector=F.normalize(audio_vector, dim=-1))


def _projection_head(dim: int, out_dim: int) -> nn.Sequential:
    """2-layer MLP p_v / p_a of the alignment paper (s_A lives in its own projection space)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out_dim))


class AlignmentModel(_CosineMapModel):
    """Senocak et al. ICCV 2023: s_L cosine map for localization, s_A = cos(p_v(avg(v)), p_a(a)) for retrieval."""

    model_name = "alignment"

    def __init__(self, config: JSARConfig, image_weights: str | None = None,
                 audio_weights: str | None = None) -> None:
        super().__init__(config, image_weights, audio_weights)
        dim, out_dim = config.model.embed_dim, config.model.projection_dim
        self.image_projection = _projection_head(dim, out_dim)  # p_v
        self.audio_projection = _projection_head(dim, out_dim)  # p_a
        self.vector_dim = out_dim  # retrieval uses s_A, the projection space

    def encode_image(self, images: torch.Tensor) -> ImageSide:
        features, grid = self._image_features(images)
        vector = F.normalize(self.image_projection(features.mean(dim=1)), dim=-1)  # p_v(avg(v))
        return ImageSide(vector=vector, keys=F.normalize(features, dim=-1), intra_map=None, grid=grid)

    def encode_audio(self, spectrograms: torch.Tensor) -> AudioSide:
        tokens, audio_vector, tags = self._audio_features(spectrograms)
        return AudioSide(vector=F.normalize(self.audio_projection(audio_vector), dim=-1),  # p_a(a)
                         queries=F.normalize(audio_vector, dim=-1).unsqueeze(1),
                         time_attention=self._time_attention(tokens, audio_vector), tags=tags)

    def forward(self, images: torch.Tensor, spectrograms: torch.Tensor) -> AlignmentForward:
        features, _ = self._image_features(images)
        _, audio_vector, _ = self._audio_features(spectrograms)
        return AlignmentForward(
            image_features=F.normalize(features, dim=-1), audio_vector=F.normalize(audio_vector, dim=-1),
            image_projection=F.normalize(self.image_projection(features.mean(dim=1)), dim=-1),
            audio_projection=F.normalize(self.audio_projection(audio_vector), dim=-1),
        )


MODELS: dict[str, type[nn.Module]] = {model.model_name: model for model in (JSAModel, EZVSLModel, AlignmentModel)}
"""The methods jsar trains, by name: JSA and the two baselines. The one list of methods: `jsar train --model`, the
checkpoints' `model_name` and training's recipes (training/recipes.py, one per entry; tests/test_recipes.py checks
them against this) all read it. A new method is a model class here and its recipe (docs/house.md, "Add a method")."""

MODEL_NAMES = tuple(MODELS)


def create_model(config: JSARConfig, model_name: str = "jsa", image_weights: str | None = None,
                 audio_weights: str | None = None) -> nn.Module:
    """Build `model_name` for `config`; `image_weights` / `audio_weights` override config.model's for this build
    only (load_model passes 'none' because the checkpoint supplies every weight)."""
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose one of {MODEL_NAMES}")
    check_config(config)
    return MODELS[model_name](config, image_weights, audio_weights)

