"""Metrics against hand computations and against the field's evaluation arithmetic (README, Metric conventions)."""
from dataclasses import asdict

import numpy as np
import pytest

from jsa_retrieval.metrics import (
    PRESENCE_K_LADDER,
    LocalizationScores,
    PictureStats,
    PresenceMix,
    ap50,
    auc,
    calibrate_presence_cut,
    choose_presence_mix,
    ciou,
    cut_rates,
    extended_ap,
    extended_max_f1,
    extended_pr_curve,
    f_score_binary,
    f_score_curve,
    flickr_gt_map,
    mask_iou,
    mean_ciou,
    miou,
    mixed_presence,
    pointing_hit,
    presence_cut,
    presence_scores,
    rank_by_similarity,
    recall_at_k,
    recall_by_category,
    summarise_localization,
    threshold_map,
    top_k_hits,
    vggss_gt_map,
)


# ---------------------------------------------------------------------------------------------------- GT maps

def test_vggss_gt_map_is_union_of_truncated_boxes():
    gt = vggss_gt_map([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]], size=8)
    assert set(np.unique(gt)) == {0.0, 1.0}
    assert gt.sum() == 16 + 16 - 4
    assert gt[0, 0] == 1 and gt[5, 5] == 1 and gt[6, 6] == 0 and gt[0, 5] == 0
    # 0.999 * 8 = 7.992 truncates to 7: the last row/column stays empty.
    edge = vggss_gt_map([[0.0, 0.0, 0.999, 0.999]], size=8)
    assert edge.sum() == 49 and edge[7].sum() == 0


def test_vggss_corrupt_record_is_clipped_and_zero_area_box_adds_nothing():
    gt = vggss_gt_map([[-2.88e16, 0.1, 0.5, 0.6], [0.3, 0.3, 0.3, 0.3]])
    # x: clip(-2.88e16) -> 0 .. int(0.5*224) = 112; y: int(22.4) = 22 .. int(134.4) = 134.
    assert gt.shape == (224, 224)
    assert gt.sum() == 112 * 112
    rows, cols = np.nonzero(gt)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (22, 133, 0, 111)
    assert vggss_gt_map([[0.3, 0.3, 0.3, 0.3]]).sum() == 0


def test_vggss_nan_reads_as_zero_and_overflow_clips_to_frame():
    gt = vggss_gt_map([[np.nan, 0.5, 0.25, 1.7]], size=8)
    assert gt.sum() == 2 * 4
    assert gt[4:, :2].all()
    assert vggss_gt_map(np.zeros((0, 4)), size=8).sum() == 0


def test_flickr_consensus_map_from_three_annotators():
    annotators = [
        np.array([[0, 0, 128, 128]]),                          # -> [0, 0, 4, 4] at size 8
        np.array([[64, 64, 192, 192]]),                        # -> [2, 2, 6, 6]
        np.array([[224, 224, 256, 256], [96, 96, 128, 128]]),  # -> [7, 7, 8, 8] and [3, 3, 4, 4]
    ]
    gt = flickr_gt_map(annotators, size=8)
    assert gt[0, 0] == 0.5          # one box
    assert gt[2, 2] == 1.0          # two boxes agree
    assert gt[3, 3] == 1.0          # three boxes: 3 / 2 clipped at 1
    assert gt[5, 5] == 0.5 and gt[7, 7] == 0.5
    assert gt[0, 7] == 0.0
    assert set(np.unique(gt)) == {0.0, 0.5, 1.0}
    assert gt.sum() == pytest.approx(4 * 1.0 + 25 * 0.5)


def test_flickr_boxes_scale_from_256_frame_with_truncation():
    gt = flickr_gt_map([np.array([[10, 20, 100, 120]])])
    # int(224*10/256) = 8, int(17.5) = 17, int(87.5) = 87, int(105.0) = 105; one annotator alone -> 0.5.
    rows, cols = np.nonzero(gt)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (17, 105, 8, 87)
    assert gt.sum() == pytest.approx(88 * 79 * 0.5)


