"""Score collected model outputs: localization under one or more threshold modes and exact class Recall@K,
from one model pass. `jsar eval compare` (`compare_runs`) and the experiment (`run_experiment`) both run
collect (`jsa_retrieval.collect`) → `score_outputs`; `reports` only formats and writes what comes out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jsa_retrieval.clips import Clip, read_dataset
from jsa_retrieval.collect import ModelOutputs, collect_outputs, split_presence_targets
from jsa_retrieval.metrics import (
    SERVED_HITS, THRESHOLD_MODES, PresenceMix, mixed_presence, presence_auroc, presence_scores, top_k_hits,
)

from .localization import (
    EVAL_SIZE, ColumnScores, has_ground_truth, iqr_alpha_for, load_evaluated_model, score_by_group,
    score_localization,
)
from .object_prior import OBJECT_BACKBONES, load_object_prior
from .reports import ComparisonReport
from .retrieval import recall_from_vectors


@dataclass
class OutputScores:
    """What one model pass scores: `localization[threshold][column]` over the clips with ground truth, and
    `retrieval[direction][k]` over the labelled clips (None when no clip is labelled)."""

    localization: dict[str, dict[str, ColumnScores]] = field(default_factory=dict)
    retrieval: dict[str, dict[int, float]] | None = None
    n_localization: int = 0
    n_retrieval: int = 0
    n_unreadable: int = 0
    localization_by_group: dict[str, dict[str, dict[str, ColumnScores]]] = field(default_factory=dict)
    presence_auroc: float | None = None
    n_presence: tuple[int, int] = (0, 0)
    presence_auroc_hits: float | None = None  # over each sound's top-k hits among the whole split's pictures
    n_presence_hits: tuple[int, int] = (0, 0)


def score_outputs(clips: Sequence[Clip], outputs: ModelOutputs, thresholds: Sequence[str],
                  ks: Sequence[int] = (1, 5, 10), upsample_mode: str = "bicubic",
                  eval_size: int = EVAL_SIZE, group_by: str | None = None,
                  presence_hits: int = SERVED_HITS, presence_mix: PresenceMix | None = None) -> OutputScores:
    """Localization of the clips with ground truth under each threshold mode (and per value of `group_by`),
    exact Recall@K both ways of the labelled clips, and, when `outputs` holds the presence matrix, the AUROC of
    source presence over every (sound, picture) pair of the whole set and over each sound's top `presence_hits`
    pictures by retrieval score (what a search shows), scored as the checkpoint's `presence_mix` says (None: the
    raw presence). `clips` is the list `outputs.positions` indexes."""
    for threshold in thresholds:
        if threshold not in THRESHOLD_MODES:
            raise ValueError(f"unknown threshold mode {threshold!r}; choose one of {THRESHOLD_MODES}")
    scores = OutputScores(n_unreadable=len(outputs.failures))
    with_gt = np.flatnonzero([has_ground_truth(clips[int(p)]) for p in outputs.positions])
    if with_gt.size:
        for threshold in thresholds:
            scored = score_localization(clips, outputs.subset(with_gt), threshold, upsample_mode, eval_size,
                                        keep_examples=0)
            scores.localization[threshold] = scored.columns
            scores.n_localization = len(scored.per_clip["ids"])
            if group_by:
                scores.localization_by_group[threshold] = score_by_group(
                    clips, outputs.subset(with_gt), group_by, threshold, upsample_mode, eval_size)
        scores.n_unreadable += len(scored.unreadable)
    labels = [clips[int(p)].label for p in outputs.positions]
    if any(labels):
        directions = recall_from_vectors(outputs.audio_vectors, outputs.image_vectors, labels, ks)
        scores.retrieval = {name: {int(k): float(v) for k, v in d.recall.items()} for name, d in directions.items()}
        scores.n_retrieval = sum(1 for label in labels if label)
    if outputs.presence is not None:
        add_presence_scores(scores, [clips[int(p)] for p in outputs.positions], outputs, presence_hits, presence_mix)
    return scores


def add_presence_scores(scores: OutputScores, kept: Sequence[Clip], outputs: ModelOutputs, hits: int,
                        mix: PresenceMix | None = None) -> None:
    """Fill `scores`' presence AUROCs from the whole-set presence matrix (`kept`: the clips of its rows), mixed
    with the retrieval similarity by `mix` when given (a mix by picture reads `outputs.pictures`)."""
    targets = split_presence_targets(kept)
    similarity = outputs.audio_vectors @ outputs.image_vectors.T
    presence = mixed_presence(outputs.presence, similarity, mix, outputs.pictures)
    present, absent = presence_scores(presence, targets)
    if present.size and absent.size:
        scores.presence_auroc = presence_auroc(present, absent)
        scores.n_presence = (int(present.size), int(absent.size))
    present, absent = presence_scores(presence, targets, top_k_hits(similarity, hits))
    if present.size and absent.size:
        scores.presence_auroc_hits = presence_auroc(present, absent)
        scores.n_presence_hits = (int(present.size), int(absent.size))


def compare_runs(checkpoints: Sequence[str | Path], data_dir: str | Path, split: str | Path | None = None,
                 annotations: str | Path | None = None, threshold: str = "median", upsample_mode: str = "bicubic",
                 iqr_alpha: float | None = None, ogl: str | None = None, ogl_weights: str | Path | None = None,
                 ks: Sequence[int] = (1, 5, 10), batch_size: int = 32, num_workers: int = 2,
                 eval_size: int = EVAL_SIZE, device: str | None = None) -> ComparisonReport:
    """Evaluate several checkpoints on the same clips, one model pass each (`jsar eval compare`).

    Each pass gives localization scores on the clips with ground truth and exact in-memory Recall@K (both
    directions) on the clips with a class label; either part is empty when the data has no such clips.
    """
    if not checkpoints:
        raise ValueError("compare_runs needs at least one checkpoint")
    if threshold not in THRESHOLD_MODES:
        raise ValueError(f"unknown threshold mode {threshold!r}; choose one of {THRESHOLD_MODES}")
    if ogl is not None and ogl not in OBJECT_BACKBONES:
        raise ValueError(f"unknown OGL backbone {ogl!r}; choose one of {OBJECT_BACKBONES}")
    collection = read_dataset(Path(data_dir), split, annotations)
    clips = collection.clips
    report = ComparisonReport(data_dir=str(data_dir), layout=collection.layout,
                              split=None if split is None else str(split), threshold=threshold,
                              upsample_mode=upsample_mode, eval_size=eval_size, ogl=ogl, ks=tuple(int(k) for k in ks),
                              n_clips=len(clips), n_with_ground_truth=sum(map(has_ground_truth, clips)),
                              n_labelled=sum(1 for clip in clips if clip.label))
    prior = None
    for checkpoint in checkpoints:
        model, config, path, sha, where = load_evaluated_model(checkpoint, device)
        if ogl and prior is None:
            prior = load_object_prior(ogl, ogl_weights, where)
        alpha = iqr_alpha_for(model, config, iqr_alpha)
        outputs = collect_outputs(model, clips, config.data, where, batch_size, num_workers, alpha, prior)
        scores = score_outputs(clips, outputs, (threshold,), report.ks, upsample_mode, eval_size)
        report.runs.append({
            "model_name": getattr(model, "model_name", type(model).__name__), "checkpoint": path,
            "checkpoint_sha": sha, "config_name": config.name, "iqr_alpha": alpha,
            "n_skipped_unreadable": scores.n_unreadable,
            "localization": {name: vars(column) for name, column in scores.localization.get(threshold, {}).items()},
            "n_localization": scores.n_localization, "retrieval": scores.retrieval,
            "n_retrieval": scores.n_retrieval})
        del model
    return report


def summary_dict(scores: OutputScores) -> dict[str, Any]:
    """The experiment's compact form: {threshold: {column: {ap50, auc, mean_ciou, n}}} and the recall table."""
    def compact(columns: dict[str, ColumnScores]) -> dict[str, dict[str, float]]:
        return {column: {"ap50": s.ap50, "auc": s.auc, "mean_ciou": s.mean_ciou, "pointing": s.pointing_game,
                         "n": s.n} for column, s in columns.items()}

    return {"localization": {threshold: compact(columns) for threshold, columns in scores.localization.items()},
            "localization_by_group": {threshold: {group: compact(columns) for group, columns in groups.items()}
                                      for threshold, groups in scores.localization_by_group.items()},
            "retrieval": scores.retrieval, "n_localization": scores.n_localization,
            "n_retrieval": scores.n_retrieval, "n_unreadable": scores.n_unreadable,
            "presence_auroc": scores.presence_auroc, "n_presence": list(scores.n_presence),
            "presence_auroc_hits": scores.presence_auroc_hits}
