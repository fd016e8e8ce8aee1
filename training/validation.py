"""Per-epoch validation on a held-out split: retrieval R@1 both ways and, where boxes exist, AP50 / AUC.

Checkpoints are selected on this split, never on the test set.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from jsa_retrieval.metrics import (
    ap50, auc, ciou, presence_auroc, presence_cut, rank_by_similarity, recall_at_k, threshold_map, vggss_gt_map,
)
from jsa_retrieval.clips import Clip
from jsa_retrieval.config import JSARConfig
from jsa_retrieval.collect import ModelOutputs, NothingDecoded, collect_outputs, presence_pairs
from jsa_retrieval.maps import upsample_and_normalise


@torch.no_grad()
def validate(model: nn.Module, clips: Sequence[Clip], config: JSARConfig, device: torch.device,
             batch_size: int = 64, num_workers: int = 0,
             image_features: torch.Tensor | None = None) -> dict[str, float]:
    """Scores of `model` on `clips`: r1_a2i, r1_i2a (class labels when known, else the clip's own pair),
    and ap50 / auc / mean_ciou over clips with VGG-SS-style boxes (fixed 0.6 threshold,
    as the JSA release evaluates; a median threshold cannot reach cIoU 0.5 on objects under a quarter of the frame),
    and with class labels presence_auroc and the calibrated presence_cut (source visible above it).
    `image_features`: a frozen trunk's cached output for `clips` (see trunk_cache), used instead of the images."""
    try:
        outputs = collect_outputs(model, clips, config.data, device, batch_size, num_workers, progress=False,
                                  image_features=image_features, presence=True)
    except NothingDecoded:
        return {}
    return validation_scores(outputs, clips, config.data.image_size)


def validation_scores(outputs: ModelOutputs, clips: Sequence[Clip], size: int) -> dict[str, float]:
    """`validate`'s scores from collected outputs; maps are compared with the boxes at the model's input `size`."""
    labels = np.array([clips[p].label if clips[p].label else f"#{p}" for p in outputs.positions])
    audio, image = outputs.audio_vectors, outputs.image_vectors
    scores = {
        "r1_a2i": recall_at_k(labels[rank_by_similarity(audio @ image.T, 1)], labels, (1,))[1],
        "r1_i2a": recall_at_k(labels[rank_by_similarity(image @ audio.T, 1)], labels, (1,))[1],
        "items": float(len(outputs.positions)),
    }
    boxed = [row for row, position in enumerate(outputs.positions)
             if clips[position].boxes is not None and len(clips[position].boxes)]
    if boxed:
        maps = upsample_and_normalise(outputs.plain[torch.as_tensor(boxed)], size).numpy()
        cious = [ciou(threshold_map(predicted, "fixed"), vggss_gt_map(clips[outputs.positions[row]].boxes, size))
                 for row, predicted in zip(boxed, maps)]
        scores.update(ap50=ap50(cious), auc=auc(cious), mean_ciou=float(np.mean(cious)))
    present, absent = presence_pairs(clips, outputs.presence)
    if present.size and absent.size:
        scores.update(presence_auroc=presence_auroc(present, absent), presence_cut=presence_cut(present, absent))
    return scores


def selection_score(scores: dict[str, float]) -> float:
    """One number to pick the best checkpoint: mean R@1 of both directions plus AP50 when available."""
    return (scores.get("r1_a2i", 0.0) + scores.get("r1_i2a", 0.0)) / 2 + scores.get("ap50", 0.0)
