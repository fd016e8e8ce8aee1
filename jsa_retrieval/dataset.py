"""torch Datasets over `Clip` records, and DataLoader settings that keep decoding off the critical path.

A clip that fails to decode does not stop the run: the dataset returns a failure marker, the collate
function drops it from the batch and lists it under `batch["failed"]`, and the caller counts and reports
(`FailureLog`). This works across worker processes because the failure travels with the batch.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .clips import Clip
from .config import DataConfig
from .decode import DecodeError, load_audio, load_image
from .transforms import crop_or_tile, image_transform, log_spectrogram, normalise_pixels, squash_image


def load_image_tensor(path: Path, config: DataConfig, train: bool = False) -> torch.Tensor:
    """(3, S, S) normalised image tensor; raises DecodeError on a broken file."""
    return image_transform(config, train)(load_image(path))


def load_audio_window(path: Path, config: DataConfig, train: bool = False, rng: random.Random | None = None,
                      shift_seconds: float | None = None) -> np.ndarray:
    """(num_samples,) float32: the centred window of the clip's audio (the paper's middle 5 s).

    In training the window moves by up to `shift_seconds` either way (None: config.train_audio_jitter);
    math.inf lets it start anywhere in the clip, the alignment baseline's time-shift augmentation.
    """
    samples = load_audio(path, config.sample_rate)
    offset = None
    spare = samples.size - config.num_samples
    shift = config.train_audio_jitter if shift_seconds is None else shift_seconds
    if train and spare > 0 and shift > 0:
        centre = spare // 2
        reach = int(min(spare // 2, shift * config.sample_rate))  # math.inf: the whole clip
        offset = centre + (rng or random).randint(-reach, reach)
    return crop_or_tile(samples, config.num_samples, offset)


def load_spectrogram(path: Path, config: DataConfig, train: bool = False, rng: random.Random | None = None,
                     shift_seconds: float | None = None) -> torch.Tensor:
    """(1, F, T) log spectrogram of the window `load_audio_window` takes."""
    return log_spectrogram(load_audio_window(path, config, train, rng, shift_seconds), config)


def load_pair(clip: Clip, config: DataConfig, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Image tensor and spectrogram of one clip; raises DecodeError on a broken file."""
    return load_image_tensor(clip.image, config, train), load_spectrogram(clip.audio, config, train)


class ClipDataset(Dataset):
    """Decoded (image, spectrogram) pairs.

    `views` > 1 adds independently augmented copies as `image_1`, `audio_1`, ... . `partners` (N, 2) adds one
    more view whose image comes from clip partners[i, 0] and whose audio from clip partners[i, 1]: the
    conceptually similar positives of the alignment baseline. `audio_shift` is the training window's reach in
    seconds around the centre (None: config.train_audio_jitter; math.inf: anywhere).

    `image_features`, a frozen image trunk's output for each clip (`CachedImageFeatures`, or a bare (N, V, C, h, w)
    tensor of views), replaces decoding the image: "image" is then those features (see
    `CachedImageFeatures.images`). A clip the cache has no features for fails as an undecodable image does.
    `audio_features` (`CachedAudioFeatures`) likewise replaces decoding the audio with a frozen audio trunk's
    output; its jitter is the cache's (whole tokens within the wide window), whatever `audio_shift` says.
    """

    def __init__(self, clips: Sequence[Clip], config: DataConfig, train: bool = False, views: int = 1,
                 partners: np.ndarray | None = None, audio_shift: float | None = None,
                 image_features: CachedImageFeatures | torch.Tensor | None = None,
                 audio_features: CachedAudioFeatures | None = None):
        self.clips = list(clips)
        self.config = config
        self.train = train
        self.views = views
        self.partners = partners
        self.audio_shift = audio_shift
        if image_features is not None and not isinstance(image_features, CachedImageFeatures):
            image_features = CachedImageFeatures(image_features)
        if image_features is not None and len(image_features) != len(self.clips):
            raise ValueError(f"{len(image_features)} cached image features for {len(self.clips)} clips")
        self.image_features = image_features
        if audio_features is not None and len(audio_features) != len(self.clips):
            raise ValueError(f"{len(audio_features)} cached audio features for {len(self.clips)} clips")
        self.audio_features = audio_features

    def __len__(self) -> int:
        return len(self.clips)

    def _images(self, index: int, count: int) -> list[torch.Tensor]:
        """`count` independently augmented images of clip `index` (decoded, or its cached trunk features)."""
        if self.image_features is None:
            return [load_image_tensor(self.clips[index].image, self.config, self.train) for _ in range(count)]
        return self.image_features.images(index, count, self.train)

    def _audio(self, index: int) -> torch.Tensor:
        if self.audio_features is not None:
            return self.audio_features.audio(index, self.train)
        return load_spectrogram(self.clips[index].audio, self.config, self.train, shift_seconds=self.audio_shift)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        try:
            pairs = [(image, self._audio(index)) for image in self._images(index, self.views)]
            if self.partners is not None:
                image_partner, audio_partner = (int(j) for j in self.partners[index])
                pairs.append((self._images(image_partner, 1)[0], self._audio(audio_partner)))
        except DecodeError as error:
            return {"failed": (clip.id, str(error)), "index": index}
        item: dict[str, Any] = {"index": index, "image": pairs[0][0], "audio": pairs[0][1]}
        for view, (image, audio) in enumerate(pairs[1:], start=1):
            item[f"image_{view}"], item[f"audio_{view}"] = image, audio
        return item


