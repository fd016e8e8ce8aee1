"""Sound source localization evaluation: run a model over annotated clips and score its maps with the field's
conventions (README, Metric conventions).

Two stages, so that `jsar eval compare` can reuse the first for retrieval too:

1. `jsa_retrieval.collect.collect_outputs` runs the model once over the clips (unreadable clips counted, not
   fatal) and keeps per clip the retrieval vectors and the coarse maps (cross map, JSA's refined map of Eq. 14,
   and with OGL the object prior's map).
2. `score_localization` upsamples each coarse map to the evaluation size (224, `upsample_and_normalise`),
   builds the refinement columns and scores them against the ground truth with `jsa_retrieval.metrics`.

Columns: "plain" (cross map), "+IQR" (refined map; JSA only, the baselines have no image query), "+OGL"
(plain fused with the object prior), "+IQR+OGL" (refined map fused with the object prior).

With `negatives`, the field's extended protocol (SLAVC, Mo & Morgado, NeurIPS 2022: extended Flickr-SoundNet and
VGG-SS) is scored too: every evaluated picture also appears in a negative pair, with the sound of a clip whose
class is not in the picture (`negative_partners`, fixed by a seed); each pair's confidence is the model's presence
score (model.presence_matrix: the peak of the raw cosine map for EZ-VSL and the location head, SLAVC's "map
maximum"; JSA's target-slot cosine without a head), and AP and max-F1 over confidence thresholds count a positive
as found only when confident and its cIoU >= 0.5 (`metrics.extended_ap`, `metrics.extended_max_f1`).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from jsa_retrieval.checkpoints import checkpoint_short_sha, load_model
from jsa_retrieval.clips import Clip, read_dataset
from jsa_retrieval.collect import ModelOutputs, collect_outputs, has_iqr
from jsa_retrieval import metrics
from jsa_retrieval.config import JSARConfig
from jsa_retrieval.decode import DecodeError, load_image
from jsa_retrieval.inference import pick_device
from jsa_retrieval.maps import upsample_and_normalise
from jsa_retrieval.errors import JsarError
from jsa_retrieval.transforms import squash_image

from .object_prior import OBJECT_BACKBONES, OGL_WEIGHT, load_object_prior, ogl_fuse

log = logging.getLogger(__name__)

COLUMNS = ("plain", "+IQR", "+OGL", "+IQR+OGL")
EVAL_SIZE = 224
"""Maps and ground truth are compared at 224 x 224 whatever the model's input size, as in the field's code."""

_SCORE_CHUNK = 64  # clips upsampled at once in stage 2: 64 x 224 x 224 float32 = 12.8 MB per column


class GroundTruthUnreadable(JsarError, RuntimeError):
    """A clip's mask file could not be read; the clip is skipped and counted as unreadable."""


@dataclass
class ColumnScores:
    """Scores of one refinement column over `n` clips.

    `ap50` is what papers print as "cIoU". Mask datasets (AVSBench) add `miou` and `f_score_binary` on the
    map binarised with the report's threshold mode, and `f_score` (AVSBench's max-over-thresholds F on the
    continuous map); they are None when no clip has a mask. `n_masks` counts the clips they are over.
    `negatives_ap` / `negatives_max_f1`: the extended protocol's AP and max-F1 over the `n` positive pairs and
    `n_negatives` negative ones (None unless negatives were asked for).
    """

    column: str
    n: int
    ap50: float
    mean_ciou: float
    auc: float
    pointing_game: float
    miou: float | None = None
    f_score: float | None = None
    f_score_binary: float | None = None
    n_masks: int = 0
    negatives_ap: float | None = None
    negatives_max_f1: float | None = None
    n_negatives: int = 0


@dataclass
class LocalizationExample:
    """One clip for figures: image (H, W, 3) uint8 at the evaluation size, gt_map (H, W) in [0, 1], and each
    column's predicted map (H, W) in [0, 1]."""

    clip_id: str
    image: np.ndarray
    gt_map: np.ndarray
    gt_kind: str
    maps: dict[str, np.ndarray]


