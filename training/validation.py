"""Per-epoch validation on a held-out split: retrieval R@1 both ways and, where boxes exist, AP50 / AUC.

Checkpoints are selected on this split, never on the test set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from jsa_retrieval.metrics import (
    ap50, auc, ciou, presence_auroc, presence_cut, rank_by_similarity, recall_at_k, threshold_map, vggss_gt_map,
)
from jsa_retrieval.checkpoints import load_model, read_checkpoint, save_checkpoint
from jsa_retrieval.clips import Clip, read_dataset
from jsa_retrieval.inference import pick_device
from jsa_retrieval.config import JSARConfig
from jsa_retrieval.collect import PRESENCE_HITS, ModelOutputs, NothingDecoded, collect_outputs, presence_pairs
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
        scores["presence_auroc"] = presence_auroc(present, absent)
    # the cut marks search hits, so it is calibrated on the pairs a search returns (each sound's best pictures)
    present, absent = presence_pairs(clips, outputs.presence, top_k=PRESENCE_HITS)
    if present.size and absent.size:
        scores["presence_cut"] = presence_cut(present, absent)
    return scores


def selection_score(scores: dict[str, float]) -> float:
    """One number to pick the best checkpoint: mean R@1 of both directions plus AP50 when available."""
    return (scores.get("r1_a2i", 0.0) + scores.get("r1_i2a", 0.0)) / 2 + scores.get("ap50", 0.0)


def calibrate_presence(checkpoint: Path, data_dir: Path, out_path: Path, split: str = "val",
                       device: str | None = None) -> float:
    """Calibrate a checkpoint's presence cut on `split` (as the trainer does after each epoch) and write the
    checkpoint with it to `out_path`, atomically. A new file, because a store's fingerprint names the checkpoint
    file it was built with: indexes built with the old file need `jsar index` again with the new one."""
    where = pick_device(device)
    model, config, _ = load_model(checkpoint, map_location=where)
    scores = validate(model, read_dataset(Path(data_dir), split).clips, config, where,
                      num_workers=min(2, config.train.num_workers))
    if "presence_cut" not in scores:
        raise ValueError(f"{data_dir} split {split!r} has no labelled clips of several classes to calibrate on")
    state = read_checkpoint(checkpoint)
    state["meta"] = {**(state.get("meta") or {}), "presence_cut": scores["presence_cut"],
                     "presence_calibration": {"data_dir": str(data_dir), "split": split,
                                              "top_k": PRESENCE_HITS, "auroc": scores.get("presence_auroc")}}
    save_checkpoint(Path(out_path), state)
    return float(scores["presence_cut"])