def test_flickr_matches_ezvsl_bbox2gtmap_on_random_annotations():
    """Reference: EZ-VSL load_all_bboxes('flickr') + bbox2gtmap, restated."""
    rng = np.random.default_rng(2)
    for _ in range(5):
        annotators = [np.sort(rng.integers(0, 257, (rng.integers(1, 3), 2, 2)), axis=1).reshape(-1, 4)
                      for _ in range(3)]
        ref = np.zeros((224, 224))
        for boxes in annotators:
            for xmin, ymin, xmax, ymax in [[int(224 * int(v) / 256) for v in box] for box in boxes]:
                ref[ymin:ymax, xmin:xmax] += 1
        ref = ref / 2
        ref[ref > 1] = 1
        np.testing.assert_array_equal(flickr_gt_map(annotators), ref)


# ---------------------------------------------------------------------------------------------------- thresholds

def test_median_threshold_keeps_values_at_or_above_index_half_of_sorted_map():
    pred = (np.arange(16) / 16).reshape(4, 4)
    mask = threshold_map(pred, "median")
    assert mask.dtype == bool
    assert mask.sum() == 8 and mask.ravel()[8:].all() and not mask.ravel()[:8].any()
    odd = (np.arange(9) / 9).reshape(3, 3)
    assert threshold_map(odd, "median").sum() == 5     # sorted[int(4.5)] = sorted[4] -> 5 pixels


def test_median_threshold_with_ties_keeps_every_tied_pixel():
    pred = np.zeros((4, 4))
    pred[0, :3] = 1.0
    assert threshold_map(pred, "median").sum() == 16   # sorted[8] = 0 and every pixel is >= 0


def test_fixed_threshold_is_inclusive_at_0_6():
    pred = (np.arange(16) / 16).reshape(4, 4)
    assert threshold_map(pred, "fixed").sum() == 6       # k/16 >= 0.6 for k = 10..15
    assert threshold_map(np.full((2, 2), 0.6, np.float32), "fixed").all()
    assert threshold_map(pred, "fixed", fixed=0.5).sum() == 8


def test_adaptive_threshold_keeps_every_pixel_tied_at_the_cut():
    pred = np.zeros((4, 4))
    pred.ravel()[[1, 3, 5, 7, 9, 11]] = 1.0
    pred.ravel()[15] = 2.0
    gt = np.zeros((4, 4))
    gt[3, :] = 0.5                                      # soft gt: 4 pixels > 0 -> cut at sorted[16 - 4] = 1.0
    mask = threshold_map(pred, "adaptive", gt=gt)
    assert sorted(np.flatnonzero(mask)) == [1, 3, 5, 7, 9, 11, 15]   # all six tied at 1.0 stay, not the first 3
    untied = np.arange(16.0).reshape(4, 4)
    assert sorted(np.flatnonzero(threshold_map(untied, "adaptive", gt=gt))) == [12, 13, 14, 15]
    # an empty ground truth falls back to n = N / 2, the prior code's median cut
    np.testing.assert_array_equal(threshold_map(untied, "adaptive", gt=np.zeros((4, 4))),
                                  threshold_map(untied, "median"))
    with pytest.raises(ValueError):
        threshold_map(pred, "adaptive")
    with pytest.raises(ValueError):
        threshold_map(pred, "otsu")


# ---------------------------------------------------------------------------------------------------- cIoU

def test_ciou_binary_gt():
    gt = np.zeros((4, 4))
    gt[:2, :2] = 1
    pred = np.zeros((4, 4), bool)
    pred[:2, :] = True
    assert ciou(pred, gt) == pytest.approx(4 / (4 + 4))