@dataclass
class LocalizationReport:
    """Everything needed to reproduce and read a localization run; `to_dict` is what report.json holds."""

    model_name: str
    checkpoint: str | None
    checkpoint_sha: str | None
    config: dict[str, Any]
    data_dir: str
    layout: str
    split: str | None
    threshold: str
    upsample_mode: str
    eval_size: int
    iqr_alpha: float | None
    ogl: str | None
    ogl_weight: float | None
    n_clips: int
    n_evaluated: int
    n_skipped_no_gt: int
    n_skipped_unreadable: int
    n_missing_files: int
    columns: dict[str, ColumnScores]
    per_clip: dict[str, Any] = field(default_factory=dict)
    examples: list[LocalizationExample] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    group_by: str | None = None
    groups: dict[str, dict[str, ColumnScores]] = field(default_factory=dict)
    negatives_seed: int | None = None  # the seed of the negative pairs; None: not scored with negatives

    kind = "localization"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (examples left out: they are arrays, written as figures instead)."""
        values = {name: getattr(self, name) for name in (
            "model_name", "checkpoint", "checkpoint_sha", "config", "data_dir", "layout", "split", "threshold",
            "upsample_mode", "eval_size", "iqr_alpha", "ogl", "ogl_weight", "n_clips", "n_evaluated",
            "n_skipped_no_gt", "n_skipped_unreadable", "n_missing_files", "per_clip", "negatives_seed")}
        values["kind"] = self.kind
        values["columns"] = {name: asdict(scores) for name, scores in self.columns.items()}
        values["failures"] = [list(failure) for failure in self.failures]
        values["group_by"] = self.group_by
        values["groups"] = {group: {name: asdict(scores) for name, scores in columns.items()}
                            for group, columns in self.groups.items()}
        return values


# --------------------------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------------------------

def has_ground_truth(clip: Clip) -> bool:
    """True when the clip carries at least one box (VGG-SS, Flickr) or a mask file path (AVSBench)."""
    kind = clip.gt_kind
    if kind == "mask":
        return True
    if kind == "soft_boxes":
        return any(np.asarray(boxes).size for boxes in clip.flickr_boxes or [])
    if kind == "boxes":
        return clip.boxes is not None and np.asarray(clip.boxes).size > 0
    return False


def read_mask(path: Path, size: int = EVAL_SIZE) -> np.ndarray:
    """AVSBench mask PNG -> (size, size) float64 of 0/1: any non-zero pixel is foreground, nearest resize."""
    try:
        with Image.open(path) as mask:
            grey = mask.convert("L").resize((size, size), Image.NEAREST)
            return (np.asarray(grey) > 0).astype(np.float64)
    except Exception as error:  # PIL raises many types for broken files
        raise GroundTruthUnreadable(f"{path}: cannot read mask ({error})") from error


def ground_truth_map(clip: Clip, size: int = EVAL_SIZE) -> np.ndarray:
    """(size, size) ground truth: VGG-SS box union, Flickr consensus (0 / 0.5 / 1), or a binary mask."""
    kind = clip.gt_kind
    if kind == "boxes":
        return metrics.vggss_gt_map(clip.boxes, size)
    if kind == "soft_boxes":
        return metrics.flickr_gt_map(clip.flickr_boxes, size)
    if kind == "mask":
        return read_mask(clip.mask, size)
    raise ValueError(f"clip {clip.id} has no ground truth")


# --------------------------------------------------------------------------------------------------------------
# Stage 1: run the model
# --------------------------------------------------------------------------------------------------------------

def load_evaluated_model(checkpoint: str | Path | tuple[nn.Module, JSARConfig],
                         device: str | torch.device | None = None
                         ) -> tuple[nn.Module, JSARConfig, str | None, str | None, torch.device]:
    """(model in eval mode, config, checkpoint path or None, checkpoint_sha (short file SHA-256) or None, device).

    A checkpoint path is loaded onto `device` (default CUDA when available); a (model, config) pair is used
    where it is, on `device` only when one is given.
    """
    if isinstance(checkpoint, tuple):
        model, config = checkpoint
        parameter = next(iter(model.parameters()), None)
        where = torch.device(device) if device else (parameter.device if parameter is not None else torch.device("cpu"))
        return model.to(where).eval(), config, None, None, where
    where = pick_device(str(device) if device else None)
    model, config, _ = load_model(checkpoint, map_location=where)
    return model, config, str(checkpoint), checkpoint_short_sha(checkpoint), where


def iqr_alpha_for(model: nn.Module, config: JSARConfig, requested: float | None = None) -> float | None:
    """The IQR weight a report uses: `requested`, else the config's (0.6); None for a model without IQR."""
    if not has_iqr(model):
        return None
    return config.model.iqr_alpha if requested is None else float(requested)


