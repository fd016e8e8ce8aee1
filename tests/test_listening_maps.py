"""Maps that listen (beyond the paper): the audio-gated matching target, off-target negatives, the fused map,
the release's inference logit scale, source presence, and scoring by scene kind."""
import json

import numpy as np
import pytest
import torch

from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.clips import read_dataset
from jsa_retrieval.collect import collect_outputs, presence_reference, reference_rows
from jsa_retrieval.config import check_config, cpu_config
from jsa_retrieval.metrics import (
    PRESENCE_K_LADDER, PRESENCE_MIX_LADDER, PresenceMix, presence_auroc, presence_cut, presence_scores,
    presence_targets, top_k_hits,
)
from jsa_retrieval.models import create_model, fuse_maps, min_max
from jsa_retrieval.slot_attention import slot_attention_weights, slot_softmax
from jsa_retrieval.synth import SynthConfig, generate
from training.losses import audio_gated_target, off_target_mass
from training.objectives import jsa_objective
from training.recipes import gate_weight
from training.trainer import train
from training.validation import calibrate_presence

from conftest import tiny_config


def listening_config(**train_settings):
    config = tiny_config(epochs=3)
    config.model.location_head = True
    config.model.localization_map = "fused"
    config.train.match_target = "audio_gated"
    for name, value in train_settings.items():
        setattr(config.train, name, value)
    return config


# ----------------------------------------------------------------------------------------------- pure maths

def test_gated_target_equals_eq8_teacher_when_the_sound_map_is_flat():
    ia = torch.softmax(torch.randn(3, 49), dim=1)
    flat = torch.full((3, 49), 0.4)
    torch.testing.assert_close(audio_gated_target(ia, flat, 0.5, 0.1), ia)


def test_gated_target_drops_the_object_the_sound_does_not_mark():
    # two objects with equal image attention; the sound's cosine map marks only the first
    ia = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    location = torch.tensor([[0.9, -0.2, -0.2, -0.2]])
    target = audio_gated_target(ia, location, margin=0.5, temperature=0.05)
    assert target.sum().item() == pytest.approx(1.0)
    assert target[0, 0] > 0.99 and target[0, 1] < 0.01


def test_off_target_mass_is_the_object_weighted_target_share():
    probability = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.2, 0.2]])
    objects = torch.tensor([[2.0, 0.0, 2.0], [1.0, 1.0, 2.0]])
    expected = ((0.9 + 0.5) / 2 + (0.2 + 0.2 + 0.4) / 4) / 2
    assert off_target_mass(probability, objects).item() == pytest.approx(expected)


def test_fused_map_keeps_the_attention_where_the_sound_map_is_positive():
    cross = torch.tensor([[[0.1, 0.4], [0.4, 0.1]]])
    location = torch.tensor([[[-0.3, 0.6], [-0.1, -0.5]]])
    fused = fuse_maps(cross, location, beta=1.0)
    # N(ca) = [[0, 1], [1, 0]]; N([c]+) = [[0, 1], [0, 0]]: only the top-right object is left
    torch.testing.assert_close(fused, torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]))
    nowhere = fuse_maps(cross, -location.abs() - 0.1, beta=1.0)
    assert torch.count_nonzero(nowhere) == 0
    torch.testing.assert_close(min_max(torch.tensor([[2.0, 4.0, 3.0]])), torch.tensor([[0.0, 1.0, 0.5]]))


def test_inference_logit_scale_flattens_the_slot_softmax():
    queries, keys = torch.randn(1, 2, 16), torch.randn(1, 9, 16)
    scaled = slot_softmax(queries, keys, logit_scale=0.1)
    expected = (keys @ queries.transpose(-1, -2) * 0.1 / 4.0).softmax(dim=-1)
    torch.testing.assert_close(scaled, expected)
    sharp = slot_attention_weights(queries, keys)[..., 0]
    flat = slot_attention_weights(queries, keys, logit_scale=0.1)[..., 0]
    assert flat.std() < sharp.std()


