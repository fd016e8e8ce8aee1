"""Localization and retrieval metrics, numpy in, numbers out (conventions: README, Metric conventions).

Every function here reproduces the number the field's own evaluation code gives on the same maps:

- cIoU, AP50, AUC and the median threshold follow the ``Evaluator`` in EZ-VSL's ``utils.py`` / ``test.py``
  (stoneMo/EZ-VSL; the same class is copied into FNAC and SLAVC);
- the fixed threshold 0.6 on the min-max normalised map follows the JSA release (``test_model.py``);
- ground-truth maps follow EZ-VSL's ``datasets.py`` (``load_all_bboxes`` + ``bbox2gtmap``), which keeps the
  Flickr consensus rule of LVS (Chen et al., CVPR 2021);
- mIoU and the F-score follow AVSBench's ``utility.py`` (``mask_iou``, ``_eval_pr``, ``Eval_Fmeasure``);
- Recall@K is the class-level retrieval protocol of Senocak et al. (ICCV 2023).

Where the field's code divides by zero or leaves a case undefined, the choice made here is stated in the
function's docstring. Nothing in this module reads files or runs a model.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import auc as sklearn_auc

FLICKR_FRAME = 256
"""Flickr-SoundNet annotations are pixel boxes in a 256 x 256 frame."""

AUC_THRESHOLDS = 0.05 * np.arange(21)
"""The cIoU thresholds of the success curve, computed as EZ-VSL does (``0.05 * i``, i = 0..20).