# --------------------------------------------------------------------------------------------------------------
# Stage 2: columns and scores
# --------------------------------------------------------------------------------------------------------------

def available_columns(outputs: ModelOutputs) -> list[str]:
    """The columns these outputs can produce, in the order reports print them."""
    columns = ["plain"]
    if outputs.refined is not None:
        columns.append("+IQR")
    if outputs.objects is not None:
        columns.append("+OGL")
        if outputs.refined is not None:
            columns.append("+IQR+OGL")
    return columns


def column_maps(column: str, plain: torch.Tensor, refined: torch.Tensor | None, objects: torch.Tensor | None,
                size: int, upsample_mode: str, ogl_weight: float = OGL_WEIGHT) -> np.ndarray:
    """Coarse (B, h, w) maps -> one column's (B, size, size) float32 maps in [0, 1].

    OGL fuses at full resolution after upsampling and normalising both maps, as EZ-VSL does.
    """
    source = refined if column in ("+IQR", "+IQR+OGL") else plain
    if source is None:
        raise ValueError(f"column {column!r} needs the refined map, which this model does not have")
    full = upsample_and_normalise(source, size, upsample_mode)
    if column.endswith("+OGL"):
        if objects is None:
            raise ValueError(f"column {column!r} needs the object prior (ogl=...)")
        full = ogl_fuse(full, upsample_and_normalise(objects, size, upsample_mode), ogl_weight)
    return full.numpy().astype(np.float32, copy=False)


@dataclass
class _ColumnAccumulator:
    """Per-sample values of one column; summarised once all clips are scored."""

    cious: list[float] = field(default_factory=list)
    hits: list[bool] = field(default_factory=list)
    mask_ious: list[float] = field(default_factory=list)
    mask_f: list[float] = field(default_factory=list)


@dataclass
class ScoredLocalization:
    """Stage-2 results: per-column scores, per-clip cIoU, examples, and clips whose mask was unreadable."""

    columns: dict[str, ColumnScores]
    per_clip: dict[str, Any]
    examples: list[LocalizationExample]
    unreadable: list[tuple[str, str]]


def score_localization(clips: Sequence[Clip], outputs: ModelOutputs, threshold: str = "median",
                       upsample_mode: str = "bicubic", eval_size: int = EVAL_SIZE, keep_examples: int = 8,
                       ogl_weight: float = OGL_WEIGHT) -> ScoredLocalization:
    """Score every column of `outputs` against the clips' ground truth (stage 2).

    `clips` is the list `outputs.positions` indexes; every clip there must have ground truth.
    """
    columns = available_columns(outputs)
    accumulators = {column: _ColumnAccumulator() for column in columns}
    evaluated_ids: list[str] = []
    mask_rows: list[int] = []
    masks: list[np.ndarray] = []
    examples: list[LocalizationExample] = []
    unreadable: list[tuple[str, str]] = []
    for start in range(0, len(outputs.positions), _SCORE_CHUNK):
        rows = np.arange(start, min(start + _SCORE_CHUNK, len(outputs.positions)))
        chunk = outputs.subset(rows)
        maps = {column: column_maps(column, chunk.plain, chunk.refined, chunk.objects, eval_size, upsample_mode,
                                    ogl_weight) for column in columns}
        for offset, (row, position) in enumerate(zip(rows, chunk.positions)):
            clip = clips[int(position)]
            try:
                gt = ground_truth_map(clip, eval_size)
            except GroundTruthUnreadable as error:
                unreadable.append((clip.id, str(error)))
                continue
            evaluated_ids.append(clip.id)
            is_mask = clip.gt_kind == "mask"
            if is_mask:
                mask_rows.append(int(row))
                masks.append(gt > 0)
            for column in columns:
                _score_sample(accumulators[column], maps[column][offset], gt, threshold, is_mask)
            if len(examples) < keep_examples:
                example = _example(clip, gt, {column: maps[column][offset] for column in columns}, eval_size)
                if example is not None:
                    examples.append(example)
    if not evaluated_ids:
        raise ValueError("no clip with readable ground truth was evaluated")
    scores = {column: _summarise(column, accumulators[column]) for column in columns}
    if masks:
        _add_f_curve(scores, outputs.subset(np.asarray(mask_rows)), np.stack(masks), eval_size, upsample_mode,
                     ogl_weight)
    per_clip = {"ids": evaluated_ids, "ciou": {column: accumulators[column].cious for column in columns}}
    return ScoredLocalization(scores, per_clip, examples, unreadable)