def test_presence_targets_auroc_and_cut_by_hand():
    targets = presence_targets(["dog", "cat", None], ["dog", "cat", "dog"], [None, "dog", "cow"])
    # audio "dog": pictures 0 and 2 sound a dog -> present, picture 1 holds a dog only as a silent one -> undecided
    np.testing.assert_array_equal(targets[0], [1.0, np.nan, 1.0])
    np.testing.assert_array_equal(targets[1], [0.0, 1.0, 0.0])
    assert np.isnan(targets[2]).all()
    assert np.isnan(presence_targets(["dog"], [None], [None])).all()  # an unlabelled picture: undecided
    assert presence_auroc([0.9, 0.8], [0.1, 0.85]) == pytest.approx(0.75)
    assert presence_cut([0.9, 0.8, 0.7], [0.1, 0.2, 0.3]) == pytest.approx(0.5)
    # one absent pair above two present ones: the best cut keeps the two highest present pairs only
    assert presence_cut([0.9, 0.8, 0.1, 0.15], [0.0, 0.05, 0.2, 0.3, 0.4, 0.5, 0.6]) == pytest.approx(0.7)


def test_split_presence_targets_read_labels_and_silent_classes_of_the_whole_split():
    from pathlib import Path

    from jsa_retrieval.clips import Clip
    from jsa_retrieval.collect import split_presence_targets

    clips = [Clip(f"c{i}", Path("x.jpg"), Path("x.wav"), label=label, extra={"silent_class": silent})
             for i, (label, silent) in enumerate([("dog", None), ("cat", "dog"), ("cow", None)])]
    presence = np.array([[0.9, 0.8, 0.3], [0.2, 0.7, 0.1], [0.4, 0.5, 0.6]])
    similarity = np.array([[1.0, 0.5, 0.9], [0.1, 1.0, 0.2], [0.3, 0.2, 1.0]])
    targets = split_presence_targets(clips)
    present, absent = presence_scores(presence, targets)
    # dog: picture 0 present, 1 undecided (a silent dog), 2 absent; cat: 1 present, 0 and 2 absent; cow: 2 present
    assert sorted(present) == [0.6, 0.7, 0.9] and sorted(absent) == [0.1, 0.2, 0.3, 0.4, 0.5]
    present, absent = presence_scores(presence, targets, top_k_hits(similarity, 2))
    # top 2 by similarity: dog -> 0, 2; cat -> 1, 2; cow -> 2, 0
    assert sorted(present) == [0.6, 0.7, 0.9] and sorted(absent) == [0.1, 0.3, 0.4]
    clips[2].label = "dog"  # a second dog picture is present for the dog sound, and the other way round
    present, absent = presence_scores(presence, split_presence_targets(clips))
    assert sorted(present) == [0.3, 0.4, 0.6, 0.7, 0.9] and sorted(absent) == [0.1, 0.2]


def test_config_check_refuses_a_fused_map_without_a_location_head():
    config = cpu_config()
    config.model.localization_map = "fused"
    with pytest.raises(ValueError, match="location_head"):
        check_config(config)
    config.model.localization_map = "nowhere"
    with pytest.raises(ValueError, match="localization_map"):
        check_config(config)


# ----------------------------------------------------------------------------------------------- the model

def test_location_map_is_the_head_cosine_and_fused_map_combines_it():
    config = listening_config()
    model = create_model(config, "jsa").eval()
    images, spectrograms = torch.randn(3, 3, 64, 64), torch.randn(3, 1, 129, 101)
    with torch.no_grad():
        image, audio = model.encode_image(images), model.encode_audio(spectrograms)
        location = model.location_map(audio, image)
        by_hand = torch.einsum("bxd,bd->bx", image.location_keys, audio.location_query).reshape(location.shape)
        torch.testing.assert_close(location, by_hand)
        assert location.abs().max() <= 1.0 + 1e-6
        fused = model.cross_map(audio, image)
        torch.testing.assert_close(fused, fuse_maps(model.attention_map(audio, image), location, 1.0))
        presence = model.presence_matrix(audio, image)
        assert presence.shape == (3, 3)
        torch.testing.assert_close(presence.diagonal(), location.flatten(1).amax(dim=1))