Computed by multiplication, not ``np.linspace``, so that e.g. 0.05 * 6 = 0.30000000000000004 exactly as in the
field's code: a sample whose cIoU is exactly 0.3 is not counted at that threshold there, and not here either.
"""

THRESHOLD_MODES = ("median", "fixed", "adaptive")


# --------------------------------------------------------------------------------------------------------------
# Ground-truth maps
# --------------------------------------------------------------------------------------------------------------

def _box_array(boxes: Any) -> np.ndarray:
    """Boxes as a float64 (n, 4) array with NaN read as 0 (corrupt annotation values)."""
    array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.nan_to_num(array, nan=0.0)


def _paint(gt_map: np.ndarray, box: np.ndarray) -> None:
    """Add 1 inside ``[ymin:ymax, xmin:xmax]``; inverted or zero-area boxes add nothing."""
    xmin, ymin, xmax, ymax = (int(v) for v in box)
    gt_map[ymin:ymax, xmin:xmax] += 1.0


def vggss_gt_map(boxes: Any, size: int = 224) -> np.ndarray:
    """VGG-SS ground truth: the union of the annotated boxes, (size, size) float64 of 0/1.

    ``boxes`` is (n, 4) ``[xmin, ymin, xmax, ymax]`` normalised to [0, 1]. As in EZ-VSL's ``load_all_bboxes``
    (format 'vggss') each coordinate becomes ``int(clip(b, 0, 1) * size)`` (truncation) and ``bbox2gtmap`` sets
    ``[ymin:ymax, xmin:xmax]`` to 1. Corrupt values such as -2.88e16 are clipped, NaN is read as 0, and a
    zero-area box contributes nothing. No boxes gives an all-zero map.
    """
    gt_map = np.zeros((size, size), dtype=np.float64)
    pixels = (np.clip(_box_array(boxes), 0.0, 1.0) * size).astype(np.int64)
    for box in pixels:
        _paint(gt_map, box)
    return np.minimum(gt_map, 1.0)


def flickr_gt_map(annotator_boxes: Sequence[Any], size: int = 224) -> np.ndarray:
    """Flickr-SoundNet consensus ground truth, (size, size) float64 with values in {0, 0.5, 1}.

    ``annotator_boxes`` holds one (n_i, 4) array of ``[xmin, ymin, xmax, ymax]`` pixel boxes per annotator, in
    the 256 x 256 annotation frame. Following LVS / EZ-VSL (``load_all_bboxes`` format 'flickr' and
    ``bbox2gtmap``): each coordinate becomes ``int(size * v / 256)``, the indicator maps of all boxes of all
    annotators are summed, the sum is divided by 2 and clipped at 1, so a pixel inside two or more boxes counts
    1 and a pixel inside one box counts 0.5. Coordinates are also clipped to [0, size] (the field does not; real
    annotations never leave the frame, and a negative slice index would wrap around).
    """
    gt_map = np.zeros((size, size), dtype=np.float64)
    for boxes in annotator_boxes:
        scaled = (size * _box_array(boxes) / FLICKR_FRAME).astype(np.int64)
        for box in np.clip(scaled, 0, size):
            _paint(gt_map, box)
    return np.minimum(gt_map / 2.0, 1.0)


# --------------------------------------------------------------------------------------------------------------
# Localization: thresholding, cIoU, pointing game, summaries
# --------------------------------------------------------------------------------------------------------------

def threshold_map(pred: np.ndarray, mode: str = "median", gt: np.ndarray | None = None,
                  fixed: float = 0.6) -> np.ndarray:
    """Binarise a min-max normalised map (H, W) into a bool mask (H, W).

    - ``median`` (EZ-VSL / FNAC / SLAVC ``test.py``): pixels ``>= np.sort(pred.flatten())[int(pred.size * 0.5)]``;
      with ties at that value more than half the pixels are kept, as there.
    - ``fixed`` (JSA release ``test_model.py``): pixels ``>= fixed`` (0.6).
    - ``adaptive`` (ours): the n = Σ[gt > 0] largest values, cut like ``median``: every pixel
      ``>= sorted[N - n]``, so pixels tied at the cut all stay (no preference for the top-left); with an empty
      ground truth n = N / 2, the prior code's median.

    The comparison is done in the map's own dtype, as the field's ``infer >= thres`` is on float32 maps.
    """
    pred = np.asarray(pred)
    if mode == "median":
        return pred >= np.sort(pred.flatten())[int(pred.size * 0.5)]
    if mode == "fixed":
        return pred >= fixed
    if mode == "adaptive":
        if gt is None:
            raise ValueError("threshold mode 'adaptive' needs the ground-truth map (gt=...)")
        gt = np.asarray(gt)
        if gt.shape != pred.shape:
            raise ValueError(f"gt shape {gt.shape} differs from the map's {pred.shape}")
        count = int(np.count_nonzero(gt > 0)) or pred.size // 2
        return pred >= np.sort(pred.ravel())[pred.size - count]
    raise ValueError(f"unknown threshold mode {mode!r}; choose one of {THRESHOLD_MODES}")


def ciou(pred_binary: np.ndarray, gt: np.ndarray) -> float:
    """Consensus IoU of one sample: Σ(pred·gt) / (Σgt + Σ(pred·[gt = 0])).

    ``pred_binary`` (H, W) is the thresholded map, ``gt`` (H, W) the ground truth, soft (0 / 0.5 / 1) for Flickr.
    Formula of EZ-VSL's ``Evaluator.cal_CIOU``. When the denominator is 0 (empty ground truth and empty
    prediction) the field's code yields NaN (0/0), which already fails every ``>= t`` test of AP50 and AUC but
    turns the mean cIoU into NaN; here it is 0.0, which leaves AP50 and AUC unchanged and keeps the mean finite.
    An empty ground truth with a non-empty prediction gives 0.0 in both.
    """
    pred = np.asarray(pred_binary, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    intersection = np.sum(pred * gt)
    denominator = np.sum(gt) + np.sum(pred * (gt == 0))
    if denominator == 0:
        return 0.0
    return float(intersection / denominator)


def pointing_hit(pred: np.ndarray, gt: np.ndarray) -> bool:
    """Pointing game: is the map's peak (first maximum in row-major order, ``np.argmax``) inside ``gt > 0``?"""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"map shape {pred.shape} differs from ground truth {gt.shape}")
    return bool(gt.ravel()[int(np.argmax(pred))] > 0)


