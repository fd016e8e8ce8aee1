"""Dataset readers: every layout the README lists (VGG-SS, Flickr, AVSBench, a
plain folder) becomes a list of `Clip` records.

Readers only look at the file tree and annotation files; decoding happens later (`decode.py`) inside
DataLoader workers, so a corrupt file costs one skipped clip, not a crashed run.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import JsarError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")


class LayoutError(JsarError, ValueError):
    """The folder matches none of the layouts jsar reads."""


@dataclass
class Clip:
    """One image–audio pair and what is known about it.

    `image` and `audio` may point at the same video file. `boxes` are normalised [xmin, ymin, xmax, ymax]
    (VGG-SS); `flickr_boxes` holds each annotator's pixel boxes in a 256 x 256 frame; `mask` is a binary mask.
    """

    id: str
    image: Path
    audio: Path
    label: str | None = None
    boxes: np.ndarray | None = None
    flickr_boxes: list[np.ndarray] | None = None
    mask: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other keys of its annotation record / labels.csv row

    @property
    def gt_kind(self) -> str | None:
        if self.mask is not None:
            return "mask"
        if self.flickr_boxes is not None:
            return "soft_boxes"
        if self.boxes is not None:
            return "boxes"
        return None


@dataclass
class ClipCollection:
    """Clips read from one root, the layout recognised, and ids listed but missing on disk."""

    root: Path
    layout: str
    clips: list[Clip]
    missing: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clips)


def read_id_list(path: Path) -> list[str]:
    """Ids from a split file: one per line (`.txt`) or the first column of a CSV.

    A VGGSound-style CSV row `youtube_id,start_seconds,...` becomes `youtube_id_000030`.
    """
    ids: list[str] = []
    with open(path, newline="") as handle:
        for row in csv.reader(handle):
            if not row or not row[0].strip() or row[0].startswith("#"):
                continue
            first = row[0].strip()
            if len(row) > 1 and row[1].strip().isdigit() and not first.endswith(f"_{int(row[1]):06d}"):
                first = f"{first}_{int(row[1]):06d}"
            ids.append(first)
    if ids and ids[0].lower() in {"id", "file", "ytid", "youtube_id", "name"}:
        ids = ids[1:]
    return ids


def _resolve_split(root: Path, split: str | Path | None) -> list[str] | None:
    if split is None:
        return None
    candidate = Path(split)
    if candidate.is_file():
        return read_id_list(candidate)
    for name in (f"{split}.txt", f"{split}.csv", f"vggss_{split}.csv", f"vggss_{split}.txt"):
        if (root / name).is_file():
            return read_id_list(root / name)
    raise LayoutError(f"split {split!r} is neither a file nor one of {root}/{{{split}.txt,{split}.csv}}")


def clip_box(box: list[float]) -> np.ndarray:
    """Clip a normalised box to [0, 1]; corrupt values such as -2.88e16 or NaN become edge values."""
    values = np.nan_to_num(np.asarray(box, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(values, 0.0, 1.0)  # float64: float32 can move int(b * 224) by a pixel


ANNOTATION_KEYS = ("file", "class", "bbox")


def read_vggss_annotations(path: Path) -> dict[str, tuple[str | None, np.ndarray, dict[str, Any]]]:
    """`vggss.json`: a list of {"file", "class", "bbox": [[xmin, ymin, xmax, ymax], ...]} normalised to [0, 1].

    Any other key of a record (e.g. realsound's `silent_object_in_view`) is kept as the clip's `extra`, for
    `jsar eval localization --group-by`."""
    with open(path) as handle:
        records = json.load(handle)
    annotations: dict[str, tuple[str | None, np.ndarray, dict[str, Any]]] = {}
    for record in records:
        boxes = [clip_box(b) for b in record.get("bbox", []) if len(b) == 4]
        array = np.stack(boxes) if boxes else np.zeros((0, 4))
        extra = {key: value for key, value in record.items() if key not in ANNOTATION_KEYS}
        annotations[str(record["file"])] = (record.get("class"), array, extra)
    return annotations


def _read_labels_csv(path: Path) -> dict[str, dict[str, str]]:
    """labels.csv rows by id: `class` and any other column."""
    with open(path, newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def _first_existing(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


def read_vggss(root: Path, split: str | Path | None = None, annotations: Path | None = None) -> ClipCollection:
    """VGGSound / VGG-SS: `frames/<id>.jpg` + `audio/<id>.wav`, or `<id>/image_050.jpg` + `<id>/*.wav`."""
    root = Path(root)
    annotation_file = Path(annotations) if annotations else _first_existing(root / "vggss.json")
    known = read_vggss_annotations(annotation_file) if annotation_file else {}
    labels = _read_labels_csv(root / "labels.csv") if (root / "labels.csv").is_file() else {}
    ids = _resolve_split(root, split)
    if ids is None:
        if (root / "frames").is_dir():
            ids = sorted(p.stem for p in (root / "frames").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            ids = sorted(p.parent.name for p in root.glob("*/image_050.jpg"))
    clips, missing = [], []
    for clip_id in ids:
        image = _first_existing(*(root / "frames" / f"{clip_id}{s}" for s in IMAGE_SUFFIXES),
                                root / clip_id / "image_050.jpg")
        audio = _first_existing(*(root / "audio" / f"{clip_id}{s}" for s in AUDIO_SUFFIXES),
                                *sorted((root / clip_id).glob("*.wav")) if (root / clip_id).is_dir() else [])
        if image is None or audio is None:
            missing.append(clip_id)
            continue
        label, boxes, extra = known.get(clip_id, (None, None, {}))
        row = labels.get(clip_id, {})
        extra = {**{k: v for k, v in row.items() if k not in ("id", "class")}, **extra}
        clips.append(Clip(clip_id, image, audio, label=label or row.get("class"), boxes=boxes, extra=extra))
    return ClipCollection(root, "vggss", clips, missing)


def read_flickr_boxes(path: Path) -> list[np.ndarray]:
    """One Flickr-SoundNet XML: per top-level child, its `bbox` elements (skip the first child, then
    xmin, ymin, xmax, ymax in a 256 x 256 frame), as in the LVS / EZ-VSL evaluation code."""
    groups = []
    for child in ET.parse(path).getroot():
        boxes = []
        for element in child:
            if element.tag != "bbox":
                continue
            values = [float(c.text) for i, c in enumerate(element) if i > 0 and c.text is not None]
            if len(values) >= 4 and all(math.isfinite(v) for v in values[:4]):
                boxes.append(values[:4])
        if boxes:
            groups.append(np.asarray(boxes, dtype=np.float32))
    return groups


def read_flickr(root: Path, split: str | Path | None = None) -> ClipCollection:
    """Flickr-SoundNet test: `frames/`, `audio/`, `Annotations/<id>.xml` (consensus of 3 annotators)."""
    root = Path(root)
    ids = _resolve_split(root, split)
    if ids is None:
        ids = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    clips, missing = [], []
    for clip_id in ids:
        image = _first_existing(*(root / "frames" / f"{clip_id}{s}" for s in IMAGE_SUFFIXES))
        audio = _first_existing(*(root / "audio" / f"{clip_id}{s}" for s in AUDIO_SUFFIXES))
        annotation = root / "Annotations" / f"{clip_id}.xml"
        if image is None or audio is None:
            missing.append(clip_id)
            continue
        try:
            boxes = read_flickr_boxes(annotation) if annotation.is_file() else None
        except ET.ParseError:
            log.warning("unreadable annotation %s; clip kept without ground truth", annotation)
            boxes = None
        clips.append(Clip(clip_id, image, audio, flickr_boxes=boxes))
    return ClipCollection(root, "flickr", clips, missing)


def read_avsbench(root: Path, split: str | None = None) -> ClipCollection:
    """AVSBench S4 / MS3: every `gt_masks/.../<name>_<k>.png` with its frame `<name>_<k>.png` elsewhere under
    the root and the video's audio `<name>.wav`. The category is the mask's parent folder above the video.

    `split` ('train', 'val', 'test') keeps the videos the benchmark's metadata (`s4_meta_data.csv`,
    `ms3_meta_data.csv`: first column the video name, a `split` column) assigns to it, as AVSBench's own loaders
    do; without a metadata file, the masks under `gt_masks/<split>/`. No split: every mask under the root.
    """
    root = Path(root)
    masks = sorted(p for p in root.rglob("*.png") if "gt_masks" in p.parts)
    if split is not None:
        videos = avsbench_split_videos(root, str(split))
        if videos is not None:
            masks = [m for m in masks if m.stem.rsplit("_", 1)[0] in videos]
        else:
            masks = [m for m in masks if split in m.parts[m.parts.index("gt_masks") + 1:]]
        if not masks:
            raise LayoutError(f"{root}: no AVSBench masks of split {split!r}")
    frames = {p.name: p for p in root.rglob("*.png") if "gt_masks" not in p.parts}
    audio = {p.stem: p for s in AUDIO_SUFFIXES for p in root.rglob(f"*{s}")}
    clips, missing = [], []
    for mask in masks:
        name = mask.stem.rsplit("_", 1)[0]
        frame, wav = frames.get(mask.name), audio.get(name)
        if frame is None or wav is None:
            missing.append(mask.stem)
            continue
        parts = mask.relative_to(root).parts
        depth = parts.index("gt_masks")
        folders = [part for part in parts[depth + 1:-2] if part not in AVSBENCH_SPLITS]  # S4: split/category
        label = folders[-1] if folders else None
        clips.append(Clip(mask.stem, frame, wav, label=label, mask=mask))
    return ClipCollection(root, "avsbench", clips, missing)


AVSBENCH_SPLITS = ("train", "val", "test")


def avsbench_split_videos(root: Path, split: str) -> set[str] | None:
    """Video names of `split` from AVSBench's metadata CSVs under `root`, or None when there is none."""
    if split not in AVSBENCH_SPLITS:
        raise LayoutError(f"AVSBench split must be one of {AVSBENCH_SPLITS}, got {split!r}")
    tables = [pd.read_csv(path) for path in sorted(root.rglob("*meta_data*.csv"))]
    tables = [table for table in tables if "split" in table.columns]
    if not tables:
        return None
    return {str(name) for table in tables for name in table.loc[table["split"] == split, table.columns[0]]}