class CachedImageFeatures:
    """A frozen image trunk's output for each clip, in place of its decoded image (training's trunk cache).

    views: (N, V, C, h, w), view 0 the test transform and view 1 its mirror image. crops: (N, K, C, h, w) or None,
    K random training crops (resize, random crop, flip) per clip, so that two views of a clip differ as two
    augmentations of its image would. failures: position -> reason for clips whose image could not be decoded;
    they have no features, and reading one raises DecodeError as decoding the image would.

    The arrays may be tensors, arrays, or memory-mapped .npy files (np.load(mmap_mode="r")). A mapped file's rows
    are read with pread: the file's pages then stay in the kernel's page cache, shared and reclaimable, instead of
    piling up in this process's RSS as indexing the map does (3.8 GiB after one epoch over 20k clips,
    evaluation.probes.bench_trunk_cache). A mapped file pickles as its path, so a worker process opens the file
    instead of receiving a copy of it.
    """

    def __init__(self, views: np.ndarray | torch.Tensor, crops: np.ndarray | None = None,
                 failures: dict[int, str] | None = None):
        if crops is not None and len(crops) != len(views):
            raise ValueError(f"{len(crops)} cached crops for {len(views)} clips")
        self.views, self.crops, self.failures = views, crops, dict(failures or {})
        self._files: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.views)

    def images(self, index: int, count: int, train: bool) -> list[torch.Tensor]:
        """`count` float32 (C, h, w) features of clip `index`. Test: view 0. Training: distinct random crops when
        crops are cached (drawn with replacement only past K), else for each a random one of the views."""
        if index in self.failures:
            raise DecodeError(self.failures[index])
        if not train:
            return [self._row(self.views, index, 0)] * count
        if self.crops is not None:
            crops = self.crops.shape[1]
            picks = random.sample(range(crops), count) if count <= crops else [random.randrange(crops)
                                                                               for _ in range(count)]
            return [self._row(self.crops, index, pick) for pick in picks]
        return [self._row(self.views, index, random.randrange(self.views.shape[1])) for _ in range(count)]

    def _row(self, array: np.ndarray | torch.Tensor, index: int, view: int) -> torch.Tensor:
        """array[index, view] as a float32 tensor of its own."""
        if isinstance(array, torch.Tensor):
            return array[index, view].float()
        if not (isinstance(array, np.memmap) and array.filename is not None):
            return torch.from_numpy(np.array(array[index, view], dtype=np.float32))
        if array.filename not in self._files:
            self._files[array.filename] = open(array.filename, "rb")
        shape = array.shape[2:]
        size = int(np.prod(shape)) * array.itemsize
        data = os.pread(self._files[array.filename].fileno(), size,
                        array.offset + (index * array.shape[1] + view) * size)
        return torch.from_numpy(np.frombuffer(data, dtype=array.dtype).reshape(shape).astype(np.float32))

    def __getstate__(self) -> dict[str, Any]:
        return {"views": _portable(self.views), "crops": _portable(self.crops), "failures": self.failures}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.views, self.crops = _unportable(state["views"]), _unportable(state["crops"])
        self.failures, self._files = state["failures"], {}


class CachedAudioFeatures:
    """A frozen audio trunk's output for each clip over a wide window (the centred window plus the training jitter
    on each side), in place of its decoded audio (training's audio trunk cache).

    wide: (N, C, f, T_wide). `audio(index, train)` is a run of `tokens` time steps, (C, f, tokens): the centre
    run in test, a random run in training (the jitter, by whole tokens). failures: position -> reason for clips
    whose audio could not be decoded; reading one raises DecodeError as decoding would. Read row by row as
    `CachedImageFeatures` reads its views (pread on a mapped file; pickles as its path).
    """

    def __init__(self, wide: np.ndarray | torch.Tensor, tokens: int, failures: dict[int, str] | None = None):
        if wide.shape[-1] < tokens:
            raise ValueError(f"cached audio features hold {wide.shape[-1]} time steps, fewer than {tokens}")
        self.wide, self.tokens = wide, tokens
        self.rows = CachedImageFeatures(wide[:, None] if isinstance(wide, torch.Tensor) else _with_view_axis(wide),
                                        failures=failures)

    def __getstate__(self) -> dict[str, Any]:
        return {"wide": _portable(self.wide), "tokens": self.tokens, "failures": self.failures}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(_unportable(state["wide"]), state["tokens"], state["failures"])

    @property
    def failures(self) -> dict[int, str]:
        return self.rows.failures

    def __len__(self) -> int:
        return len(self.rows)

    def audio(self, index: int, train: bool) -> torch.Tensor:
        wide = self.rows.images(index, 1, train=False)[0]  # (C, f, T_wide)
        spare = wide.shape[-1] - self.tokens
        start = random.randint(0, spare) if train else spare // 2
        return wide[..., start:start + self.tokens].contiguous()


