"""The collect stage every evaluation shares: run a model once over clips and keep, per clip, both retrieval
vectors and the *coarse* maps (the cross map, JSA's refined map of Eq. 14, and with OGL an object prior's map).

Per-epoch validation, `jsar eval localization`, `jsar eval compare` and the experiment all score these outputs;
only the scoring differs. Coarse maps are 7 x 7 floats, so even 100k clips fit in memory.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .clips import Clip
from .config import DataConfig
from .dataset import ClipDataset, FailureLog, make_loader
from .inference import iter_embeddings
from .errors import JsarError
from .maps import coarse_map
from .metrics import PictureStats, presence_targets
from .models import AudioSide, ImageSide


class NothingDecoded(JsarError, ValueError):
    """Not one of the clips could be decoded, so there is nothing to score."""


@dataclass
class ModelOutputs:
    """Collected results for the clips that decoded, in clip-list order.

    positions (n,) index into the clip list; image_vectors / audio_vectors (n, d) float32; plain, refined and
    objects (n, h, w) coarse maps (refined None without IQR, objects None without an object prior);
    presence (n, n) float32, when asked for: model.presence_matrix of every sound (rows) against every picture
    (columns) of the whole collection, in the same order, for source-presence calibration and AUROC; it does
    not depend on the batch size or on which clips share a batch; with it, sounds: every clip's AudioSide (on
    the CPU), the reference sounds a calibration keeps are chosen from. pictures: every picture's statistics over
    a checkpoint's reference sounds, when given them (a presence mix "by picture" needs them).
    """

    positions: np.ndarray
    image_vectors: np.ndarray
    audio_vectors: np.ndarray
    plain: torch.Tensor
    refined: torch.Tensor | None
    objects: torch.Tensor | None
    failures: FailureLog
    presence: np.ndarray | None = None
    sounds: AudioSide | None = None
    pictures: PictureStats | None = None

    def subset(self, rows: np.ndarray) -> "ModelOutputs":
        """The outputs at `rows` (indices into this object's arrays, not clip positions; the presence matrix
        is not carried over)."""
        index = torch.as_tensor(rows, dtype=torch.long)
        return ModelOutputs(self.positions[rows], self.image_vectors[rows], self.audio_vectors[rows],
                            self.plain[index], None if self.refined is None else self.refined[index],
                            None if self.objects is None else self.objects[index], self.failures)


def has_iqr(model: nn.Module) -> bool:
    """IQR (Eq. 14) needs JSA's image query; the baselines' refined map is just their cross map."""
    return bool(getattr(model, "has_image_query", False))


@torch.no_grad()
def collect_outputs(model: nn.Module, clips: Sequence[Clip], data_config: DataConfig, device: torch.device,
                    batch_size: int = 32, num_workers: int = 2, iqr_alpha: float | None = None,
                    object_prior: Any | None = None, progress: bool = True,
                    image_features: torch.Tensor | None = None, presence: bool = False,
                    reference: AudioSide | None = None) -> ModelOutputs:
    """Encode every clip once and keep its vectors and coarse maps; failed decodes are counted, not fatal.

    `iqr_alpha` (JSA only) adds the refined maps; `object_prior` (anything with `object_map(images, grid)`,
    e.g. evaluation's OGL prior) adds object maps; `image_features` is a frozen trunk's cached output for
    `clips` (training's trunk cache), used instead of decoding the images. `presence` adds the sound-by-picture
    presence matrix of all the clips (every clip's encoded sides are kept until the end for it: n x hw x d floats
    per key tensor, fine for a validation or test split). `reference` (a checkpoint's reference sounds, with
    `presence`) adds each picture's statistics over them.
    """
    loader = make_loader(ClipDataset(clips, data_config, train=False, image_features=image_features), batch_size,
                         num_workers=num_workers, device=device)
    failures = FailureLog()
    positions, image_vectors, audio_vectors, plain, refined, objects, sides = [], [], [], [], [], [], []
    with_iqr = has_iqr(model) and iqr_alpha is not None
    batches = iter_embeddings(model, loader, device, keep_images=object_prior is not None)
    for batch in tqdm(batches, total=len(loader), desc="encoding clips", leave=False, disable=not progress):
        failures.extend(batch.failed)
        if batch.image is None:
            continue
        positions.append(batch.indices.numpy())
        image_vectors.append(batch.image.vector.numpy())
        audio_vectors.append(batch.audio.vector.numpy())
        plain.append(coarse_map(model, batch.audio, batch.image).float().cpu())
        if presence:
            sides.append((batch.audio, batch.image))
        if with_iqr:
            refined.append(coarse_map(model, batch.audio, batch.image, iqr=True, alpha=iqr_alpha).float().cpu())
        if object_prior is not None:
            prior_device = next(object_prior.parameters()).device
            objects.append(object_prior.object_map(batch.images.to(prior_device), batch.image.grid).float().cpu())
    if not positions:
        raise NothingDecoded(f"none of the {len(clips)} clips could be decoded ({failures.summary()})")
    order = np.argsort(np.concatenate(positions), kind="stable")
    index = torch.as_tensor(order)
    sounds = AudioSide.cat([pair[0] for pair in sides]).rows(index).to("cpu") if presence else None
    pictures = None
    if presence and reference is not None:
        pictures = picture_stats(model, reference.to(device), ImageSide.cat([pair[1] for pair in sides]).rows(index))
    return ModelOutputs(
        positions=np.concatenate(positions)[order],
        image_vectors=np.concatenate(image_vectors)[order].astype(np.float32),
        audio_vectors=np.concatenate(audio_vectors)[order].astype(np.float32),
        plain=torch.cat(plain)[index],
        refined=torch.cat(refined)[index] if refined else None,
        objects=torch.cat(objects)[index] if objects else None,
        failures=failures,
        presence=whole_presence_matrix(model, sides, order) if presence else None,
        sounds=sounds,
        pictures=pictures,
    )


_PRESENCE_ROWS = 64  # sounds scored against every picture at once: 64 x n x hw floats in presence_matrix


@torch.no_grad()
def whole_presence_matrix(model: nn.Module, sides: Sequence[tuple[AudioSide, ImageSide]],
                          order: np.ndarray) -> np.ndarray:
    """(n, n) model.presence_matrix of every collected sound against every collected picture, rows and columns
    in `order` (the permutation that puts the batches' concatenated clips in clip-list order)."""
    index = torch.as_tensor(order)
    audio = AudioSide.cat([pair[0] for pair in sides]).rows(index)
    image = ImageSide.cat([pair[1] for pair in sides]).rows(index)
    return np.concatenate([model.presence_matrix(audio.rows(slice(start, start + _PRESENCE_ROWS)), image)
                           .float().cpu().numpy() for start in range(0, len(order), _PRESENCE_ROWS)])


_REFERENCE_PICTURES = 512  # pictures scored against every reference sound at once: R x 512 x hw floats


@torch.no_grad()
def picture_stats(model: nn.Module, reference: AudioSide, image: ImageSide) -> PictureStats:
    """Each picture of `image` scored by every `reference` sound (model.presence_matrix and the retrieval
    similarity), summarised per picture: what a presence mix "by picture" standardises its scores by."""
    presence, similarity = [], []
    for start in range(0, image.vector.shape[0], _REFERENCE_PICTURES):
        part = image.rows(slice(start, start + _REFERENCE_PICTURES))
        presence.append(model.presence_matrix(reference, part).float().cpu().numpy())
        similarity.append((reference.vector @ part.vector.T).float().cpu().numpy())
    return PictureStats.of(np.concatenate(presence, axis=1), np.concatenate(similarity, axis=1))


REFERENCE_SOUNDS = 256
"""At most this many of the calibration split's sounds are kept as a checkpoint's reference sounds: a picture's
statistics cost one presence map per reference sound, at index time for a split and at query time for each hit."""


def reference_rows(clips: Sequence[Clip], limit: int = REFERENCE_SOUNDS) -> np.ndarray:
    """Sorted rows of the `limit` clips with the smallest CRC-32 of their id (all of them when fewer): the
    reference sounds, chosen by something other than the clips' order."""
    crcs = np.array([zlib.crc32(clip.id.encode()) for clip in clips], dtype=np.int64)
    return np.sort(np.argsort(crcs, kind="stable")[:limit])


NO_REFERENCE = ("the checkpoint's presence mix is by picture but it keeps no reference sounds; run `jsar "
                "calibrate-presence` on it")


@torch.no_grad()
def presence_reference(meta: dict, model: nn.Module, data_config: DataConfig,
                       device: torch.device | str = "cpu") -> AudioSide | None:
    """The reference sounds a checkpoint's meta keeps (`presence_reference`), on `device`; None without them.
    Raises ValueError when a mix by picture has none, or when they do not fit `model` (each tensor's shape after
    the rows is checked against the model's own encoding of one silent clip)."""
    state = meta.get("presence_reference")
    if not state:
        mix = meta.get("presence_mix") or {}
        if mix.get("by_picture"):
            raise ValueError(NO_REFERENCE)
        return None
    silent = torch.zeros(1, 1, *data_config.spectrogram_shape, device=device)
    expected = model.encode_audio(silent).reference_state()
    fits = (isinstance(state, dict) and set(state) == set(expected)
            and all(isinstance(state[name], torch.Tensor) and state[name].shape[1:] == expected[name].shape[1:]
                    and state[name].shape[0] == state["vector"].shape[0] >= 2 for name in expected))
    if not fits:
        shapes = {name: tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                  for name, value in (state.items() if isinstance(state, dict) else [])}
        raise ValueError(f"the checkpoint's reference sounds (meta presence_reference: {shapes}) do not fit its "
                         f"model; run `jsar calibrate-presence` on it")
    return AudioSide.from_reference_state(state).to(device)


def split_presence_targets(clips: Sequence[Clip]) -> np.ndarray:
    """(n, n) `metrics.presence_targets` of every clip's sound (rows) against every clip's picture (columns): a
    picture's silent object's class is `extra["silent_class"]` (realsound's vggss.json)."""
    labels = [clip.label or None for clip in clips]
    return presence_targets(labels, labels, [clip.extra.get("silent_class") or None for clip in clips])


def calibration_folds(clips: Sequence[Clip]) -> np.ndarray:
    """(n,) 0/1 fold of each clip's sound for `metrics.calibrate_presence_cut`: the parity of the CRC-32 of its id,
    so that the folds, and with them the chosen depth, do not depend on the clips' order."""
    return np.array([zlib.crc32(clip.id.encode()) % 2 for clip in clips], dtype=int)