def test_ciou_soft_gt_and_whole_image_prediction():
    gt = np.zeros((4, 4))
    gt[0] = [1, 1, 0.5, 0.5]
    gt[1, :2] = 0.5
    pred = np.zeros((4, 4), bool)
    pred[0] = True
    pred[1, 2] = True
    # intersection 1 + 1 + 0.5 + 0.5 = 3; sum gt = 4; one predicted pixel on gt == 0.
    assert ciou(pred, gt) == pytest.approx(3 / (4 + 1))
    # whole image: sum gt / (sum gt + number of gt == 0 pixels) = 4 / (4 + 10)
    assert ciou(np.ones((4, 4)), gt) == pytest.approx(4 / 14)


def test_ciou_empty_cases_are_zero():
    empty = np.zeros((4, 4))
    assert ciou(empty, empty) == 0.0
    assert ciou(np.ones((4, 4)), empty) == 0.0
    gt = np.zeros((4, 4))
    gt[0, 0] = 1
    assert ciou(empty, gt) == 0.0
    with pytest.raises(ValueError):
        ciou(np.ones((4, 4)), np.ones((3, 3)))


# ---------------------------------------------------------------------------------------------------- summaries

def test_ap50_mean_and_auc_by_hand():
    cious = [0.0, 0.5, 1.0]
    assert ap50(cious) == pytest.approx(2 / 3)
    assert mean_ciou(cious) == pytest.approx(0.5)
    # success curve: 1 at t=0, 2/3 on t=0.05..0.5, 1/3 on t=0.55..1.0
    expected = (1 + 2 / 3) / 2 * 0.05 + 0.45 * 2 / 3 + (2 / 3 + 1 / 3) / 2 * 0.05 + 0.45 / 3
    assert expected == pytest.approx(31 / 60)
    assert auc(cious) == pytest.approx(31 / 60)


def test_auc_uses_the_fields_floating_thresholds():
    # 0.05 * 6 = 0.30000000000000004, so a cIoU of exactly 0.3 drops out at i = 6, as in EZ-VSL:
    # success 1 for i = 0..5, 0 from i = 6: 5 full intervals + one half interval.
    assert auc([0.3]) == pytest.approx(0.25 + 0.025)
    assert auc([1.0]) == pytest.approx(1.0)
    assert auc([0.0]) == pytest.approx(0.025)


def test_summarise_localization_with_pointing_game():
    scores = summarise_localization([0.0, 0.5, 1.0], pointing_hits=[True, False, True])
    assert scores == LocalizationScores(n=3, ap50=pytest.approx(2 / 3), mean_ciou=pytest.approx(0.5),
                                        auc=pytest.approx(31 / 60), pointing_game=pytest.approx(2 / 3))
    assert summarise_localization([0.7]).pointing_game is None
    with pytest.raises(ValueError):
        summarise_localization([])
    with pytest.raises(ValueError):
        summarise_localization([0.1, 0.2], pointing_hits=[True])


def test_pointing_hit_uses_first_peak_in_row_major_order():
    gt = np.zeros((4, 4))
    gt[1:3, 1:3] = 1
    pred = np.zeros((4, 4))
    pred[1, 2] = 1.0
    assert pointing_hit(pred, gt) is True
    pred[0, 3] = 1.0                                    # tied peak earlier in row-major order, outside gt
    assert pointing_hit(pred, gt) is False


def test_matches_ezvsl_evaluator_arithmetic_on_random_maps():
    """Reference: EZ-VSL test.py (median thr, cal_CIOU, finalize_*) with datasets.py's gt maps, restated here."""
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    field, ours = [], []
    for _ in range(12):
        boxes = np.sort(rng.uniform(-0.2, 1.2, (rng.integers(1, 4), 2, 2)), axis=1).reshape(-1, 4)
        ref_gt = np.zeros((224, 224))
        for xmin, ymin, xmax, ymax in (np.clip(boxes, 0, 1) * 224).astype(int):
            ref_gt[ymin:ymax, xmin:xmax] += 1
        ref_gt[ref_gt > 0] = 1
        pred = (ref_gt * rng.uniform(0, 2) + rng.random((224, 224))).astype(np.float32)
        thr = np.sort(pred.flatten())[int(pred.shape[0] * pred.shape[1] * 0.5)]
        infer_map = np.zeros((224, 224))
        infer_map[pred >= thr] = 1
        field.append(np.sum(infer_map * ref_gt) / (np.sum(ref_gt) + np.sum(infer_map * (ref_gt == 0))))
        gt = vggss_gt_map(boxes)
        np.testing.assert_array_equal(gt, ref_gt)
        ours.append(ciou(threshold_map(pred, "median"), gt))
    np.testing.assert_allclose(ours, field, rtol=0, atol=1e-12)
    curve = [np.sum(np.array(field) >= 0.05 * i) / len(field) for i in range(21)]
    assert auc(ours) == pytest.approx(sklearn_metrics.auc([0.05 * i for i in range(21)], curve), abs=1e-12)
    assert ap50(ours) == np.mean(np.array(field) >= 0.5)