def _with_view_axis(array: np.ndarray) -> np.ndarray:
    """(N, ...) -> (N, 1, ...) as a view; a memory-mapped file stays one (same file, offset and layout)."""
    if isinstance(array, np.memmap) and array.filename is not None:
        return np.load(array.filename, mmap_mode="r").reshape(array.shape[0], 1, *array.shape[1:])
    return np.asarray(array)[:, None]


def _portable(array: Any) -> Any:
    """A memory-mapped .npy file as ("npy", path) for pickling; anything else as it is."""
    if isinstance(array, np.memmap) and array.filename is not None:
        return ("npy", array.filename)
    return array


def _unportable(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "npy":
        return np.load(value[1], mmap_mode="r")
    return value


class InferenceClipDataset(Dataset):
    """Clips for inference in the cheapest form to decode in a worker and pass between processes: the test
    transform's squashed image as (S, S, 3) uint8 and the centred audio window as (num_samples,) float32.

    `model_inputs` finishes a collated batch where the model runs: normalisation and spectrograms for the whole
    batch at once, on the GPU when there is one, so the workers only read files, decode and resize. The result
    equals ClipDataset's test items (images to the bit, spectrograms to float rounding).

    draft: JPEGs of at least 4x the image size decode in Pillow's draft mode (`load_image`) to no less than twice
    the size, and bicubic makes the last >= 2x reduction. Measured on realsound test frames (480) at 64 px against
    a full decode, with the seed-0 real model: embedding cosine mean 0.998, 1st percentile 0.990, min 0.985;
    decoding to the size itself (no 2x margin) gave min 0.94. Off by default; inference may choose it.
    """

    def __init__(self, clips: Sequence[Clip], config: DataConfig, draft: bool = False):
        self.clips = list(clips)
        self.config = config
        self.draft = draft

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip, size = self.clips[index], self.config.image_size
        try:
            image = load_image(clip.image, draft_size=2 * size if self.draft else None)
            pixels = torch.from_numpy(np.array(squash_image(image, size)))
            window = torch.from_numpy(load_audio_window(clip.audio, self.config))
        except DecodeError as error:
            return {"failed": (clip.id, str(error)), "index": index}
        return {"index": index, "image": pixels, "audio": window}


def model_inputs(batch: dict[str, Any], config: DataConfig, device: torch.device | str) -> dict[str, Any]:
    """A collated InferenceClipDataset batch with "image" (B, 3, S, S) and "audio" (B, 1, F, T) on `device`,
    as ClipDataset's test items would have given them; a batch whose clips all failed passes through."""
    if "image" not in batch:
        return batch
    pixels = batch["image"].to(device, non_blocking=True)
    waves = batch["audio"].to(device, non_blocking=True)
    return {**batch, "image": normalise_pixels(pixels), "audio": log_spectrogram(waves, config)}


def collate_skipping_failures(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good items; list the failed ones as (clip id, reason) under "failed"."""
    good = [item for item in items if "failed" not in item]
    batch: dict[str, Any] = {"failed": [item["failed"] for item in items if "failed" in item]}
    if good:
        for key in good[0]:
            values = [item[key] for item in good]
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    return batch


@dataclass
class FailureLog:
    """Clips skipped during a run, reported at its end."""

    failures: list[tuple[str, str]] = field(default_factory=list)

    def add(self, batch: dict[str, Any]) -> None:
        """Record the failures listed in a collated batch."""
        self.extend(batch.get("failed", []))

    def extend(self, failed: list[tuple[str, str]]) -> None:
        self.failures.extend(failed)

    def __len__(self) -> int:
        return len(self.failures)

    def summary(self) -> str:
        if not self.failures:
            return "no clips skipped"
        first = self.failures[0][1]
        return f"{len(self.failures)} clip(s) skipped as unreadable (first: {first})"

    def write(self, path: Path) -> None:
        Path(path).write_text("".join(f"{clip_id}\t{reason}\n" for clip_id, reason in self.failures))


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 2,
                drop_last: bool = False, sampler: Sampler | None = None, seed: int = 0,
                device: torch.device | str = "cpu") -> DataLoader:
    """A DataLoader that decodes in worker processes, prefetches, and pins memory when feeding a GPU."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_skipping_failures,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        worker_init_fn=_seed_worker,
        generator=generator,
    )
