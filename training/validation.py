"""Per-epoch validation on a held-out split: retrieval R@1 both ways and, where boxes exist, AP50 / AUC.

Checkpoints are selected on this split, never on the test set.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from jsa_retrieval.metrics import (
    PictureStats, PresenceCalibration, ap50, auc, calibrate_presence_cut, ciou, presence_auroc, presence_scores,
    rank_by_similarity, recall_at_k, threshold_map, vggss_gt_map,
)
from jsa_retrieval.checkpoints import load_model, read_checkpoint, save_checkpoint
from jsa_retrieval.clips import Clip, read_dataset
from jsa_retrieval.inference import pick_device
from jsa_retrieval.config import JSARConfig
from jsa_retrieval.collect import (
    ModelOutputs, NothingDecoded, calibration_folds, collect_outputs, reference_rows, split_presence_targets,
)
from jsa_retrieval.maps import upsample_and_normalise


@torch.no_grad()
def validate(model: nn.Module, clips: Sequence[Clip], config: JSARConfig, device: torch.device,
             batch_size: int = 64, num_workers: int = 0,
             image_features: torch.Tensor | None = None) -> tuple[dict[str, float], dict]:
    """(scores, presence meta) of `model` on `clips`. Scores: r1_a2i, r1_i2a (class labels when known, else the
    clip's own pair), and ap50 / auc / mean_ciou over clips with VGG-SS-style boxes (fixed 0.6 threshold,
    as the JSA release evaluates; a median threshold cannot reach cIoU 0.5 on objects under a quarter of the frame),
    and with class labels presence_auroc (every sound against every picture of the split) and the calibrated
    presence_cut (source visible above it) with presence_k, the depth of hits it was calibrated on. Presence
    meta: what a checkpoint records of that calibration (`presence_meta`; empty without one).
    `image_features`: a frozen trunk's cached output for `clips` (see trunk_cache), used instead of the images."""
    try:
        outputs = collect_outputs(model, clips, config.data, device, batch_size, num_workers, progress=False,
                                  image_features=image_features, presence=True)
    except NothingDecoded:
        return {}, {}
    scores = validation_scores(outputs, clips, config.data.image_size)
    auroc, calibration = presence_calibration(outputs, clips)
    scores.update(presence_calibration_scores(auroc, calibration))
    return scores, presence_meta(calibration, outputs, clips)


def validation_scores(outputs: ModelOutputs, clips: Sequence[Clip], size: int) -> dict[str, float]:
    """`validate`'s retrieval and localization scores from collected outputs; maps are compared with the boxes at
    the model's input `size` (the presence scores come from `presence_calibration`)."""
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
    return scores


def presence_calibration(outputs: ModelOutputs, clips: Sequence[Clip]
                         ) -> tuple[float | None, PresenceCalibration | None]:
    """(AUROC over every decided (sound, picture) pair of the whole split, the cut of
    `metrics.calibrate_presence_cut`: depth k from the ladder chosen on held-out sounds, and the presence mix,
    plain or by picture over the split's reference sounds, chosen on the split's hits), each None where the
    split lacks present or absent pairs (among all pairs / among the sounds' hits). `outputs` must hold the
    whole-split presence matrix; nothing here depends on the batch size or the clips' order."""
    kept = [clips[int(p)] for p in outputs.positions]
    targets = split_presence_targets(kept)
    present, absent = presence_scores(outputs.presence, targets)
    if not (present.size and absent.size):
        return None, None
    similarity = outputs.audio_vectors @ outputs.image_vectors.T
    rows = reference_rows(kept)
    pictures = PictureStats.of(outputs.presence[rows], similarity[rows]) if rows.size >= 2 else None
    try:
        calibration = calibrate_presence_cut(outputs.presence, similarity, targets, calibration_folds(kept),
                                             pictures=pictures)
    except ValueError:  # no sound has both a present and an absent picture among its hits
        calibration = None
    return presence_auroc(present, absent), calibration


def presence_calibration_scores(auroc: float | None, calibration: PresenceCalibration | None) -> dict[str, float]:
    """`presence_calibration`'s result as validation scores: presence_auroc, presence_cut, presence_k and the
    mix's weight (presence_mix_weight) and whether it mixes by picture (presence_mix_by_picture, 0 or 1)."""
    scores = {} if auroc is None else {"presence_auroc": auroc}
    if calibration is not None:
        scores.update(presence_cut=calibration.cut, presence_k=float(calibration.k))
        if calibration.mix is not None:
            scores.update(presence_mix_weight=calibration.mix.weight,
                          presence_mix_by_picture=float(calibration.mix.by_picture))
    return scores


def presence_meta(calibration: PresenceCalibration | None, outputs: ModelOutputs, clips: Sequence[Clip]) -> dict:
    """What a checkpoint records of a presence calibration on `outputs` (the collected `clips`): presence_cut,
    presence_k, presence_mix and, for a mix by picture, presence_reference, the reference sounds' tensors
    (`AudioSide.reference_state`) every later score of a picture is standardised against. Empty without one."""
    if calibration is None:
        return {}
    reference = None
    if calibration.mix is not None and calibration.mix.by_picture:
        rows = reference_rows([clips[int(p)] for p in outputs.positions])
        reference = outputs.sounds.rows(torch.as_tensor(rows)).reference_state()
    return {"presence_cut": calibration.cut, "presence_k": float(calibration.k),
            "presence_mix": None if calibration.mix is None else asdict(calibration.mix),
            "presence_reference": reference}


def selection_score(scores: dict[str, float]) -> float:
    """One number to pick the best checkpoint: mean R@1 of both directions plus AP50 when available."""
    return (scores.get("r1_a2i", 0.0) + scores.get("r1_i2a", 0.0)) / 2 + scores.get("ap50", 0.0)


def calibrate_presence(checkpoint: Path, data_dir: Path, out_path: Path, split: str = "val",
                       device: str | None = None) -> PresenceCalibration:
    """Calibrate a checkpoint's presence cut on `split`'s whole sound x picture matrix (as the trainer does after
    each epoch; depth of hits chosen from metrics.PRESENCE_K_LADDER on held-out sounds) and write the
    checkpoint with it to `out_path`, atomically; returns the calibration (the cut, its depth, the presence mix).
    A new file, because a store's fingerprint names the checkpoint file it was built with: indexes built with the
    old file need `jsar index` again with the new one."""
    where = pick_device(device)
    model, config, _ = load_model(checkpoint, map_location=where)
    clips = read_dataset(Path(data_dir), split).clips
    outputs = collect_outputs(model, clips, config.data, where, 64, min(2, config.train.num_workers),
                              progress=False, presence=True)
    auroc, calibration = presence_calibration(outputs, clips)
    if calibration is None:
        raise ValueError(f"{data_dir} split {split!r} has no labelled clips of several classes to calibrate on")
    state = read_checkpoint(checkpoint)
    state["meta"] = {**(state.get("meta") or {}), **presence_meta(calibration, outputs, clips),
                     "presence_calibration": {"data_dir": str(data_dir), "split": split, "whole_split": True,
                                              "top_k": calibration.k, "held_out": calibration.held_out,
                                              "mix_tried": calibration.mix_tried,
                                              "auroc": auroc}}
    save_checkpoint(Path(out_path), state)
    return calibration