# ---------------------------------------------------------------------------------------------------- AVSBench

def test_mask_iou_and_miou_by_hand():
    pred = np.zeros((4, 4), bool)
    pred[:2] = True
    gt = np.zeros((4, 4), bool)
    gt[:, :2] = True
    assert mask_iou(pred, gt) == pytest.approx(4 / 12)
    empty = np.zeros((4, 4), bool)
    assert mask_iou(empty, empty) == 1.0                # AVSBench: true negatives over all pixels
    some = np.zeros((4, 4), bool)
    some[0] = True
    assert mask_iou(some, empty) == pytest.approx(12 / 16)
    assert miou([pred, empty, some], [gt, empty, empty]) == pytest.approx((1 / 3 + 1 + 0.75) / 3)


def test_f_score_binary_by_hand():
    gt = np.zeros((4, 4), np.uint8)
    gt[:, :2] = 255                                     # 8 positives, stored as a 0/255 png would be
    pred = np.zeros((4, 4), bool)
    pred[0, :2] = True                                  # 2 predicted, both right: P = 1, R = 0.25
    assert f_score_binary(pred, gt) == pytest.approx(1.3 * 0.25 / (0.3 * 1 + 0.25))
    assert f_score_binary(np.zeros((4, 4)), gt) == 0.0
    assert f_score_binary(pred, np.zeros((4, 4))) == 0.0


def test_f_score_curve_averages_frames_before_the_max_and_skips_empty_gt():
    probs = np.array([[[0.9, 0.6], [0.3, 0.1]],
                      [[0.2, 0.5], [0.45, 0.4]],
                      [[0.9, 0.9], [0.9, 0.9]]])
    gts = np.array([[[1, 0], [1, 0]],
                    [[0, 1], [0, 0]],
                    [[0, 0], [0, 0]]])
    # frame 1 alone peaks at F = 1.3*1*0.5/(0.3+0.5) = 0.8125 (t in (0.6, 0.9]);
    assert f_score_curve(probs[0], gts[0]) == pytest.approx(0.8125)
    # frame 2 alone peaks at 1.0 (t in (0.45, 0.5]); there frame 1 has P = R = 0.5, F = 0.5.
    # mean-then-max = (0.5 + 1.0) / 2 = 0.75, not the mean of the maxima 0.90625; frame 3 (empty gt) is skipped.
    assert f_score_curve(probs, gts) == pytest.approx(0.75)
    assert f_score_curve(probs[2:], gts[2:]) == 0.0


def test_f_score_curve_matches_avsbench_threshold_loop():
    """Reference: AVSBench _eval_pr / Eval_Fmeasure (255 thresholds, >=, 1e-20 guards, NaN -> 0), restated."""
    rng = np.random.default_rng(1)
    probs = rng.random((4, 16, 16))
    gts = rng.random((4, 16, 16)) > 0.7
    thresholds = np.linspace(0, 1 - 1e-10, 255)
    curves = []
    for pred, gt in zip(probs, gts):
        prec = np.array([((pred >= t) & gt).sum() / ((pred >= t).sum() + 1e-20) for t in thresholds])
        rec = np.array([((pred >= t) & gt).sum() / (gt.sum() + 1e-20) for t in thresholds])
        with np.errstate(invalid="ignore"):
            f = 1.3 * prec * rec / (0.3 * prec + rec)
        f[f != f] = 0
        curves.append(f)
    assert f_score_curve(probs, gts) == pytest.approx(np.max(np.mean(curves, axis=0)), abs=1e-12)