def test_objective_gate_weight_zero_is_eq8_and_location_term_joins_the_total():
    config = listening_config(lambda_off_target=0.5)
    model = create_model(config, "jsa")
    torch.manual_seed(0)
    out = model(torch.randn(6, 3, 64, 64), torch.randn(6, 1, 129, 101))
    gated = jsa_objective(out, config.train, gate_weight=1.0)
    plain = jsa_objective(out, config.train, gate_weight=0.0)
    config.train.match_target = "intra"
    paper = jsa_objective(out, config.train)
    assert plain["match"].item() == pytest.approx(paper["match"].item())
    assert gated["match"].item() != pytest.approx(paper["match"].item())
    assert gated["loc"].item() > 0 and 0 < gated["off_target"].item() < 1
    cfg = config.train
    expected = (gated["ctr"] + cfg.lambda_match * gated["match"] + cfg.lambda_div * gated["div"]
                + cfg.lambda_recon * gated["recon"] + cfg.lambda_location * gated["loc"]
                + cfg.lambda_off_target * gated["off_target"])
    assert gated["total"].item() == pytest.approx(expected.item())
    assert gate_weight(config, 0.5) == pytest.approx(0.25) and gate_weight(config, 5.0) == 1.0


@pytest.fixture(scope="module")
def scene_data(tmp_path_factory):
    """Tiny synthetic clips whose vggss.json also records a scene kind per clip."""
    root = tmp_path_factory.mktemp("scenes")
    generate(root, SynthConfig(n_clips=48, seed=5, image_size=64, seconds=1.0), progress=False)
    records = json.loads((root / "vggss.json").read_text())
    for number, record in enumerate(records):
        record["silent_object_in_view"] = bool(number % 2)
        record["silent_class"] = "nothing" if number % 2 else None
    (root / "vggss.json").write_text(json.dumps(records))
    return root


def test_training_with_a_location_head_lowers_its_loss_and_calibrates_presence(scene_data, tmp_path):
    config = listening_config(lambda_off_target=0.5)
    config.train.lr = 3e-3
    result = train(scene_data, config, "jsa", tmp_path / "run", progress=False)
    losses = [record["loss_loc"] for record in result.history]
    assert losses[-1] < losses[0]
    model, loaded, meta = load_model(result.best_path)
    assert loaded.model.location_head and model.location_head is not None
    # the trainer's cut is the whole val split's: calibrate-presence on val gives it again (other batch size),
    # at a depth from the ladder, and it sits between the presence scores it separates
    cut = calibrate_presence(result.best_path, scene_data, tmp_path / "calibrated.pt", "val", "cpu").cut
    assert meta["presence_cut"] == pytest.approx(cut, abs=1e-5)
    _, _, calibrated = load_model(tmp_path / "calibrated.pt")
    record = calibrated["presence_calibration"]
    assert calibrated["presence_cut"] == cut and record["whole_split"] and record["top_k"] in PRESENCE_K_LADDER
    assert set(record["held_out"]) <= set(PRESENCE_K_LADDER)
    # the cut applies to the val-chosen mix of presence and retrieval similarity, recorded beside it
    assert calibrated["presence_mix"] == pytest.approx(meta["presence_mix"], abs=1e-5)
    mix = PresenceMix.from_dict(calibrated["presence_mix"])
    names = {f"{weight:g}" for weight in PRESENCE_MIX_LADDER}
    assert mix.weight in PRESENCE_MIX_LADDER
    assert set(record["mix_tried"]) == names | {f"{name} by picture" for name in names}
    # a mix by picture keeps its reference sounds: val's, up to REFERENCE_SOUNDS of them
    reference = presence_reference(calibrated, model, loaded.data)
    assert (reference is not None) == mix.by_picture
    clips = read_dataset(scene_data, "val").clips
    outputs = collect_outputs(model, clips, loaded.data, torch.device("cpu"), 5, 0, progress=False, presence=True,
                              reference=reference)
    scores = mix(outputs.presence, outputs.audio_vectors @ outputs.image_vectors.T, outputs.pictures)
    assert scores.min() < cut < scores.max()