def group_value(clip: Clip, field_name: str) -> str:
    """A clip's value of an annotation field as a group name ('missing' when the record lacks it)."""
    if field_name == "class":
        value = clip.label
    else:
        value = clip.extra.get(field_name)
    return "missing" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def score_by_group(clips: Sequence[Clip], outputs: ModelOutputs, group_by: str, threshold: str,
                   upsample_mode: str = "bicubic", eval_size: int = EVAL_SIZE) -> dict[str, dict[str, ColumnScores]]:
    """`score_localization`'s column scores separately for each value of `group_by` (an extra key of the
    annotation records, e.g. realsound's `silent_object_in_view`, or `class`), groups in sorted order."""
    values = np.array([group_value(clips[int(p)], group_by) for p in outputs.positions])
    return {value: score_localization(clips, outputs.subset(np.flatnonzero(values == value)), threshold,
                                      upsample_mode, eval_size, keep_examples=0).columns
            for value in sorted(set(values.tolist()))}


def _score_sample(accumulator: _ColumnAccumulator, pred: np.ndarray, gt: np.ndarray, threshold: str,
                  is_mask: bool) -> None:
    binary = metrics.threshold_map(pred, threshold, gt=gt)
    accumulator.cious.append(metrics.ciou(binary, gt))
    accumulator.hits.append(metrics.pointing_hit(pred, gt))
    if is_mask:
        accumulator.mask_ious.append(metrics.mask_iou(binary, gt))
        accumulator.mask_f.append(metrics.f_score_binary(binary, gt))


def _summarise(column: str, accumulator: _ColumnAccumulator) -> ColumnScores:
    summary = metrics.summarise_localization(accumulator.cious, accumulator.hits)
    n_masks = len(accumulator.mask_ious)
    return ColumnScores(
        column=column, n=summary.n, ap50=summary.ap50, mean_ciou=summary.mean_ciou, auc=summary.auc,
        pointing_game=float(summary.pointing_game), n_masks=n_masks,
        miou=float(np.mean(accumulator.mask_ious)) if n_masks else None,
        f_score_binary=float(np.mean(accumulator.mask_f)) if n_masks else None,
    )


def _add_f_curve(scores: dict[str, ColumnScores], outputs: ModelOutputs, masks: np.ndarray, eval_size: int,
                 upsample_mode: str, ogl_weight: float) -> None:
    """AVSBench F-score needs all frames at once (mean curve, then max): rebuild each column's full maps from
    the coarse ones, one column at a time, instead of holding every column's full maps during scoring."""
    for column, column_scores in scores.items():
        full = np.empty((len(masks), eval_size, eval_size), dtype=np.float32)
        for start in range(0, len(masks), _SCORE_CHUNK):
            rows = np.arange(start, min(start + _SCORE_CHUNK, len(masks)))
            chunk = outputs.subset(rows)
            full[rows] = column_maps(column, chunk.plain, chunk.refined, chunk.objects, eval_size, upsample_mode,
                                     ogl_weight)
        column_scores.f_score = metrics.f_score_curve(full, masks)