# ---------------------------------------------------------------------------------------------------- retrieval

GALLERY_LABELS = np.array(["dog", "cat", "dog", "bird", "cat"])
QUERY_LABELS = np.array(["cat", "dog", "bird", "cat"])
SIMILARITY = np.array([
    [0.9, 0.9, 0.1, 0.2, 0.3],    # tie between gallery 0 (dog) and 1 (cat): the lower index wins
    [0.1, 0.5, 0.2, 0.8, 0.5],
    [0.3, 0.3, 0.3, 0.7, 0.1],
    [0.0, 0.0, 0.0, 0.0, 1.0],
])


def test_rank_by_similarity_breaks_ties_towards_lower_gallery_index():
    ranks = rank_by_similarity(SIMILARITY, 5)
    np.testing.assert_array_equal(ranks, [[0, 1, 4, 3, 2], [3, 1, 4, 2, 0], [3, 0, 1, 2, 4], [4, 0, 1, 2, 3]])
    assert rank_by_similarity(SIMILARITY, 2).shape == (4, 2)
    assert rank_by_similarity(SIMILARITY, 50).shape == (4, 5)


def test_recall_at_k_on_hand_made_similarity_with_ties():
    ranked = GALLERY_LABELS[rank_by_similarity(SIMILARITY, 5)]
    # query 0: dog, cat, cat -> miss@1, hit@3; query 1: bird, cat, cat, dog -> hit only @5;
    # query 2: bird first; query 3: cat first.
    assert recall_at_k(ranked, QUERY_LABELS, ks=(1, 3, 5)) == pytest.approx({1: 0.5, 3: 0.75, 5: 1.0})
    # Same scores with gallery items 0 and 1 swapped: the tie now goes to the cat, and R@1 changes.
    swap = [1, 0, 2, 3, 4]
    ranked_swapped = GALLERY_LABELS[swap][rank_by_similarity(SIMILARITY[:, swap], 5)]
    assert recall_at_k(ranked_swapped, QUERY_LABELS, ks=(1,)) == pytest.approx({1: 0.75})
    with pytest.raises(ValueError):
        recall_at_k(ranked[:, :3], QUERY_LABELS, ks=(1, 5))


def test_recall_by_category():
    ranked = GALLERY_LABELS[rank_by_similarity(SIMILARITY, 5)]
    per_class = recall_by_category(ranked, QUERY_LABELS, ks=(1, 3, 5))
    assert list(per_class) == ["bird", "cat", "dog"]
    assert all(type(label) is str for label in per_class)
    assert per_class["cat"] == pytest.approx({1: 0.5, 3: 1.0, 5: 1.0})
    assert per_class["dog"] == pytest.approx({1: 0.0, 3: 0.0, 5: 1.0})
    assert per_class["bird"] == pytest.approx({1: 1.0, 3: 1.0, 5: 1.0})


# ------------------------------------------------------------------- localization with negatives (SLAVC's extended)

# (confidence, positive, cIoU): A found in place, B a negative, C confident but in the wrong place, D found, E negative
EXTENDED = {"confidence": [0.9, 0.8, 0.7, 0.6, 0.5], "positive": [True, False, True, True, False],
            "ciou": [0.8, 0.0, 0.3, 0.6, 0.0]}


