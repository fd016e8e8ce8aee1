"""The synthetic benchmark: reproducible files, exact annotations, the configured difficulty, audible classes."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from jsa_retrieval.clips import read_vggss
from jsa_retrieval.synth import CLASS_NAMES, SynthConfig, SynthSummary, class_sound, generate

SMALL = SynthConfig(n_clips=30, seed=0, image_size=64, seconds=1.0, num_classes=12)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return generate(tmp_path_factory.mktemp("synth_a"), SMALL, progress=False)


@pytest.fixture(scope="module")
def metadata(small: SynthSummary) -> dict:
    return json.loads(small.metadata.read_text())


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_serial_or_parallel(small: SynthSummary, tmp_path: Path) -> None:
    again = generate(tmp_path / "again", SMALL, progress=False, workers=2)
    first, second = _file_bytes(small.out_dir), _file_bytes(again.out_dir)
    assert len(first) == 3 * 30 + 6
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_different_seed_gives_different_files(small: SynthSummary, tmp_path: Path) -> None:
    other = generate(tmp_path / "other", dataclasses.replace(SMALL, seed=1), progress=False)
    first, second = _file_bytes(small.out_dir), _file_bytes(other.out_dir)
    media = [name for name in first if name.startswith(("frames", "audio"))]
    assert all(first[name] != second[name] for name in media)
    assert (small.out_dir / "labels.csv").read_text() != (other.out_dir / "labels.csv").read_text()


def test_bbox_is_the_tight_box_of_the_binary_mask(small: SynthSummary) -> None:
    records = json.loads(small.annotations.read_text())
    assert len(records) == 30
    for record in records:
        (box,) = record["bbox"]
        assert 0.0 <= box[0] < box[2] <= 1.0 and 0.0 <= box[1] < box[3] <= 1.0
        mask = np.asarray(Image.open(small.masks_dir / f"{record['file']}.png"))
        assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
        assert 0.005 < (mask > 0).mean() < 0.4
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        from_mask = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]) / 64
        np.testing.assert_allclose(box, from_mask, atol=2 / 64)
        # VGG-SS ground truth rasterised as the metrics do (int(clip(b, 0, 1) * 224) slices) covers exactly the mask's box.
        x0, y0, x1, y1 = (int(v * 64) for v in box)
        assert mask[:y0].max(initial=0) == 0 and mask[y1:].max(initial=0) == 0
        assert mask[:, :x0].max(initial=0) == 0 and mask[:, x1:].max(initial=0) == 0


def test_labels_csv_and_annotations_agree_on_known_classes(small: SynthSummary) -> None:
    with open(small.labels, newline="") as handle:
        labels = {row["id"]: row["class"] for row in csv.DictReader(handle)}
    annotated = {r["file"]: r["class"] for r in json.loads(small.annotations.read_text())}
    assert labels == annotated
    assert set(labels) == {f"synth_{i:06d}" for i in range(30)}
    assert set(labels.values()) <= set(CLASS_NAMES)
    assert sum(small.class_counts.values()) == 30


def test_splits_are_disjoint_cover_every_id_and_follow_fractions(small: SynthSummary) -> None:
    splits = {name: path.read_text().split() for name, path in small.split_files.items()}
    all_ids = [i for ids in splits.values() for i in ids]
    assert len(all_ids) == len(set(all_ids)) == 30
    assert len(splits["test"]) == round(30 * SMALL.test_fraction)
    assert len(splits["val"]) == round(30 * SMALL.val_fraction)
    assert small.split_counts == {name: len(ids) for name, ids in splits.items()}


def test_metadata_keeps_config_and_three_distinct_classes_per_clip(metadata: dict) -> None:
    assert SynthConfig(**metadata["config"]) == SMALL
    assert metadata["class_names"] == list(CLASS_NAMES[:12])
    for clip in metadata["clips"]:
        if clip["distractor"] is not None:
            assert clip["distractor"] != clip["class"] and clip["distractor_bbox"] is not None
        if clip["offscreen"] is not None:
            assert clip["offscreen"] not in {clip["class"], clip["distractor"]}
            assert 8.0 <= clip["offscreen_db"] <= 14.0
        else:
            assert clip["offscreen_db"] is None
        assert clip["split"] in {"train", "val", "test"}


def test_audio_is_pcm16_at_the_configured_rate_and_length_not_silent_not_clipped(small: SynthSummary) -> None:
    for path in sorted(small.audio_dir.glob("*.wav")):
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        samples, _ = soundfile.read(path, dtype="float32")
        assert samples.shape == (16000,)
        assert 0.2 < np.abs(samples).max() <= 1.0
        assert np.sqrt(np.mean(samples**2)) > 0.02


def test_frames_are_rgb_at_the_configured_size(small: SynthSummary) -> None:
    frames = sorted(small.frames_dir.glob("*.jpg"))
    assert len(frames) == 30
    for path in frames:
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (64, 64)


def test_vggss_reader_loads_the_test_split_unchanged(small: SynthSummary) -> None:
    collection = read_vggss(small.out_dir, split="test")
    expected = small.split_files["test"].read_text().split()
    assert [clip.id for clip in collection.clips] == expected and not collection.missing
    annotated = {r["file"]: r for r in json.loads(small.annotations.read_text())}
    for clip in collection.clips:
        assert clip.label == annotated[clip.id]["class"]
        np.testing.assert_allclose(clip.boxes, annotated[clip.id]["bbox"], atol=1e-6)


def test_distractor_and_offscreen_fractions_follow_config(tmp_path: Path) -> None:
    summary = generate(tmp_path / "many", SynthConfig(n_clips=200, image_size=32, seconds=0.5), progress=False)
    assert abs(summary.n_with_distractor / 200 - 0.5) < 0.1
    assert abs(summary.n_with_offscreen / 200 - 0.5) < 0.1
    assert min(summary.class_counts.values()) > 0
    clips = json.loads(summary.metadata.read_text())["clips"]
    # The silent object is about as large as the sounding one, so size alone does not give the answer away.
    ratios = [_box_area(c["distractor_bbox"]) / _box_area(c["bbox"]) for c in clips if c["distractor"]]
    assert 0.7 < float(np.median(ratios)) < 1.5
    plain = generate(tmp_path / "plain", SynthConfig(n_clips=12, image_size=32, seconds=0.5, distractor_prob=0.0,
                                                     offscreen_prob=0.0), progress=False)
    assert plain.n_with_distractor == plain.n_with_offscreen == 0


def _box_area(box: list[float]) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _log_band_spectrum(signal: np.ndarray, sample_rate: int) -> np.ndarray:
    power = np.abs(np.fft.rfft(signal * np.hanning(signal.size))) ** 2
    freqs = np.fft.rfftfreq(signal.size, 1 / sample_rate)
    edges = np.geomspace(40, 0.48 * sample_rate, 33)
    return np.log(np.array([power[(freqs >= lo) & (freqs < hi)].mean() for lo, hi in zip(edges[:-1], edges[1:])]))


def test_classes_are_separable_by_sound_with_nearest_centroid() -> None:
    features, labels = [], []
    for class_index in range(len(CLASS_NAMES)):
        for example in range(8):
            rng = np.random.default_rng([class_index, example])
            features.append(_log_band_spectrum(class_sound(class_index, rng, 16000, 16000), 16000))
            labels.append(class_index)
    features, labels = np.array(features), np.array(labels)
    train = np.arange(len(labels)) % 8 < 5
    centroids = np.stack([features[train & (labels == c)].mean(0) for c in range(len(CLASS_NAMES))])
    distances = ((features[~train][:, None] - centroids[None]) ** 2).sum(-1)
    accuracy = (distances.argmin(1) == labels[~train]).mean()
    assert accuracy >= 0.8, f"nearest-centroid accuracy {accuracy:.2f}; chance is {1 / len(CLASS_NAMES):.2f}"


def test_config_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError):
        SynthConfig(num_classes=len(CLASS_NAMES) + 1)
    with pytest.raises(ValueError):
        SynthConfig(num_classes=2)
    with pytest.raises(ValueError):
        SynthConfig(val_fraction=0.6, test_fraction=0.5)