def negative_partners(labels: Sequence[Any], silent_labels: Sequence[Any], pictures: Sequence[int],
                      seed: int = 0) -> np.ndarray:
    """For each row in `pictures`, the row of a sound whose source is not in that picture: a labelled clip whose
    class is neither the picture's sounding class nor its silent one (`labels`, `silent_labels` per row; None or
    '': unknown), drawn uniformly with numpy's Generator(`seed`) in the order of `pictures`. An unlabelled
    picture cannot be judged, so it raises; so does a picture no other class can pair with."""
    def known(value: Any) -> str | None:
        return None if value in (None, "") else str(value)

    label_array = np.array([known(label) for label in labels], dtype=object)
    rng = np.random.default_rng(seed)
    candidates_for: dict[tuple[str, str | None], np.ndarray] = {}
    partners = []
    for row in pictures:
        held = (known(labels[row]), known(silent_labels[row]))
        if held[0] is None:
            raise ValueError(f"negative pairs need a class label on every picture (row {row} has none)")
        if held not in candidates_for:
            candidates_for[held] = np.flatnonzero((label_array != None) & (label_array != held[0])  # noqa: E711
                                                  & (label_array != held[1]))
        candidates = candidates_for[held]
        if candidates.size == 0:
            raise ValueError(f"no clip of a class other than {held[0]!r} to pair picture row {row} with")
        partners.append(int(candidates[rng.integers(candidates.size)]))
    return np.array(partners, dtype=int)


def score_negatives(scores: dict[str, ColumnScores], clips: Sequence[Clip], outputs: ModelOutputs,
                    per_clip: dict[str, Any], seed: int = 0) -> None:
    """Add the extended protocol's AP and max-F1 to every column of `scores`: positives are the evaluated clips
    (`per_clip` ids and cIoUs), each with one negative pair (its picture, `negative_partners`' sound); the
    confidence of pair (sound i, picture j) is `outputs.presence[i, j]` (collected with presence=True)."""
    if outputs.presence is None:
        raise ValueError("negatives need the presence matrix: collect_outputs(..., presence=True)")
    row_of = {clips[int(position)].id: row for row, position in enumerate(outputs.positions)}
    pictures = np.array([row_of[clip_id] for clip_id in per_clip["ids"]], dtype=int)
    kept = [clips[int(position)] for position in outputs.positions]
    partners = negative_partners([clip.label for clip in kept], [clip.extra.get("silent_class") for clip in kept],
                                 pictures.tolist(), seed)
    confidence = np.r_[outputs.presence[pictures, pictures], outputs.presence[partners, pictures]]
    positive = np.r_[np.ones(pictures.size, dtype=bool), np.zeros(pictures.size, dtype=bool)]
    for column, column_scores in scores.items():
        cious = np.r_[np.asarray(per_clip["ciou"][column], dtype=np.float64), np.zeros(pictures.size)]
        column_scores.negatives_ap = metrics.extended_ap(confidence, cious, positive)
        column_scores.negatives_max_f1 = metrics.extended_max_f1(confidence, cious, positive)
        column_scores.n_negatives = int(pictures.size)


def negatives_lines(report: LocalizationReport) -> str:
    """The extended protocol's scores of every column, as `jsar eval localization --negatives` prints them."""
    lines = [f"with negatives (seed {report.negatives_seed}): each picture also paired with a sound not in it"]
    lines += [f"{name}: AP {100 * scores.negatives_ap:.1f}, max-F1 {100 * scores.negatives_max_f1:.1f} "
              f"({scores.n} positive, {scores.n_negatives} negative pairs)"
              for name, scores in report.columns.items() if scores.negatives_ap is not None]
    return "\n".join(lines)


def _example(clip: Clip, gt: np.ndarray, maps: dict[str, np.ndarray], size: int) -> LocalizationExample | None:
    """The clip's frame as the model saw it (squashed to size x size) with its maps, for figures."""
    try:
        image = squash_image(load_image(clip.image), size)
    except DecodeError as error:
        log.warning("no example image for %s: %s", clip.id, error)
        return None
    return LocalizationExample(clip.id, image, gt.astype(np.float32), clip.gt_kind or "",
                               {column: values.copy() for column, values in maps.items()})