def test_extended_curve_counts_a_mislocated_confident_positive_as_a_false_positive_by_hand():
    thresholds, precision, recall = extended_pr_curve(EXTENDED["confidence"], EXTENDED["ciou"], EXTENDED["positive"])
    np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.7, 0.6, 0.5])
    # t 0.9: TP A, FN C D; t 0.8: + FP B; t 0.7: C confident but cIoU 0.3 -> FP, FN D; t 0.6: TP A D, FP B C, FN 0
    np.testing.assert_allclose(precision, [1, 1 / 2, 1 / 3, 2 / 4, 2 / 5])
    np.testing.assert_allclose(recall, [1 / 3, 1 / 3, 1 / 2, 1, 1])


def test_extended_ap_and_max_f1_by_hand():
    # interpolated precision [1, .5, .5, .5, .4]; recall steps [1/3, 0, 1/6, 1/2, 0] -> 1/3 + 1/12 + 1/4 = 2/3
    assert extended_ap(EXTENDED["confidence"], EXTENDED["ciou"], EXTENDED["positive"]) == pytest.approx(2 / 3)
    # F1 per threshold: .5, .4, .4, 2/3, 4/7
    assert extended_max_f1(EXTENDED["confidence"], EXTENDED["ciou"], EXTENDED["positive"]) == pytest.approx(2 / 3)
    # the wrong-place positive found in place instead: P [1, .5, 2/3, 3/4, 3/5], R [1/3, 1/3, 2/3, 1, 1]
    found = [0.8, 0.0, 0.5, 0.6, 0.0]
    # interpolated precision [1, .75, .75, .75, .6], recall steps [1/3, 0, 1/3, 1/3, 0] -> 1/3 + 1/2 = 5/6
    assert extended_ap(EXTENDED["confidence"], found, EXTENDED["positive"]) == pytest.approx(5 / 6)
    assert extended_max_f1(EXTENDED["confidence"], found, EXTENDED["positive"]) == pytest.approx(2 * 0.75 / 1.75)


def test_extended_scores_treat_tied_confidences_as_one_threshold_and_ignore_negatives_cious():
    # one threshold: TP 1, FP 1 -> precision 1/2 at recall 1
    assert extended_ap([0.5, 0.5], [0.9, 0.7], [True, False]) == pytest.approx(0.5)
    assert extended_max_f1([0.5, 0.5], [0.9, 0.0], [True, False]) == pytest.approx(2 / 3)
    # only negatives: no true positive at any threshold
    assert extended_ap([0.2, 0.1], [0, 0], [False, False]) == 0.0
    with pytest.raises(ValueError):
        extended_ap([0.5], [0.5, 0.5], [True])


def test_extended_scores_do_not_depend_on_the_order_of_the_pairs():
    order = [3, 0, 4, 2, 1]
    shuffled = {name: np.asarray(values)[order] for name, values in EXTENDED.items()}
    assert extended_ap(shuffled["confidence"], shuffled["ciou"], shuffled["positive"]) == pytest.approx(2 / 3)
    assert extended_max_f1(shuffled["confidence"], shuffled["ciou"], shuffled["positive"]) == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------- source presence, whole split

def test_top_k_hits_and_presence_scores_by_hand():
    similarity = np.array([[0.9, 0.5, 0.5], [0.1, 0.2, 0.3]])
    hits = top_k_hits(similarity, 2)
    # row 0: 0 then the tie 1 / 2 goes to the lower index; row 1: 2, 1
    np.testing.assert_array_equal(hits, [[True, True, False], [False, True, True]])
    assert top_k_hits(similarity, 10).all()
    presence = np.array([[0.7, 0.6, 0.5], [0.4, 0.3, 0.2]])
    targets = np.array([[1.0, 0.0, np.nan], [0.0, np.nan, 1.0]])
    present, absent = presence_scores(presence, targets)
    assert sorted(present) == [0.2, 0.7] and sorted(absent) == [0.4, 0.6]
    present, absent = presence_scores(presence, targets, hits)
    assert sorted(present) == [0.2, 0.7] and sorted(absent) == [0.6]
    assert cut_rates([0.2, 0.7], [0.6, 0.1], 0.5) == (0.5, 0.5)