def read_folder(root: Path) -> ClipCollection:
    """A user's folder: video files, or image + audio files sharing a stem, found recursively."""
    root = Path(root)
    clips, missing = [], []
    by_stem: dict[Path, dict[str, Path]] = {}
    for path in sorted(root.rglob("*")):
        suffix = path.suffix.lower()
        if not path.is_file():
            continue
        stem = path.with_suffix("")
        if suffix in VIDEO_SUFFIXES:
            clip_id = str(stem.relative_to(root))
            clips.append(Clip(clip_id, path, path))
        elif suffix in IMAGE_SUFFIXES:
            by_stem.setdefault(stem, {})["image"] = path
        elif suffix in AUDIO_SUFFIXES:
            by_stem.setdefault(stem, {})["audio"] = path
    for stem, found in sorted(by_stem.items()):
        clip_id = str(stem.relative_to(root))
        if "image" in found and "audio" in found:
            clips.append(Clip(clip_id, found["image"], found["audio"]))
        else:
            missing.append(clip_id)
    clips.sort(key=lambda c: c.id)
    return ClipCollection(root, "folder", clips, missing)


def detect_layout(root: Path) -> str:
    """Name the layout of `root`, or raise LayoutError saying what was found and what was expected."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder")
    if (root / "Annotations").is_dir() and (root / "frames").is_dir():
        return "flickr"
    if (root / "frames").is_dir() and (root / "audio").is_dir():
        return "vggss"
    if any(root.glob("*/image_050.jpg")):
        return "vggss"
    if any(p.is_dir() for p in root.rglob("gt_masks")):
        return "avsbench"
    media = IMAGE_SUFFIXES + AUDIO_SUFFIXES + VIDEO_SUFFIXES
    if any(p.suffix.lower() in media for p in root.rglob("*")):
        return "folder"
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:10]
    raise LayoutError(
        f"{root}: no known layout (found {found or 'nothing'}); expected frames/ + audio/ (VGG-SS), "
        "frames/ + audio/ + Annotations/ (Flickr), gt_masks/ (AVSBench), or video / image+audio files"
    )


def read_dataset(root: Path, split: str | Path | None = None, annotations: Path | None = None) -> ClipCollection:
    """Read any known layout; the one entry point the commands use."""
    layout = detect_layout(root)
    if layout == "vggss":
        collection = read_vggss(root, split, annotations)
    elif layout == "flickr":
        collection = read_flickr(root, split)
    elif layout == "avsbench":
        collection = read_avsbench(root, None if split is None else str(split))
    else:
        collection = read_folder(root)
    if not collection.clips:
        raise LayoutError(f"{root}: recognised a {layout} layout but found no complete image + audio pair")
    if collection.missing:
        log.warning("%d listed clips have no image or audio file and are skipped", len(collection.missing))
    return collection
