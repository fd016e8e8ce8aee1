"""realsound: a real-photo, real-recording benchmark built from two Debian packages (`jsar data realsound`).

Each clip is a real photo of an object (a Tux Paint stamp, cut out by its alpha channel) pasted on a real
landscape photo (a Plasma wallpaper), paired with that object's real recording. Half the clips also show a silent
object of another class, half add a quieter off-screen sound of another class, all add noise. Boxes and masks
come from the object's alpha, so localization is scored exactly. 16 classes; chance Recall@1 is 1/16.

Written in the VGG-SS layout jsar reads as is:
  frames/<id>.jpg  audio/<id>.wav (16 kHz mono, 6 s)  masks/<id>.png (the sounding object)
  train.txt  val.txt  test.txt   split lists (2,200 / 200 / 480 clips by default, test 30 per class)
  unseen.txt                     new instances of known classes (30 per class by default): for every class whose
                                 pool keeps at least two instances, the pool's last instance (photo and
                                 recording) is held out of train/val/test and shown only here
  vggss.json                     val, test and unseen: normalised box of the sounding object, and the scene kind:
                                 silent_object_in_view (bool), silent_class, silent_bbox (the silent object's
                                 box from its alpha, [[xmin, ymin, xmax, ymax]]; null without one)
  labels.csv                     id,class of every clip

With `per_class_unseen=0` the same packages, seed and settings give the same clips as the builder this was ported
from (shared/realsound/build.py), byte for byte; vggss.json differs only by the added `silent_bbox`. With an unseen
split the held-out instances leave the train/val/test pools, so those clips differ from that builder's.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image
from scipy.signal import resample_poly
from tqdm import tqdm

from .errors import JsarError

CLASSES = {
    "wild_bird": "birds/blackbird birds/crow birds/cuckoo birds/lark birds/quetzal birds/tucan birds/seagull "
                 "birds/vulture birds/heron_greatblue_flying birds/penguin birds/owl",
    "poultry": "birds/hen birds/rooster birds/turkey birds/duck birds/drake birds/gander",
    "cattle": "bovines/cow bovines/cow_white bovines/bull bovines/bison",
    "sheep_goat": "bovines/sheep bovines/sheep_lamb bovines/goat bovines/ram",
    "pig": "mammals/pig mammals/pig_golden mammals/pig_golden2",
    "equine": "equines/horse equines/donkey equines/zebra",
    "canine": "dogs/dog dogs/fox",
    "big_cat": "cats/lion cats/tiger",
    "primate": "apes/chimp apes/gorilla",
    "sea_mammal": "aquatic/dolphin aquatic/orca aquatic/whale aquatic/sea_lion",
    "insect_frog": "insects/hornet insects/grasshopper insects/xanthia insects/bee amphibians/frog",
    "deer_camel": "deer/deer deer/doe deer/caribou camel/camel camel/dromedary",
    "small_mammal": "rodents/mouse rodents/rabbit rodents/squirrel mammals/ferret marsupials/koala mammals/badger",
    "large_mammal": "mammals/elephant mammals/hippopotamus bears/bear",
    "instrument": "string/cello string/violin wind/bassoon percussion/cymbal_crash percussion/drum_tomtom_floor "
                  "percussion/drumkit",
    "tool": "tools/hammer tools/mallet_metal tools/saw arttools/scissors_small_open household/kettle "
            "household/toilet hobbies/camera_35mm household/rubberduck",
}
SAMPLE_RATE, SECONDS, SIZE = 16000, 6.0, 256
STAMPS_DIR, WALLPAPERS_DIR = "usr/share/tuxpaint/stamps", "usr/share/wallpapers"
HOW_TO_GET = ("apt-get download tuxpaint-stamps-default plasma-workspace-wallpapers && "
              "for f in *.deb; do dpkg -x \"$f\" x; done, then pass --source x")


class SourceMissing(JsarError, FileNotFoundError):
    """The extracted Debian packages realsound is built from are not where they were said to be."""


@dataclass
class RealsoundSummary:
    out_dir: Path
    split_counts: dict[str, int]
    classes: int
    backgrounds: int
    with_silent_object: int = 0
    ids: dict[str, list[str]] = field(default_factory=dict, repr=False)


def find_stamps(root: Path) -> dict[str, str]:
    """'<folder>/<name>' -> path without suffix, for every stamp PNG that has an .ogg recording beside it."""
    index = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".png"):
                key = os.path.basename(folder) + "/" + name[:-4]
                if name[:-4] + ".ogg" in files:
                    index[key] = os.path.join(folder, name[:-4])
    return index


def load_sound(base: str) -> np.ndarray:
    """A stamp's recording: mono, resampled to 16 kHz (polyphase), peak-normalised."""
    samples, rate = soundfile.read(base + ".ogg", dtype="float32", always_2d=True)
    samples = samples.mean(1)
    divisor = np.gcd(rate, SAMPLE_RATE)
    samples = resample_poly(samples, SAMPLE_RATE // divisor, rate // divisor).astype(np.float32)
    return samples / (np.abs(samples).max() + 1e-6)


def loop_to(samples: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """The recording repeated with random gains and gaps from a random start until `length` samples."""
    out = np.zeros(length, np.float32)
    position = int(rng.integers(0, max(1, SAMPLE_RATE // 2)))
    while position < length:
        segment = samples[: length - position] * rng.uniform(0.6, 1.0)
        out[position: position + len(segment)] += segment
        position += len(samples) + int(rng.integers(SAMPLE_RATE // 10, SAMPLE_RATE))
    return out


def overlaps(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Boxes overlap by more than a tenth of the smaller one."""
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return width * height > 0.1 * min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def paste(canvas: Image.Image, stamp: Image.Image, rng: np.random.Generator,
          avoid: tuple[int, ...] | None = None) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Paste `stamp` scaled to 35-60 % of the canvas, maybe mirrored, where it does not overlap `avoid` (20 tries);
    returns its pixel box and its (SIZE, SIZE) alpha mask on the canvas."""
    width, height = stamp.size
    scale = rng.uniform(0.35, 0.6) * SIZE / max(width, height)
    stamp = stamp.resize((max(8, int(width * scale)), max(8, int(height * scale))), Image.Resampling.LANCZOS)
    if rng.random() < 0.5:
        stamp = stamp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for _ in range(20):
        x = int(rng.integers(0, SIZE - stamp.size[0] + 1))
        y = int(rng.integers(0, SIZE - stamp.size[1] + 1))
        box = (x, y, x + stamp.size[0], y + stamp.size[1])
        if avoid is None or not overlaps(box, avoid):
            break
    canvas.alpha_composite(stamp, (x, y))
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y: y + stamp.size[1], x: x + stamp.size[0]] = np.asarray(stamp)[..., 3] > 128
    return box, mask


def alpha_box(mask: np.ndarray) -> list[float]:
    """Normalised [xmin, ymin, xmax, ymax] of a mask's pixels, rounded to 4 decimals."""
    ys, xs = np.nonzero(mask)
    return [round(xs.min() / SIZE, 4), round(ys.min() / SIZE, 4), round((xs.max() + 1) / SIZE, 4),
            round((ys.max() + 1) / SIZE, 4)]


def wallpapers(root: Path) -> list[Image.Image]:
    """The largest picture of each Plasma wallpaper, in name order."""
    best: dict[str, str] = {}
    base = os.path.join(root, WALLPAPERS_DIR)
    for folder, _, files in os.walk(base):
        for name in files:
            if name.lower().endswith((".jpg", ".jpeg", ".png")) and "contents/images" in folder:
                wallpaper = os.path.relpath(folder, base).split(os.sep)[0]
                path = os.path.join(folder, name)
                if wallpaper not in best or os.path.getsize(path) > os.path.getsize(best[wallpaper]):
                    best[wallpaper] = path
    return [Image.open(best[name]).convert("RGB") for name in sorted(best)]


def _check_source(source: Path, stamps: dict[str, str], classes: dict[str, str]) -> None:
    """One-line errors for a source folder that is not the extracted packages."""
    if not (source / STAMPS_DIR).is_dir() or not (source / WALLPAPERS_DIR).is_dir():
        raise SourceMissing(f"{source} holds no extracted {STAMPS_DIR} and {WALLPAPERS_DIR}; get them with: "
                            f"{HOW_TO_GET}")
    missing = [key for names in classes.values() for key in names.split() if key not in stamps]
    if missing:
        raise SourceMissing(f"{source}: {len(missing)} stamp(s) with a recording are missing, e.g. {missing[0]} "
                            f"(.png + .ogg under {STAMPS_DIR}); is it tuxpaint-stamps-default 2022.06.04?")


def build_realsound(source: Path, out_dir: Path, n_train: int = 2200, n_val: int = 200, per_class_test: int = 30,
                    seed: int = 1, classes: dict[str, str] | None = None, progress: bool = True,
                    per_class_unseen: int = 30) -> RealsoundSummary:
    """Write realsound to `out_dir` from `source`, the folder the two .deb packages were extracted into.

    `per_class_unseen` > 0 holds out one instance of every class whose pool keeps two or more (the pool's last)
    and writes that many `unseen` clips per such class: the photo and the recording a user brings that training
    never saw, in the same kinds of scene."""
    source, out_dir = Path(source), Path(out_dir)
    classes = CLASSES if classes is None else classes
    stamps = find_stamps(source / STAMPS_DIR)
    _check_source(source, stamps, classes)
    backgrounds = wallpapers(source)
    if not backgrounds:
        raise SourceMissing(f"{source / WALLPAPERS_DIR} holds no wallpaper pictures; get them with: {HOW_TO_GET}")
    rng = np.random.default_rng(seed)
    pool = {}
    for name, keys in classes.items():
        bases = sorted(stamps[key] for key in keys.split())
        pool[name] = bases[:-1] if len(bases) >= 3 else bases  # the last instance of a class stays out of this set
    held_out = {name: members.pop() for name, members in pool.items() if per_class_unseen > 0 and len(members) >= 2}
    bases = [base for members in pool.values() for base in members] + list(held_out.values())
    images = {base: Image.open(base + ".png").convert("RGBA") for base in bases}
    sounds = {base: load_sound(base) for base in tqdm(bases, desc="realsound: recordings", disable=not progress,
                                                      leave=False)}
    for sub in ("frames", "audio", "masks"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    names = sorted(classes)
    labels: list[tuple[str, str]] = []
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    if held_out:
        splits["unseen"] = []
    records: list[dict] = []
    silent = 0

    def make(index: int, split: str, name: str) -> None:
        nonlocal silent
        target = held_out[name] if split == "unseen" else pool[name][int(rng.integers(len(pool[name])))]
        background = backgrounds[int(rng.integers(len(backgrounds)))]
        side = int(rng.uniform(0.4, 1.0) * min(background.size))
        x0 = int(rng.integers(0, background.size[0] - side + 1))
        y0 = int(rng.integers(0, background.size[1] - side + 1))
        canvas = background.crop((x0, y0, x0 + side, y0 + side)).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        canvas = canvas.convert("RGBA")
        others = [other for other in names if other != name]
        silent_box = silent_class = silent_mask = None
        if rng.random() < 0.5:
            silent_class = others[int(rng.integers(len(others)))]
            silent_stamp = images[pool[silent_class][int(rng.integers(len(pool[silent_class])))]]
            silent_box, silent_mask = paste(canvas, silent_stamp, rng)
        _, mask = paste(canvas, images[target], rng, avoid=silent_box)
        length = int(SAMPLE_RATE * SECONDS)
        audio = loop_to(sounds[target], length, rng)
        if rng.random() < 0.5:
            off_class = others[int(rng.integers(len(others)))]
            off_screen = loop_to(sounds[pool[off_class][int(rng.integers(len(pool[off_class])))]], length, rng)
            audio += off_screen * 10 ** (-rng.uniform(6, 14) / 20)
        audio += rng.standard_normal(length).astype(np.float32) * 10 ** (-rng.uniform(26, 36) / 20)
        audio = 0.9 * audio / (np.abs(audio).max() + 1e-6)
        clip_id = f"rs_{split}_{index:05d}"
        canvas.convert("RGB").save(out_dir / "frames" / f"{clip_id}.jpg", quality=92)
        soundfile.write(out_dir / "audio" / f"{clip_id}.wav", audio, SAMPLE_RATE, subtype="PCM_16")
        Image.fromarray((mask * 255).astype(np.uint8)).save(out_dir / "masks" / f"{clip_id}.png")
        labels.append((clip_id, name))
        splits[split].append(clip_id)
        silent += silent_box is not None
        if split != "train":
            # extra keys (readers of the VGG-SS layout ignore them): the scene kind, for evaluation by group
            records.append({"file": clip_id, "class": name, "bbox": [alpha_box(mask)],
                            "silent_object_in_view": silent_box is not None, "silent_class": silent_class,
                            "silent_bbox": None if silent_mask is None else [alpha_box(silent_mask)]})

    # train draws each clip's class at random; val and test go round the classes in order
    plan = ([("train", index) for index in range(n_train)] + [("val", index) for index in range(n_val)]
            + [("test", index) for index in range(per_class_test * len(names))])
    unseen_names = sorted(held_out)
    plan += [("unseen", index) for index in range(per_class_unseen * len(unseen_names))]
    for split, index in tqdm(plan, desc="realsound: clips", disable=not progress, leave=False):
        in_turn = unseen_names if split == "unseen" else names
        make(index, split, names[int(rng.integers(len(names)))] if split == "train" else in_turn[index % len(in_turn)])
    for split, ids in splits.items():
        (out_dir / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (out_dir / "vggss.json").write_text(json.dumps(records))
    with open(out_dir / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "class"])
        writer.writerows(labels)
    return RealsoundSummary(out_dir, {split: len(ids) for split, ids in splits.items()}, len(names),
                            len(backgrounds), silent, splits)