def test_calibrate_presence_cut_on_held_out_sounds_by_hand():
    # 4 sounds, picture i sounds sound i's class only; each sound's top 2 hits: its own picture, then picture i+1
    presence = np.full((4, 4), 0.0)
    presence[np.arange(4), np.arange(4)] = [0.9, 0.8, 0.7, 0.6]
    presence[np.arange(4), (np.arange(4) + 1) % 4] = [0.5, 0.65, 0.3, 0.2]
    similarity = np.eye(4) * 2 + np.roll(np.eye(4), 1, axis=1)
    targets = np.where(np.eye(4) == 1, 1.0, 0.0)
    folds = [0, 1, 0, 1]
    calibration = calibrate_presence_cut(presence, similarity, targets, folds, ladder=(1, 2), served=2,
                                         mix_ladder=None)
    assert calibration.mix is None
    # k 1: only present pairs to calibrate on, so no held-out score. k 2: fold 0 (present .9 .7, absent .5 .3)
    # cuts at 0.6 -> fold 1's hits (present .8 .6, absent .65 .2): kept 1/2, marked 1/2 -> 0.5; fold 1 cuts
    # at 0.4 (first best J) -> fold 0's: kept 1, marked 1/2 -> 0.75; mean 0.625
    assert calibration.held_out == pytest.approx({2: 0.625})
    assert calibration.k == 2
    # all four sounds' top 2: J 0.75 first at the midpoint of 0.5 and 0.6
    assert calibration.cut == pytest.approx(0.55)


def test_calibrate_presence_cut_does_not_depend_on_the_order_of_sounds_and_pictures():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 40)
    targets = np.where(labels[:, None] == labels[None, :], 1.0, 0.0)
    presence = targets * 0.3 + rng.normal(0, 0.2, (40, 40))
    similarity = targets * 0.5 + rng.normal(0, 0.3, (40, 40))
    folds = rng.integers(0, 2, 40)
    first = calibrate_presence_cut(presence, similarity, targets, folds)
    order = rng.permutation(40)
    again = calibrate_presence_cut(presence[order][:, order], similarity[order][:, order], targets[order][:, order],
                                   folds[order])
    assert (again.cut, again.k) == pytest.approx((first.cut, first.k))
    assert again.held_out == pytest.approx(first.held_out)
    assert set(first.held_out) == set(PRESENCE_K_LADDER) and first.k == max(first.held_out, key=first.held_out.get)


def test_presence_mix_is_chosen_by_the_auroc_of_the_shown_hits_by_hand():
    # each sound's top 2 hits by similarity: sound 0 pictures 0, 1; sound 1 pictures 2, 1. Present: (0, 0), (1, 2);
    # absent: (0, 1), (1, 1). Presence alone sorts them badly (0.1 and 0.8 against 0.9 and 0.2: AUROC 1/4),
    # similarity alone perfectly (3, 3 against 2, 2)
    presence = np.array([[0.1, 0.9, 0.0], [0.0, 0.2, 0.8]])
    similarity = np.array([[3.0, 2.0, 0.0], [0.0, 2.0, 3.0]])
    targets = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    mix, tried = choose_presence_mix(presence, similarity, targets, ladder=(0.0, 0.5, 0.75), served=2)
    # z-scores over the whole matrices (mean 1/3, std 0.3727; mean 5/3, std 1.2472): at weight 0.5 the present
    # pairs score 0.222 and 1.161 against 0.894 and -0.045 (3 of 4 pairs in order); at 0.75 0.645 and 1.115
    # against 0.580 and 0.111 (all four)
    assert tried == pytest.approx({"0": 0.25, "0.5": 0.75, "0.75": 1.0})
    assert mix.weight == 0.75
    assert (mix.presence_mean, mix.presence_std) == pytest.approx((1 / 3, 0.37268), abs=1e-5)
    assert mix(presence, similarity)[0, 0] == pytest.approx(0.645, abs=1e-3)
    assert PresenceMix.from_dict(asdict(mix)) == mix and PresenceMix.from_dict(None) is None
    # a checkpoint calibrated before mixes by picture existed records no by_picture: it mixes plainly
    old = {name: value for name, value in asdict(mix).items() if name != "by_picture"}
    assert PresenceMix.from_dict(old) == mix and not mix.by_picture
    np.testing.assert_array_equal(mixed_presence(presence, similarity, None), presence)