def _ciou_array(cious: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(cious, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no cIoU values to summarise")
    return values


def ap50(cious: Sequence[float] | np.ndarray) -> float:
    """Fraction of samples with cIoU >= 0.5: what papers report as "cIoU" (EZ-VSL ``finalize_AP50``)."""
    return float(np.mean(_ciou_array(cious) >= 0.5))


def mean_ciou(cious: Sequence[float] | np.ndarray) -> float:
    """Mean per-sample cIoU (EZ-VSL ``finalize_cIoU``)."""
    return float(np.mean(_ciou_array(cious)))


def auc(cious: Sequence[float] | np.ndarray) -> float:
    """Area under the success curve (t, fraction of samples with cIoU >= t), t = 0.05·i for i = 0..20.

    EZ-VSL ``finalize_AUC``: ``cious = [np.sum(c >= 0.05*i) / len(c) for i in range(21)]`` then
    ``sklearn.metrics.auc([0.05*i ...], cious)``, i.e. the trapezoid rule over these 21 points.
    """
    values = _ciou_array(cious)
    success = np.array([np.sum(values >= t) / values.size for t in AUC_THRESHOLDS])
    return float(sklearn_auc(AUC_THRESHOLDS, success))  # what EZ-VSL's evaluator calls


@dataclass(frozen=True)
class LocalizationScores:
    """Summary of a localization run; ``n`` is the number of samples the numbers are over."""

    n: int
    ap50: float
    mean_ciou: float
    auc: float
    pointing_game: float | None = None


def summarise_localization(cious: Sequence[float] | np.ndarray,
                           pointing_hits: Sequence[bool] | np.ndarray | None = None) -> LocalizationScores:
    """AP50, mean cIoU, AUC and (when given one hit per sample) the pointing-game accuracy."""
    values = _ciou_array(cious)
    pointing = None
    if pointing_hits is not None:
        hits = np.asarray(pointing_hits, dtype=bool).ravel()
        if hits.size != values.size:
            raise ValueError(f"{hits.size} pointing hits for {values.size} cIoU values")
        pointing = float(np.mean(hits))
    return LocalizationScores(n=int(values.size), ap50=ap50(values), mean_ciou=mean_ciou(values),
                              auc=auc(values), pointing_game=pointing)


# --------------------------------------------------------------------------------------------------------------
# AVSBench: mIoU and F-score
# --------------------------------------------------------------------------------------------------------------

def _binary(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask) > 0


def _frames(masks: Any) -> np.ndarray:
    """Masks as (N, H, W); a single (H, W) map is one frame."""
    array = np.asarray(masks)
    return array[None] if array.ndim == 2 else array


def mask_iou(pred_binary: np.ndarray, gt_binary: np.ndarray) -> float:
    """IoU of one binary mask (H, W) with its binary ground truth (H, W) (AVSBench ``mask_iou``).

    AVSBench's rule for a frame whose ground truth is empty: the score is the fraction of pixels correctly left
    empty, Σ((1-gt)(1-pred)) / (H·W). So empty ground truth with an empty prediction scores 1.0, and predicting
    m pixels there scores (H·W - m) / (H·W). AVSBench adds eps = 1e-7 to the denominator; it is left out here
    (the difference is below 1e-7).
    """
    pred = _binary(pred_binary)
    gt = _binary(gt_binary)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    if not gt.any():
        return float(np.count_nonzero(~pred) / pred.size)
    return float(np.count_nonzero(pred & gt) / np.count_nonzero(pred | gt))


def miou(preds_binary: Any, gts_binary: Any) -> float:
    """Mean of ``mask_iou`` over frames; inputs (N, H, W) or sequences of (H, W) masks.

    AVSBench averages per batch and then over batches, which equals the mean over frames when batches are of
    equal size; the mean over frames is what is computed here.
    """
    preds = _frames(preds_binary)
    gts = _frames(gts_binary)
    if len(preds) != len(gts) or len(preds) == 0:
        raise ValueError(f"need equal, non-zero numbers of predictions and ground truths: {len(preds)} vs {len(gts)}")
    return float(np.mean([mask_iou(p, g) for p, g in zip(preds, gts)]))


def _f_measure(tp: np.ndarray, predicted: np.ndarray, positives: float, beta2: float) -> np.ndarray:
    """F_beta from counts, with AVSBench's guards: 1e-20 in both denominators and NaN (0/0) read as 0."""
    precision = tp / (predicted + 1e-20)
    recall = tp / (positives + 1e-20)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = (1.0 + beta2) * precision * recall / (beta2 * precision + recall)
    return np.nan_to_num(f, nan=0.0)


def f_score_binary(pred_binary: np.ndarray, gt_binary: np.ndarray, beta2: float = 0.3) -> float:
    """F-measure (β² = 0.3) of one binary mask (H, W) against its binary ground truth (H, W).

    Precision tp/Σpred and recall tp/Σgt with AVSBench's guards (``_eval_pr`` / ``Eval_Fmeasure``): whenever
    nothing is correctly predicted — including an empty ground truth or an empty prediction — the score is 0.0.
    """
    pred = _binary(pred_binary)
    gt = _binary(gt_binary)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    tp = np.array([np.count_nonzero(pred & gt)], dtype=np.float64)
    predicted = np.array([np.count_nonzero(pred)], dtype=np.float64)
    return float(_f_measure(tp, predicted, float(np.count_nonzero(gt)), beta2)[0])


def f_score_curve(pred_prob: Any, gt: Any, beta2: float = 0.3, num_thresholds: int = 255) -> float:
    """AVSBench F-score: the mean over frames of F at each threshold, then the maximum over thresholds.

    ``pred_prob`` (N, H, W) or (H, W): probabilities in [0, 1] (AVSBench applies the sigmoid to its logits first;
    pass already-normalised maps here). ``gt`` (N, H, W): binary masks. Thresholds are
    ``linspace(0, 1 - 1e-10, num_thresholds)`` and a pixel is predicted when ``prob >= threshold``, as in
    ``_eval_pr``. Frames whose ground truth is empty are left out, as in ``Eval_Fmeasure``; with none left the
    score is 0.0. AVSBench's test script takes this max per batch and averages the batch maxima, which makes the
    number depend on the batch size; here the curve is averaged over all frames first (one batch holding the
    whole set). Thresholds are float64 here (float32 in AVSBench's torch code); only pixels lying exactly
    between the two roundings of a threshold could be counted differently.
    """
    preds = _frames(pred_prob).astype(np.float64)
    gts = _frames(gt)
    if preds.shape != gts.shape:
        raise ValueError(f"prediction shape {preds.shape} differs from ground truth {gts.shape}")
    thresholds = np.linspace(0.0, 1.0 - 1e-10, num_thresholds)
    curves = []
    for frame, mask in zip(preds, gts):
        positive = _binary(mask).ravel()
        if not positive.any():
            continue
        order = np.argsort(frame.ravel(), kind="stable")
        values = frame.ravel()[order]
        positives_below = np.concatenate([[0], np.cumsum(positive[order])])
        first_kept = np.searchsorted(values, thresholds, side="left")
        predicted = (values.size - first_kept).astype(np.float64)
        tp = (positives_below[-1] - positives_below[first_kept]).astype(np.float64)
        curves.append(_f_measure(tp, predicted, float(positives_below[-1]), beta2))
    if not curves:
        return 0.0
    return float(np.max(np.mean(curves, axis=0)))


# --------------------------------------------------------------------------------------------------------------
# Retrieval: ranking and class-level Recall@K
# --------------------------------------------------------------------------------------------------------------

def rank_by_similarity(similarity: np.ndarray, k: int) -> np.ndarray:
    """Indices (Q, min(k, G)) of each query's top-k gallery items, most similar first.

    ``similarity`` is (Q, G). Ties go to the lower gallery index (``np.argsort(-sim, kind='stable')``), so a
    ranking is reproducible and independent of the index backend.
    """
    similarity = np.asarray(similarity)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (Q, G), got shape {similarity.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    # float64 negation is exact for float32 scores and safe for integer ones, so ties stay ties.
    return np.argsort(-similarity.astype(np.float64), axis=1, kind="stable")[:, :k]


def _hits(ranked_labels: Any, query_labels: Any, ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    ranked = np.asarray(ranked_labels)
    queries = np.asarray(query_labels)
    if ranked.ndim != 2 or queries.shape != (ranked.shape[0],):
        raise ValueError(f"ranked labels must be (Q, K) and query labels (Q,), got {ranked.shape} and {queries.shape}")
    if ranked.shape[0] == 0:
        raise ValueError("no queries to evaluate")
    if len(ks) == 0 or min(ks) < 1:
        raise ValueError(f"ks must be positive cut-offs, got {tuple(ks)}")
    if max(ks) > ranked.shape[1]:
        raise ValueError(f"Recall@{max(ks)} needs at least {max(ks)} ranked items per query, got {ranked.shape[1]}")
    return ranked == queries[:, None], queries


def recall_at_k(ranked_labels: Any, query_labels: Any, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Class-level Recall@K: the fraction of queries with at least one of their top K items of their own class.

    ``ranked_labels`` (Q, K') holds the class labels of each query's gallery items in ranked order (K' >= max
    ks), ``query_labels`` (Q,) the queries' classes (Senocak et al., ICCV 2023 retrieval protocol). Queries
    without a known class should be left out by the caller: equal placeholder labels would count as hits.
    """
    hits, _ = _hits(ranked_labels, query_labels, ks)
    return {int(k): float(np.mean(hits[:, :k].any(axis=1))) for k in ks}


def recall_by_category(ranked_labels: Any, query_labels: Any,
                       ks: Sequence[int] = (1, 5, 10)) -> dict[Any, dict[int, float]]:
    """``recall_at_k`` within each query class: {label: {k: recall}}, labels in sorted order."""
    hits, queries = _hits(ranked_labels, query_labels, ks)
    result: dict[Any, dict[int, float]] = {}
    for label in np.unique(queries):
        rows = hits[queries == label]
        key = label.item() if isinstance(label, np.generic) else label
        result[key] = {int(k): float(np.mean(rows[:, :k].any(axis=1))) for k in ks}
    return result


# --------------------------------------------------------------------------------------------------------------
# Source presence: does the picture show the sound's source at all?
# --------------------------------------------------------------------------------------------------------------

PRESENCE_K_LADDER = (1, 3, 5, 10)
"""The calibration depths tried on val: the cut is calibrated on each sound's top k hits for one k of these."""

SERVED_HITS = 10
"""The hits per sound a search shows (`jsar query`'s default page): presence is scored, and a calibration depth
judged, on each sound's top 10 pictures of the whole split."""


def presence_targets(audio_labels: Sequence[Any], image_labels: Sequence[Any],
                     image_silent_labels: Sequence[Any]) -> np.ndarray:
    """(A, I) float matrix: 1 where image j's sounding object is of audio i's class, 0 where image j holds no
    object of that class at all, NaN where it is undecided (the class only as image j's silent object, or an
    audio or image without a label). `image_silent_labels[j]` is the class of image j's silent object (None: none)."""
    audio = np.array([("" if label is None else str(label)) for label in audio_labels], dtype=object)[:, None]
    sounding = np.array([("" if label is None else str(label)) for label in image_labels], dtype=object)[None, :]
    silent = np.array([("" if label is None else str(label)) for label in image_silent_labels], dtype=object)[None, :]
    targets = np.where(audio == sounding, 1.0, np.where(audio == silent, np.nan, 0.0))
    unknown = (audio == "") | (sounding == "")
    targets[unknown] = np.nan
    return targets


def top_k_hits(similarity: Any, k: int) -> np.ndarray:
    """(A, I) bool: each sound's k best pictures by retrieval similarity (A, I), ties toward the lower picture
    index, as `rank_by_similarity` and an exact search rank them."""
    similarity = np.asarray(similarity)
    hits = np.zeros(similarity.shape, dtype=bool)
    np.put_along_axis(hits, rank_by_similarity(similarity, min(k, similarity.shape[1])), True, axis=1)
    return hits


def presence_scores(presence: Any, targets: Any, kept: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(present scores, absent scores): the entries of the (A, I) presence matrix whose target (see
    `presence_targets`) is 1 / 0, among the `kept` pairs (an (A, I) bool mask, e.g. `top_k_hits`) when given."""
    presence, targets = np.asarray(presence, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    if kept is not None:
        targets = np.where(np.asarray(kept, dtype=bool), targets, np.nan)
    return presence[targets == 1.0], presence[targets == 0.0]


def presence_auroc(present: Any, absent: Any) -> float:
    """Area under the ROC curve of presence scores: the probability that a random present pair scores above a
    random absent one (ties count half). NaN when either side is empty."""
    from sklearn.metrics import roc_auc_score

    present, absent = np.asarray(present, dtype=np.float64), np.asarray(absent, dtype=np.float64)
    if present.size == 0 or absent.size == 0:
        return float("nan")
    return float(roc_auc_score(np.r_[np.ones(present.size), np.zeros(absent.size)], np.r_[present, absent]))


def presence_cut(present: Any, absent: Any) -> float:
    """The score above which a pair is called "source visible": the threshold of largest Youden's J
    (true-positive rate minus false-positive rate) on calibration pairs, midway between the two scores it
    separates so that it does not sit on a calibration sample."""
    present, absent = np.sort(np.asarray(present, dtype=np.float64)), np.sort(np.asarray(absent, dtype=np.float64))
    if present.size == 0 or absent.size == 0:
        raise ValueError("presence calibration needs present and absent pairs")
    values = np.unique(np.r_[present, absent])
    candidates = np.r_[values[0] - 1.0, (values[:-1] + values[1:]) / 2, values[-1] + 1.0]
    tpr = 1.0 - np.searchsorted(present, candidates, side="right") / present.size
    fpr = 1.0 - np.searchsorted(absent, candidates, side="right") / absent.size
    return float(candidates[int(np.argmax(tpr - fpr))])


def cut_rates(present: Any, absent: Any, cut: float) -> tuple[float, float]:
    """(fraction of present pairs kept, above `cut`; fraction of absent pairs marked "source not visible", at or
    below it): what a user sees of a cut. NaN for an empty side."""
    present, absent = np.asarray(present, dtype=np.float64), np.asarray(absent, dtype=np.float64)
    kept = float(np.mean(present > cut)) if present.size else float("nan")
    flagged = float(np.mean(absent <= cut)) if absent.size else float("nan")
    return kept, flagged


PRESENCE_MIX_LADDER = (0.0, 0.25, 0.5, 0.75)
"""The weights of the retrieval similarity in the presence score tried on val (0: the model's presence alone)."""


@dataclass(frozen=True)
class PictureStats:
    """Each picture's mean and std of the presence and similarity scores it gets from a fixed set of reference
    sounds ((I,) arrays each): what `PresenceMix` standardises a picture's scores by when it mixes "by picture".

    Why: some pictures score high with every sound (a hub), so their wrong hits look present; scored against its
    own column of reference sounds, a picture's hit says how much more it matches this sound than sounds in
    general. On realsound this sorted the maps that listen's top-10 hits at 0.871 on test against 0.843 for the
    plain mix (docs/realsound.md, "Presence, whole split")."""

    presence_mean: np.ndarray
    presence_std: np.ndarray
    similarity_mean: np.ndarray
    similarity_std: np.ndarray

    @classmethod
    def of(cls, reference_presence: Any, reference_similarity: Any) -> "PictureStats":
        """From the (R, I) presence and similarity of R reference sounds against I pictures; a constant column
        gets std 1 (its scores are then only shifted)."""
        presence = np.asarray(reference_presence, dtype=np.float64)
        similarity = np.asarray(reference_similarity, dtype=np.float64)
        if presence.ndim != 2 or presence.shape != similarity.shape or presence.shape[0] < 2:
            raise ValueError(f"picture statistics need two (R, I) matrices with R >= 2, got {presence.shape} "
                             f"and {similarity.shape}")

        def spread(matrix: np.ndarray) -> np.ndarray:
            std = matrix.std(axis=0)
            return np.where(std > 0, std, 1.0)

        return cls(presence.mean(axis=0), spread(presence), similarity.mean(axis=0), spread(similarity))

    def standardise(self, presence: Any, similarity: Any) -> tuple[np.ndarray, np.ndarray]:
        """(A, I) presence and similarity, each picture's column as z-scores of its reference statistics."""
        presence, similarity = np.asarray(presence, dtype=np.float64), np.asarray(similarity, dtype=np.float64)
        if presence.shape[-1] != self.presence_mean.size:
            raise ValueError(f"statistics of {self.presence_mean.size} pictures, scores of {presence.shape[-1]}")
        return ((presence - self.presence_mean) / self.presence_std,
                (similarity - self.similarity_mean) / self.similarity_std)


@dataclass(frozen=True)
class PresenceMix:
    """The presence score a hit is judged by: (1 - weight) * z(presence) + weight * z(similarity), each matrix
    standardised by the mean and std of the calibration split's (A, I) matrix, so the weight means the same
    whatever the two scores' scales. `by_picture`: each picture's scores are first standardised over reference
    sounds (`PictureStats`), and the mix applies to those.

    Why mix: the model's presence (a location head's peak cosine) and the retrieval similarity err on different
    hits; on realsound half of each sorted the top-10 hits of the maps that listen better than either alone, on
    val and on test (evaluation/probes/presence_mix.py). The weight, and whether to mix by picture, are chosen on
    val (`choose_presence_mix`)."""

    weight: float
    presence_mean: float
    presence_std: float
    similarity_mean: float
    similarity_std: float
    by_picture: bool = False

    @classmethod
    def fitted(cls, presence: Any, similarity: Any, weight: float,
               pictures: PictureStats | None = None) -> "PresenceMix":
        """The mix at `weight` standardised on these matrices (by picture first when `pictures` is given)."""
        if pictures is not None:
            presence, similarity = pictures.standardise(presence, similarity)
        presence, similarity = np.asarray(presence, dtype=np.float64), np.asarray(similarity, dtype=np.float64)
        return cls(float(weight), float(presence.mean()), float(presence.std()) or 1.0,
                   float(similarity.mean()), float(similarity.std()) or 1.0, pictures is not None)

    @classmethod
    def from_dict(cls, values: dict | None) -> "PresenceMix | None":
        """The mix a checkpoint's meta records (`presence_mix`), None for checkpoints calibrated without one."""
        if not values:
            return None
        return cls(**{name: float(values[name]) for name in cls.__dataclass_fields__ if name != "by_picture"},
                   by_picture=bool(values.get("by_picture", False)))

    @property
    def name(self) -> str:
        """How `choose_presence_mix` lists it: the weight, and "by picture" when it standardises by picture."""
        return f"{self.weight:g}" + (" by picture" if self.by_picture else "")

    def __call__(self, presence: Any, similarity: Any, pictures: PictureStats | None = None) -> np.ndarray:
        if self.by_picture:
            if pictures is None:
                raise ValueError("this presence mix standardises each picture over reference sounds; it needs "
                                 "their PictureStats")
            presence, similarity = pictures.standardise(presence, similarity)
        presence, similarity = np.asarray(presence, dtype=np.float64), np.asarray(similarity, dtype=np.float64)
        return ((1.0 - self.weight) * (presence - self.presence_mean) / self.presence_std
                + self.weight * (similarity - self.similarity_mean) / self.similarity_std)


def mixed_presence(presence: Any, similarity: Any, mix: PresenceMix | None,
                   pictures: PictureStats | None = None) -> np.ndarray:
    """The presence scores hits are judged by: `mix` of the two matrices (by picture with `pictures`), or
    `presence` itself without a mix."""
    return np.asarray(presence, dtype=np.float64) if mix is None else mix(presence, similarity, pictures)


def choose_presence_mix(presence: Any, similarity: Any, targets: Any, ladder: Sequence[float] = PRESENCE_MIX_LADDER,
                        served: int = SERVED_HITS, pictures: PictureStats | None = None
                        ) -> tuple[PresenceMix, dict[str, float]]:
    """(the mix whose scores give the highest AUROC over each sound's top `served` hits, {mix name: that AUROC})
    on one split's whole (A, I) matrices: every weight of `ladder`, and with `pictures` every weight again by
    picture. Ties go to the plain mix, then to the smaller weight. Raises ValueError when the hits hold no
    present or no absent pair."""
    shown = top_k_hits(similarity, served)
    tried: dict[str, float] = {}
    candidates: list[PresenceMix] = []
    for by_picture in (False, True) if pictures is not None else (False,):
        for weight in ladder:
            mix = PresenceMix.fitted(presence, similarity, weight, pictures if by_picture else None)
            present, absent = presence_scores(mix(presence, similarity, pictures), targets, shown)
            if not (present.size and absent.size):
                raise ValueError("choosing a presence mix needs present and absent pairs among the hits")
            tried[mix.name] = presence_auroc(present, absent)
            candidates.append(mix)
    best = max(candidates, key=lambda mix: (tried[mix.name], not mix.by_picture, -mix.weight))
    return best, tried


@dataclass(frozen=True)
class PresenceCalibration:
    """A calibrated cut: `cut` from every sound's top `k` hits, `k` chosen from the ladder by `held_out`
    ({k: mean over the two folds of the balanced accuracy, on the other fold's top SERVED_HITS hits, of the cut
    calibrated on one fold's top k hits}); the cut applies to `mix`'s scores (the raw presence when None)."""

    cut: float
    k: int
    held_out: dict[int, float]
    mix: PresenceMix | None = None
    mix_tried: dict[str, float] | None = None


def calibrate_presence_cut(presence: Any, similarity: Any, targets: Any, folds: Any,
                           ladder: Sequence[int] = PRESENCE_K_LADDER,
                           served: int = SERVED_HITS,
                           mix_ladder: Sequence[float] | None = PRESENCE_MIX_LADDER,
                           pictures: PictureStats | None = None) -> PresenceCalibration:
    """Choose the calibration depth k and the cut on one split's whole sound x picture matrices (A, I):
    `presence`, retrieval `similarity`, `targets` (`presence_targets`), and `folds` (A,) 0/1, a two-way split of
    the sounds fixed by something other than their order (e.g. a hash of the clip id).

    Why two folds: the cut is applied to the hits a search shows (each sound's top `served`), so a depth is
    judged by how a cut calibrated on one fold's top-k hits sorts the *other* fold's shown hits (balanced
    accuracy: the mean of present kept and absent marked); calibrated and judged on the same pairs, the deepest
    rung would win by construction. Ties go to the smaller k. The cut returned is calibrated on all sounds'
    top-k hits for the chosen k. With a `mix_ladder` the scores are first the `choose_presence_mix` of the split
    (None: the presence matrix as it is), which tries mixing by picture too when `pictures` is given."""
    presence, similarity = np.asarray(presence, dtype=np.float64), np.asarray(similarity, dtype=np.float64)
    mix, mix_tried = None, None
    if mix_ladder:
        mix, mix_tried = choose_presence_mix(presence, similarity, targets, mix_ladder, served, pictures)
        presence = mix(presence, similarity, pictures)
    folds = np.asarray(folds).astype(int).ravel()
    shown = top_k_hits(similarity, served)
    held_out: dict[int, float] = {}
    for k in ladder:
        hits = top_k_hits(similarity, k)
        accuracies = []
        for fold in (0, 1):
            calibrate_rows, judge_rows = folds == fold, folds != fold
            present, absent = presence_scores(presence[calibrate_rows], targets[calibrate_rows], hits[calibrate_rows])
            judged = presence_scores(presence[judge_rows], targets[judge_rows], shown[judge_rows])
            if present.size and absent.size and judged[0].size and judged[1].size:
                accuracies.append(float(np.mean(cut_rates(*judged, presence_cut(present, absent)))))
        if accuracies:
            held_out[int(k)] = float(np.mean(accuracies))
    if held_out:
        chosen = max(held_out, key=lambda k: (held_out[k], -k))
    else:  # too few sounds for two folds: the depth a search shows
        chosen = int(served)
    present, absent = presence_scores(presence, targets, top_k_hits(similarity, chosen))
    return PresenceCalibration(presence_cut(present, absent), chosen, held_out, mix, mix_tried)


# --------------------------------------------------------------------------------------------------------------
# Localization with negatives: the extended benchmarks of SLAVC (Mo & Morgado, NeurIPS 2022)
# --------------------------------------------------------------------------------------------------------------

def extended_pr_curve(confidence: Any, ciou: Any, positive: Any,
                      ciou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, precision, recall), thresholds every distinct confidence in descending order, on a set of
    positive pairs (the picture shows the sound's source; `ciou` of its map) and negative pairs (it does not;
    their `ciou` is ignored), one `confidence` per pair (SLAVC: the map's maximum).

    At threshold t, as SLAVC's extended Flickr / VGG-SS evaluator counts (`calc_precision_recall`): a positive
    with confidence >= t is a true positive when its cIoU >= `ciou_threshold` and a false positive when not (it
    localized in the wrong place); a positive below t is a false negative; a negative at or above t is a false
    positive. precision = TP / (TP + FP), recall = TP / (TP + FN), each 1 where its denominator is 0."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    ciou = np.asarray(ciou, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    if not confidence.size == ciou.size == positive.size:
        raise ValueError(f"{confidence.size} confidences, {ciou.size} cIoUs and {positive.size} labels")
    if confidence.size == 0:
        raise ValueError("no pairs to score")
    thresholds = np.unique(confidence)[::-1]
    order = np.argsort(-confidence, kind="stable")
    # cumulative counts over pairs in descending confidence, read at the last pair of each threshold
    last = np.searchsorted(-confidence[order], -thresholds, side="right") - 1
    correct = positive & (ciou >= ciou_threshold)
    true_pos = np.cumsum(correct[order])[last]
    false_pos = np.cumsum(~correct[order])[last]
    false_neg = positive.sum() - np.cumsum(positive[order])[last]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(true_pos + false_pos == 0, 1.0, true_pos / (true_pos + false_pos))
        recall = np.where(true_pos + false_neg == 0, 1.0, true_pos / (true_pos + false_neg))
    return thresholds, precision.astype(np.float64), recall.astype(np.float64)


def extended_ap(confidence: Any, ciou: Any, positive: Any, ciou_threshold: float = 0.5) -> float:
    """Average precision over confidence thresholds (SLAVC's "AP"): the area under the interpolated
    precision-recall curve (precision at recall r = the best precision at any lower threshold, PASCAL VOC's
    all-point rule), sum over thresholds of (recall step) x (interpolated precision), from recall 0.

    SLAVC's released code starts the curve at its second-highest confidence, so it leaves out the first recall
    step (and thins thresholds to about 200 on large sets); docs/metrics.md gives the difference."""
    _, precision, recall = extended_pr_curve(confidence, ciou, positive, ciou_threshold)
    interpolated = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(steps * interpolated))


def extended_max_f1(confidence: Any, ciou: Any, positive: Any, ciou_threshold: float = 0.5) -> float:
    """The best F1 = 2PR / (P + R) over confidence thresholds (SLAVC's "max-F1"), 0 where P + R = 0."""
    _, precision, recall = extended_pr_curve(confidence, ciou, positive, ciou_threshold)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return float(f1.max())
