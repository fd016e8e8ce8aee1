"""The collect stage every evaluation shares: run a model once over clips and keep, per clip, both retrieval
vectors and the *coarse* maps (the cross map, JSA's refined map of Eq. 14, and with OGL an object prior's map).

Per-epoch validation, `jsar eval localization`, `jsar eval compare` and the experiment all score these outputs;
only the scoring differs. Coarse maps are 7 x 7 floats, so even 100k clips fit in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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
from .metrics import presence_targets


class NothingDecoded(JsarError, ValueError):
    """Not one of the clips could be decoded, so there is nothing to score."""


@dataclass
class ModelOutputs:
    """Collected results for the clips that decoded, in clip-list order.

    positions (n,) index into the clip list; image_vectors / audio_vectors (n, d) float32; plain, refined and
    objects (n, h, w) coarse maps (refined None without IQR, objects None without an object prior);
    presence: per batch, (positions (B,), model.presence_matrix (B, B) of every sound against every picture of
    that batch, their retrieval similarity (B, B)), when asked for (source-presence calibration and AUROC).
    """

    positions: np.ndarray
    image_vectors: np.ndarray
    audio_vectors: np.ndarray
    plain: torch.Tensor
    refined: torch.Tensor | None
    objects: torch.Tensor | None
    failures: FailureLog
    presence: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    def subset(self, rows: np.ndarray) -> "ModelOutputs":
        """The outputs at `rows` (indices into this object's arrays, not clip positions; presence blocks are
        not carried over)."""
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
                    image_features: torch.Tensor | None = None, presence: bool = False) -> ModelOutputs:
    """Encode every clip once and keep its vectors and coarse maps; failed decodes are counted, not fatal.

    `iqr_alpha` (JSA only) adds the refined maps; `object_prior` (anything with `object_map(images, grid)`,
    e.g. evaluation's OGL prior) adds object maps; `image_features` is a frozen trunk's cached output for
    `clips` (training's trunk cache), used instead of decoding the images. `presence` keeps each batch's
    sound-by-picture presence matrix.
    """
    loader = make_loader(ClipDataset(clips, data_config, train=False, image_features=image_features), batch_size,
                         num_workers=num_workers, device=device)
    failures = FailureLog()
    positions, image_vectors, audio_vectors, plain, refined, objects, presence_blocks = [], [], [], [], [], [], []
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
            presence_blocks.append((batch.indices.numpy(),
                                    model.presence_matrix(batch.audio, batch.image).float().cpu().numpy(),
                                    (batch.audio.vector @ batch.image.vector.T).float().cpu().numpy()))
        if with_iqr:
            refined.append(coarse_map(model, batch.audio, batch.image, iqr=True, alpha=iqr_alpha).float().cpu())
        if object_prior is not None:
            prior_device = next(object_prior.parameters()).device
            objects.append(object_prior.object_map(batch.images.to(prior_device), batch.image.grid).float().cpu())
    if not positions:
        raise NothingDecoded(f"none of the {len(clips)} clips could be decoded ({failures.summary()})")
    order = np.argsort(np.concatenate(positions), kind="stable")
    index = torch.as_tensor(order)
    return ModelOutputs(
        positions=np.concatenate(positions)[order],
        image_vectors=np.concatenate(image_vectors)[order].astype(np.float32),
        audio_vectors=np.concatenate(audio_vectors)[order].astype(np.float32),
        plain=torch.cat(plain)[index],
        refined=torch.cat(refined)[index] if refined else None,
        objects=torch.cat(objects)[index] if objects else None,
        failures=failures,
        presence=presence_blocks,
    )


PRESENCE_HITS = 3
"""The pairs a search returns, for presence: each sound's top 3 pictures of its batch by retrieval score (the
cut that marks search hits is calibrated on these, and scored on them)."""


def presence_pairs(clips: Sequence[Clip], blocks: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                   top_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(present scores, absent scores) from presence blocks (ModelOutputs.presence: clip positions, their
    sound-by-picture presence matrix and retrieval similarity). With `top_k` only each sound's top_k pictures of
    its batch by retrieval similarity count: the pairs a search returns, whose absent ones look most like the
    sound (the cut that marks search hits is calibrated on these). Present where the picture shows the
    sound's class as its sounding object, absent where it holds no object of that class (a clip's silent
    object's class, `extra["silent_class"]`, counts as held); undecided pairs are left out."""
    present, absent = [], []
    for positions, matrix, similarity in blocks:
        batch = [clips[int(p)] for p in positions]
        classes = [{clip.label, clip.extra.get("silent_class")} - {None, ""} for clip in batch]
        targets = presence_targets([clip.label for clip in batch], [clip.label for clip in batch], classes)
        if top_k is not None:
            ranked = np.argsort(-similarity, axis=1, kind="stable")[:, :top_k]
            kept = np.zeros_like(targets, dtype=bool)
            np.put_along_axis(kept, ranked, True, axis=1)
            targets = np.where(kept, targets, np.nan)
        present.append(matrix[targets == 1.0])
        absent.append(matrix[targets == 0.0])
    if not present:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(present), np.concatenate(absent)