def test_clips_keep_extra_annotation_keys_and_scores_split_by_them(scene_data, tmp_path):
    from evaluation.localization import evaluate_localization
    from evaluation.reports import write_report

    clips = read_dataset(scene_data, "test").clips
    assert {clip.extra["silent_object_in_view"] for clip in clips} == {True, False}
    config = tiny_config()
    model = create_model(config, "jsa")
    report = evaluate_localization((model, config), scene_data, split="test", threshold="fixed",
                                   num_workers=0, group_by="silent_object_in_view")
    groups = report.groups
    assert set(groups) == {"true", "false"}
    assert groups["true"]["plain"].n + groups["false"]["plain"].n == report.columns["plain"].n
    per_clip = dict(zip(report.per_clip["ids"], report.per_clip["ciou"]["plain"]))
    silent = [per_clip[clip.id] for clip in clips if clip.extra["silent_object_in_view"] and clip.id in per_clip]
    assert groups["true"]["plain"].ap50 == pytest.approx(float(np.mean(np.asarray(silent) >= 0.5)))
    text = (write_report(report, tmp_path / "report", "scenes") / "report.md").read_text()
    assert "### By silent_object_in_view" in text


def test_whole_split_presence_does_not_depend_on_batch_size_or_clip_order(scene_data):
    """The presence matrix, its AUROCs and the calibrated cut come from every sound against every picture of the
    split: batches of 4 or 16, and the clips shuffled, give the same numbers."""
    from evaluation.scoring import score_outputs
    from training.validation import presence_calibration

    torch.manual_seed(0)
    config = listening_config()
    model = create_model(config, "jsa").eval()
    clips = read_dataset(scene_data, "test").clips + read_dataset(scene_data, "val").clips
    order = np.random.default_rng(0).permutation(len(clips))
    results = []
    for batch_size, listed in ((4, clips), (16, clips), (16, [clips[i] for i in order])):
        outputs = collect_outputs(model, listed, config.data, torch.device("cpu"), batch_size, 0, progress=False,
                                  presence=True)
        by_id = {listed[int(p)].id: row for row, p in enumerate(outputs.positions)}
        rows = [by_id[clip.id] for clip in clips]
        auroc, calibration = presence_calibration(outputs, listed)
        scores = score_outputs(listed, outputs, ("fixed",), presence_hits=5)
        results.append((outputs.presence[np.ix_(rows, rows)], auroc, calibration, scores))
    (matrix, auroc, calibration, scores), others = results[0], results[1:]
    assert scores.n_presence[0] > 0 and scores.n_presence[1] > 0 and calibration is not None
    for other_matrix, other_auroc, other_calibration, other_scores in others:
        np.testing.assert_allclose(other_matrix, matrix, atol=1e-5)
        assert other_auroc == pytest.approx(auroc, abs=1e-9)
        assert (other_calibration.cut, other_calibration.k) == pytest.approx((calibration.cut, calibration.k), abs=1e-5)
        assert other_scores.presence_auroc == pytest.approx(scores.presence_auroc, abs=1e-9)
        assert other_scores.presence_auroc_hits == pytest.approx(scores.presence_auroc_hits, abs=1e-9)
        assert other_scores.n_presence_hits == scores.n_presence_hits


def test_hit_presence_scores_the_top_k_hits_and_the_cut_by_hand():
    from evaluation.presence import hit_presence_scores

    presence = np.array([[0.9, 0.2, 0.6], [0.3, 0.8, 0.1], [0.7, 0.4, 0.5]])
    similarity = np.array([[1.0, 0.8, 0.1], [0.2, 1.0, 0.9], [0.9, 0.1, 1.0]])
    targets = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    result = hit_presence_scores(presence, similarity, targets, 2, cut=0.45)
    # top 2: sound 0 -> 0 (.9 present), 1 (.2 absent); 1 -> 1 (.8), 2 (.1); 2 -> 2 (.5), 0 (.7 absent)
    assert (result["n_present"], result["n_absent"]) == (3, 3)
    assert result["auroc"] == pytest.approx(8 / 9)  # .9 and .8 beat all three absent (.2 .1 .7), .5 beats two
    assert result["auroc_retrieval_score"] == pytest.approx(1.0)  # own pictures rank first by construction
    assert result["present_kept"] == pytest.approx(1.0) and result["absent_flagged"] == pytest.approx(2 / 3)


