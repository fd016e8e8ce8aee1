"""`jsar data realsound`: the real-photo benchmark built from a fake package tree the test makes itself
(stamps with alpha and .ogg recordings, wallpapers): layout, boxes from the alpha, silent-object records."""
from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from jsa_retrieval.clips import read_dataset
from jsa_retrieval.realsound import SAMPLE_RATE, SECONDS, SIZE, build_realsound

# each class's stamps are one solid colour, opaque only inside a 30 x 20 rectangle of a 40 x 40 picture
COLOURS = {"bird": (230, 20, 20), "dog": (20, 20, 230), "bell": (240, 230, 20)}
CLASSES = {"bird": "birds/crow birds/owl birds/hen", "dog": "dogs/dog dogs/fox", "bell": "tools/bell"}
FOLDER_OF = {"birds": "animals/birds", "dogs": "animals/dogs", "tools": "things/tools"}


def write_stamp(base: Path, colour: tuple[int, int, int], rate: int, pitch: float = 440) -> None:
    base.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((40, 40, 4), np.uint8)
    pixels[10:30, 5:35] = (*colour, 255)
    Image.fromarray(pixels, "RGBA").save(base.with_suffix(".png"))
    tone = 0.5 * np.sin(2 * np.pi * pitch * np.arange(int(0.4 * rate)) / rate)
    soundfile.write(base.with_suffix(".ogg"), np.stack([tone, tone], 1).astype(np.float32), rate,
                    format="OGG", subtype="VORBIS")


def fake_source(root: Path) -> Path:
    stamps = root / "usr/share/tuxpaint/stamps"
    for name, keys in CLASSES.items():
        for key in keys.split():
            folder, stamp = key.split("/")
            write_stamp(stamps / FOLDER_OF[folder] / stamp, COLOURS[name], rate=22050)
    write_stamp(stamps / "animals/birds/crow_desc", (0, 0, 0), rate=44100)  # not in any class: ignored
    for name, shade in (("Meadow", (40, 160, 60)), ("Slate", (120, 120, 120))):
        images = root / "usr/share/wallpapers" / name / "contents/images"
        images.mkdir(parents=True)
        Image.new("RGB", (640, 400), shade).save(images / "640x400.jpg")
        Image.new("RGB", (64, 40), (255, 255, 255)).save(images / "64x40.jpg")  # smaller: never used
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("realsound")
    source = fake_source(root / "x")
    build_realsound(source, root / "out", n_train=8, n_val=6, per_class_test=4, classes=CLASSES, progress=False,
                    per_class_unseen=0)
    return source, root / "out"


def test_layout_is_vggss_with_16_khz_six_second_audio(built):
    _, out = built
    splits = {name: (out / f"{name}.txt").read_text().split() for name in ("train", "val", "test")}
    assert [len(ids) for ids in splits.values()] == [8, 6, 12]
    ids = [clip_id for clip_ids in splits.values() for clip_id in clip_ids]
    for clip_id in ids:
        assert Image.open(out / "frames" / f"{clip_id}.jpg").size == (SIZE, SIZE)
        samples, rate = soundfile.read(out / "audio" / f"{clip_id}.wav")
        assert rate == SAMPLE_RATE and samples.shape == (int(SAMPLE_RATE * SECONDS),)
        assert 0.85 < np.abs(samples).max() < 0.95
    with open(out / "labels.csv", newline="") as handle:
        labels = {row["id"]: row["class"] for row in csv.DictReader(handle)}
    assert list(labels) == ids and set(labels.values()) <= set(CLASSES)
    assert [labels[clip_id] for clip_id in splits["test"]] == sorted(CLASSES) * 4  # round the classes
    test = read_dataset(out, split="test").clips
    assert len(test) == 12 and all(clip.boxes is not None and len(clip.boxes) == 1 for clip in test)


def test_boxes_and_masks_come_from_the_alpha_of_the_sounding_object(built):
    _, out = built
    for record in json.loads((out / "vggss.json").read_text()):
        mask = np.asarray(Image.open(out / "masks" / f"{record['file']}.png")) > 0
        ys, xs = np.nonzero(mask)
        assert record["bbox"] == [[round(xs.min() / SIZE, 4), round(ys.min() / SIZE, 4),
                                   round((xs.max() + 1) / SIZE, 4), round((ys.max() + 1) / SIZE, 4)]]
        box_pixels = (xs.max() + 1 - xs.min()) * (ys.max() + 1 - ys.min())
        assert mask.sum() > 0.9 * box_pixels  # the opaque rectangle (edges soft after Lanczos), not the margin
        assert 1.3 < (xs.max() + 1 - xs.min()) / (ys.max() + 1 - ys.min()) < 1.7  # 30 x 20, not 40 x 40
        frame = np.asarray(Image.open(out / "frames" / f"{record['file']}.jpg"), dtype=float)
        colour = frame[mask].mean(axis=0)
        assert np.abs(colour - COLOURS[record["class"]]).max() < 40


