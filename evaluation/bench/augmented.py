"""Real augmented encodings for the FAISS benchmark: are the noisy copies (bench.vectors) harsher than real data?

Each row is one clip of a real data set seen once more through the trained model, with training's augmentation:
a random crop and flip of the image (`image_transform(train=True)`) and a jittered audio window
(`load_spectrogram(train=True)`), so two rows of one clip differ the way two photos and two recordings of one
scene do, not by Gaussian noise. Rows cycle over the clips in a seeded order; queries are further augmentations
drawn from another seed, never rows of the store. Vectors are mapped to the benchmark's dimension by the same
fixed orthogonal map as the noisy copies' bases (bench.vectors.orthogonal_map).

Encoding is the slow part (100,000 views take about 80 minutes on 2 CPU cores), so with a `cache` file the
model's vectors are appended there batch by batch. View i's augmentation depends only on (seed, i), not on how
many views are asked for, so a cache serves any count: a run asking for fewer views than it holds reads them
back, one asking for more (or one killed mid-way and run again) encodes only the views it lacks. A cache belongs
to one checkpoint, one list of clips and one seed; another is begun afresh.
"""
from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from indexing.store import l2_normalise
from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.clips import Clip, read_dataset
from jsa_retrieval.dataset import load_image_tensor, load_spectrogram
from jsa_retrieval.files import file_sha256

from .vectors import orthogonal_map

logger = logging.getLogger(__name__)


class AugmentedClips(Dataset):
    """Item i: clip order[i % len(clips)] with its own seeded augmentation (image crop/flip, audio window)."""

    def __init__(self, clips: list[Clip], config, count: int, seed: int):
        self.clips, self.config, self.count, self.seed = clips, config, count, seed
        self.order = np.random.default_rng(seed).permutation(len(clips))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip = self.clips[int(self.order[item % len(self.clips)])]
        rng = random.Random(hash((self.seed, item)))
        torch.manual_seed(rng.getrandbits(63))  # torchvision's random crop and flip draw from torch's generator
        image = load_image_tensor(clip.image, self.config.data, train=True)
        return image, load_spectrogram(clip.audio, self.config.data, train=True, rng=rng)


def augmented_encodings(data_dir: Path, checkpoint: Path, count: int, dim: int, seed: int = 0,
                        batch_size: int = 64, workers: int = 2,
                        cache: Path | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(count, dim) unit image and audio vectors of the first `count` augmented views of the clips in `data_dir`
    (all splits), through `checkpoint`'s model, mapped to `dim` by the benchmark's orthogonal map; and the number
    of clips they cycle over. With `cache`, the model's vectors are kept there (module docstring)."""
    model, config, _ = load_model(checkpoint)
    clips = read_dataset(Path(data_dir)).clips
    if not clips:
        raise ValueError(f"no clips in {data_dir}")
    views = AugmentedClips(clips, config, count, seed)
    if cache is None:
        image, audio = _encode_all(model, views, batch_size, workers)
    else:  # what the cached views depend on (the checkpoint hashed only here: hundreds of MB to read)
        listing = "\n".join(f"{clip.id}\t{clip.image}\t{clip.audio}" for clip in clips)
        identity = {"checkpoint_sha256": file_sha256(checkpoint), "seed": seed, "dim": model.vector_dim,
                    "clips_sha256": hashlib.sha256(listing.encode()).hexdigest()}
        image, audio = _cached_encodings(model, views, batch_size, workers, Path(cache), identity)
    mapping = orthogonal_map(model.vector_dim, dim, 0)
    return l2_normalise(l2_normalise(image) @ mapping), l2_normalise(l2_normalise(audio) @ mapping), len(clips)


@torch.no_grad()
def encoded_batches(model, views: Dataset, batch_size: int, workers: int,
                    start: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first view, image vectors, audio vectors) of each batch of `views` from view `start` on, with a bar."""
    loader = DataLoader(Subset(views, range(start, len(views))), batch_size=batch_size, num_workers=workers)
    first = start
    with tqdm(total=len(views), initial=start, desc="augmented views", unit="view") as bar:
        for images, spectrograms in loader:
            yield (first, model.encode_image(images).vector.float().numpy(),
                   model.encode_audio(spectrograms).vector.float().numpy())
            first += images.shape[0]
            bar.update(images.shape[0])


def _encode_all(model, views: Dataset, batch_size: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    batches = list(encoded_batches(model, views, batch_size, workers))
    return np.concatenate([image for _, image, _ in batches]), np.concatenate([audio for _, _, audio in batches])


def _cached_encodings(model, views: Dataset, batch_size: int, workers: int, cache: Path,
                      identity: dict) -> tuple[np.ndarray, np.ndarray]:
    """The model's vectors of the first len(views) views, kept in `cache`: the views it already holds for
    `identity` (any count: view i is the same whatever the count) are read back, the rest encoded and appended
    batch by batch, so a run killed mid-way resumes at its first missing view. A cache of other views, or one
    that cannot be read, is begun afresh."""
    wanted = len(views)
    cache.parent.mkdir(parents=True, exist_ok=True)
    reusable = cache.exists() and _opens_for(cache, identity)
    with h5py.File(cache, "a" if reusable else "w") as handle:
        if not reusable:
            for name in ("image", "audio"):
                handle.create_dataset(name, (0, identity["dim"]), maxshape=(None, identity["dim"]), dtype="float32",
                                      chunks=(256, identity["dim"]))
            handle.attrs.update({**identity, "done": 0})
        done = int(handle.attrs["done"])
        if done < wanted:
            if done:
                logger.info(f"augmented encodings: {done:,} views read from {cache}, encoding the other "
                            f"{wanted - done:,}")
            for name in ("image", "audio"):
                handle[name].resize(max(wanted, handle[name].shape[0]), axis=0)
            for first, image, audio in encoded_batches(model, views, batch_size, workers, start=done):
                handle["image"][first:first + len(image)] = image
                handle["audio"][first:first + len(image)] = audio
                handle.attrs["done"] = first + len(image)  # after the rows: a kill leaves `done` behind, never ahead
                handle.flush()
        else:
            logger.info(f"augmented encodings: {wanted:,} views read from {cache} (it holds {done:,})")
        return handle["image"][:wanted], handle["audio"][:wanted]


def _made_for(handle: h5py.File, identity: dict) -> bool:
    return all(key in handle.attrs and _attr(handle.attrs[key]) == value for key, value in identity.items())


def _opens_for(path: Path, identity: dict) -> bool:
    """Whether the file at `path` is a readable, growable cache begun for `identity` (a torn or foreign file is
    not)."""
    try:
        with h5py.File(path, "r") as handle:
            return (_made_for(handle, identity) and all(name in handle for name in ("image", "audio"))
                    and handle["image"].maxshape[0] is None and "done" in handle.attrs)
    except OSError:
        return False


def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value