def test_a_mix_by_picture_scores_each_split_picture_over_the_checkpoints_reference_sounds(scene_data, tmp_path):
    """`jsar eval presence` with a checkpoint whose mix is by picture: each test picture is standardised over the
    reference sounds the checkpoint keeps (val's), not over the test split's own sounds."""
    from evaluation.presence import hit_presence, split_matrices
    from jsa_retrieval.checkpoints import checkpoint_state, read_checkpoint, save_checkpoint
    from jsa_retrieval.metrics import PictureStats, PresenceCalibration, presence_auroc, presence_scores, top_k_hits
    from jsa_retrieval.models import AudioSide
    from training.validation import presence_meta

    torch.manual_seed(0)
    config = listening_config()
    model = create_model(config, "jsa").eval()
    val = read_dataset(scene_data, "val").clips
    outputs = collect_outputs(model, val, config.data, torch.device("cpu"), 8, 0, progress=False, presence=True)
    kept = [val[int(p)] for p in outputs.positions]
    rows = reference_rows(kept, limit=5)
    assert rows.tolist() == sorted(rows.tolist()) and len(set(rows.tolist())) == 5
    assert reference_rows(kept[::-1], limit=5).tolist() == sorted(len(kept) - 1 - rows)  # chosen by id, not order
    similarity = outputs.audio_vectors @ outputs.image_vectors.T
    mix = PresenceMix.fitted(outputs.presence, similarity, 0.25, PictureStats.of(outputs.presence, similarity))
    meta = presence_meta(PresenceCalibration(cut=0.0, k=3, held_out={}, mix=mix), outputs, val)
    assert meta["presence_reference"]["vector"].shape == (len(kept), outputs.audio_vectors.shape[1])
    path = tmp_path / "by_picture.pt"
    save_checkpoint(path, checkpoint_state(model, config, meta={**meta, "presence_cut": None}))
    loaded = read_checkpoint(path)
    assert PresenceMix.from_dict(loaded["meta"]["presence_mix"]).by_picture
    result = hit_presence(path, scene_data, "test", k=3, device="cpu", num_workers=0)
    # by hand: the test split's raw matrices, each picture standardised over the kept reference sounds
    side = AudioSide.from_reference_state(loaded["meta"]["presence_reference"])
    raw, similarity, targets, pictures = split_matrices(model, config, scene_data, "test", torch.device("cpu"),
                                                        num_workers=0, reference=side)
    images = collect_outputs(model, read_dataset(scene_data, "test").clips, config.data, torch.device("cpu"), 8, 0,
                             progress=False, presence=True)
    assert pictures is not None and pictures.presence_mean.shape == (raw.shape[1],)
    expected = mix(raw, similarity, pictures)
    present, absent = presence_scores(expected, targets, top_k_hits(similarity, 3))
    assert result["auroc"] == pytest.approx(presence_auroc(present, absent), abs=1e-9)
    # and the statistics are the reference sounds', not the split's own
    assert not np.allclose(pictures.presence_mean, images.presence.mean(axis=0))
    # a checkpoint whose mix is by picture without fitting reference sounds is refused with one sentence
    for broken, message in (({**meta, "presence_reference": None}, "keeps no reference sounds"),
                            ({**meta, "presence_reference": {**meta["presence_reference"],
                                                             "vector": meta["presence_reference"]["vector"][:, :3]}},
                             "do not fit its model")):
        save_checkpoint(tmp_path / "broken.pt", checkpoint_state(model, config, meta=broken))
        with pytest.raises(ValueError, match=message):
            hit_presence(tmp_path / "broken.pt", scene_data, "test", k=3, device="cpu", num_workers=0)