def test_calibrated_cut_applies_to_the_mixed_scores():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, 60)
    targets = np.where(labels[:, None] == labels[None, :], 1.0, 0.0)
    presence = targets * 0.2 + rng.normal(0, 0.2, (60, 60))  # weak evidence
    similarity = targets * 0.6 + rng.normal(0, 0.2, (60, 60))  # strong evidence: the mix must lean on it
    calibration = calibrate_presence_cut(presence, similarity, targets, rng.integers(0, 2, 60))
    assert calibration.mix is not None and calibration.mix.weight > 0
    assert calibration.mix_tried[calibration.mix.name] == max(calibration.mix_tried.values())
    mixed = calibration.mix(presence, similarity)
    present, absent = presence_scores(mixed, targets, top_k_hits(similarity, calibration.k))
    assert calibration.cut == pytest.approx(presence_cut(present, absent))


def test_picture_stats_standardise_each_picture_over_the_reference_sounds_by_hand():
    # two reference sounds against three pictures: column means (0.2, 0.8, 0.5), stds (0.1, 0.1, 0) -> 1
    reference_presence = np.array([[0.1, 0.7, 0.5], [0.3, 0.9, 0.5]])
    reference_similarity = 2 * reference_presence
    stats = PictureStats.of(reference_presence, reference_similarity)
    np.testing.assert_allclose(stats.presence_mean, [0.2, 0.8, 0.5])
    np.testing.assert_allclose(stats.presence_std, [0.1, 0.1, 1.0])  # a constant column is only shifted
    presence, similarity = stats.standardise([[0.4, 0.8, 0.6]], [[0.4, 2.0, 1.0]])
    np.testing.assert_allclose(presence, [[2.0, 0.0, 0.1]])
    np.testing.assert_allclose(similarity, [[-0.0, 2.0, 0.0]], atol=1e-12)
    with pytest.raises(ValueError, match="R >= 2"):
        PictureStats.of(reference_presence[:1], reference_similarity[:1])
    with pytest.raises(ValueError, match="3 pictures"):
        stats.standardise(np.zeros((1, 2)), np.zeros((1, 2)))


def test_a_mix_by_picture_is_chosen_when_a_hub_picture_fools_the_plain_scores():
    # picture 2 is a hub: every sound scores it high, so it is each sound's second hit and, absent, outscores the
    # present first hit of sound 1 in the plain mix; over its own column it is ordinary and sorts last
    presence = np.array([[0.9, 0.1, 0.95, 0.0], [0.0, 0.6, 0.9, 0.1], [0.1, 0.0, 0.85, 0.7]])
    similarity = presence.copy()
    targets = np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    stats = PictureStats.of(presence, similarity)
    mix, tried = choose_presence_mix(presence, similarity, targets, ladder=(0.0, 0.5), served=2, pictures=stats)
    assert set(tried) == {"0", "0.5", "0 by picture", "0.5 by picture"}
    assert tried["0"] < 1.0 and tried["0 by picture"] == 1.0  # ties: by picture at weight 0 and 0.5, 0 wins
    assert mix.by_picture and mix.weight == 0.0 and mix.name == "0 by picture"
    scores = mixed_presence(presence, similarity, mix, stats)
    present, absent = presence_scores(scores, targets, top_k_hits(similarity, 2))
    assert present.min() > absent.max()
    with pytest.raises(ValueError, match="PictureStats"):
        mix(presence, similarity)
    assert PresenceMix.from_dict(asdict(mix)) == mix
    # without reference statistics only the plain ladder is tried
    assert set(choose_presence_mix(presence, similarity, targets, ladder=(0.0, 0.5), served=2)[1]) == {"0", "0.5"}