# --------------------------------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------------------------------

def evaluate_localization(checkpoint: str | Path | tuple[nn.Module, JSARConfig], data_dir: str | Path,
                          split: str | Path | None = None, annotations: str | Path | None = None,
                          threshold: str = "median", upsample_mode: str = "bicubic", iqr_alpha: float | None = None,
                          ogl: str | None = None, ogl_weights: str | Path | None = None, batch_size: int = 32,
                          num_workers: int = 2, keep_examples: int = 8, eval_size: int = EVAL_SIZE,
                          device: str | torch.device | None = None, group_by: str | None = None,
                          negatives: bool = False, negatives_seed: int = 0) -> LocalizationReport:
    """Localization scores of a checkpoint (or a (model, config) pair) on an annotated dataset.

    `threshold` is 'median' (EZ-VSL et al.), 'fixed' (0.6, the JSA release) or 'adaptive' (the ground
    truth's area); `upsample_mode` is any F.interpolate mode; `iqr_alpha` defaults to the config's (0.6);
    `ogl` names the object-prior backbone ('resnet18' or 'efficientnet-lite0', `ogl_weights` a local
    ResNet-18 .pth) or None for no OGL columns. Clips without ground truth are skipped and counted.
    `group_by` names an extra key of the annotation records (or `class`): every column is scored per value too.
    `negatives` adds the extended protocol's AP and max-F1 to every column (module docstring; the negative pairs
    are drawn with `negatives_seed`; needs a class label on every clip, and keeps the split's whole
    sound x picture presence matrix in memory).
    """
    if threshold not in metrics.THRESHOLD_MODES:
        raise ValueError(f"unknown threshold mode {threshold!r}; choose one of {metrics.THRESHOLD_MODES}")
    if ogl is not None and ogl not in OBJECT_BACKBONES:
        raise ValueError(f"unknown OGL backbone {ogl!r}; choose one of {OBJECT_BACKBONES}")
    collection = read_dataset(Path(data_dir), split, annotations)
    annotated = [clip for clip in collection.clips if has_ground_truth(clip)]
    if not annotated:
        raise ValueError(f"{data_dir}: none of the {len(collection)} clips has ground-truth boxes or masks "
                         "(VGG-SS needs vggss.json or --annotations, Flickr needs Annotations/*.xml)")
    model, config, checkpoint_path, checkpoint_sha, device = load_evaluated_model(checkpoint, device)
    alpha = iqr_alpha_for(model, config, iqr_alpha)
    prior = load_object_prior(ogl, ogl_weights, device) if ogl else None
    outputs = collect_outputs(model, annotated, config.data, device, batch_size, num_workers, alpha, prior,
                              presence=negatives)
    scored = score_localization(annotated, outputs, threshold, upsample_mode, eval_size, keep_examples)
    if negatives:
        score_negatives(scored.columns, annotated, outputs, scored.per_clip, negatives_seed)
    groups = score_by_group(annotated, outputs, group_by, threshold, upsample_mode, eval_size) if group_by else {}
    failures = list(outputs.failures.failures) + scored.unreadable
    if failures:
        log.warning("%d clip(s) skipped as unreadable (first: %s)", len(failures), failures[0][1])
    return LocalizationReport(
        model_name=getattr(model, "model_name", type(model).__name__), checkpoint=checkpoint_path,
        checkpoint_sha=checkpoint_sha, config=config.to_dict(), data_dir=str(data_dir), layout=collection.layout,
        split=None if split is None else str(split), threshold=threshold, upsample_mode=upsample_mode,
        eval_size=eval_size, iqr_alpha=alpha, ogl=ogl, ogl_weight=OGL_WEIGHT if ogl else None,
        n_clips=len(collection), n_evaluated=len(scored.per_clip["ids"]),
        n_skipped_no_gt=len(collection) - len(annotated), n_skipped_unreadable=len(failures),
        n_missing_files=len(collection.missing), columns=scored.columns, per_clip=scored.per_clip,
        examples=scored.examples, failures=failures, group_by=group_by, groups=groups,
        negatives_seed=negatives_seed if negatives else None,
    )