def test_each_val_and_test_clip_records_its_silent_object_class_and_box(built):
    _, out = built
    records = json.loads((out / "vggss.json").read_text())
    assert len(records) == 18
    kinds = {record["silent_object_in_view"] for record in records}
    assert kinds == {True, False}  # both scene kinds occur
    for record in records:
        if not record["silent_object_in_view"]:
            assert record["silent_class"] is None and record["silent_bbox"] is None
            continue
        assert record["silent_class"] in CLASSES and record["silent_class"] != record["class"]
        (xmin, ymin, xmax, ymax), = record["silent_bbox"]
        assert 0 <= xmin < xmax <= 1 and 0 <= ymin < ymax <= 1
        frame = np.asarray(Image.open(out / "frames" / f"{record['file']}.jpg"), dtype=float)
        sounding = np.asarray(Image.open(out / "masks" / f"{record['file']}.png")) > 0
        inside = np.zeros_like(sounding)
        inside[round(ymin * SIZE) + 2:round(ymax * SIZE) - 2, round(xmin * SIZE) + 2:round(xmax * SIZE) - 2] = True
        visible = inside & ~sounding
        assert visible.sum() > 0.5 * inside.sum()
        colour = frame[visible].mean(axis=0)
        assert np.abs(colour - COLOURS[record["silent_class"]]).max() < 40


def test_the_same_source_and_seed_give_the_same_bytes(built, tmp_path):
    source, out = built
    again = tmp_path / "again"
    build_realsound(source, again, n_train=8, n_val=6, per_class_test=4, classes=CLASSES, progress=False,
                    per_class_unseen=0)

    def checksums(folder: Path) -> dict[str, str]:
        return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
                for path in sorted(folder.rglob("*")) if path.is_file()}

    assert checksums(again) == checksums(out)


def test_unseen_split_shows_held_out_instances_that_no_other_split_shows(built, tmp_path):
    source, _ = built
    out = tmp_path / "with_unseen"
    summary = build_realsound(source, out, n_train=30, n_val=6, per_class_test=4, classes=CLASSES, progress=False,
                              per_class_unseen=3)
    # bird keeps crow + hen (owl, the last, stays out of every split as before) and holds out hen; dog holds
    # out fox; bell has one instance and no unseen clips
    assert summary.split_counts == {"train": 30, "val": 6, "test": 12, "unseen": 6}
    unseen = (out / "unseen.txt").read_text().split()
    with open(out / "labels.csv", newline="") as handle:
        labels = {row["id"]: row["class"] for row in csv.DictReader(handle)}
    assert [labels[clip_id] for clip_id in unseen] == ["bird", "dog"] * 3
    records = {record["file"]: record for record in json.loads((out / "vggss.json").read_text())}
    assert set(unseen) <= set(records)  # annotated like test, with the scene kind
    assert read_dataset(out, split="unseen").clips[0].boxes is not None

    def recording(clip_id: str) -> np.ndarray:
        return soundfile.read(out / "audio" / f"{clip_id}.wav")[0]

    # which instance sounds is told by its recording: every stamp's tone is the same 440 Hz here, so tell the
    # instances apart by the stamp files' modification instead: rewrite the held-out ones with another pitch
    held_out = {"bird": "animals/birds/hen", "dog": "animals/dogs/fox"}
    for name, key in held_out.items():
        write_stamp(source / "usr/share/tuxpaint/stamps" / key, COLOURS[name], rate=22050, pitch=1760)
    again = tmp_path / "again"
    build_realsound(source, again, n_train=30, n_val=6, per_class_test=4, classes=CLASSES, progress=False,
                    per_class_unseen=3)
    for name, key in held_out.items():  # restore the shared source for the other tests
        write_stamp(source / "usr/share/tuxpaint/stamps" / key, COLOURS[name], rate=22050)

    def pitch(clip_id: str) -> float:
        samples = soundfile.read(again / "audio" / f"{clip_id}.wav")[0]
        spectrum = np.abs(np.fft.rfft(samples))
        return float(np.argmax(spectrum) * SAMPLE_RATE / len(samples))

    splits = {name: (again / f"{name}.txt").read_text().split() for name in ("train", "val", "test", "unseen")}
    with open(again / "labels.csv", newline="") as handle:
        labels = {row["id"]: row["class"] for row in csv.DictReader(handle)}
    for split, ids in splits.items():
        for clip_id in ids:
            if labels[clip_id] in held_out:
                assert (abs(pitch(clip_id) - 1760) < 20) == (split == "unseen"), (split, clip_id)


def test_cli_without_the_packages_says_in_one_line_how_to_get_them(tmp_path):
    for extra in ([], ["--source", str(tmp_path / "nowhere")]):
        result = subprocess.run([sys.executable, "-m", "jsa_retrieval.cli", "data", "realsound",
                                 str(tmp_path / "out"), *extra], capture_output=True, text=True, timeout=120)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0
        assert "apt-get download tuxpaint-stamps-default plasma-workspace-wallpapers" in result.stderr
        assert "dpkg -x" in result.stderr


def test_cli_help_names_the_packages_and_gives_an_example():
    from click.testing import CliRunner

    from jsa_retrieval.cli import cli

    result = CliRunner().invoke(cli, ["data", "realsound", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "jsar data realsound" in result.output
    assert "tuxpaint-stamps-default" in result.output and "dpkg -x" in result.output
