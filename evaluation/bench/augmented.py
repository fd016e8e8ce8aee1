"""Real augmented encodings for the FAISS benchmark: are the noisy copies (bench.vectors) harsher than real data?

Each row is one clip of a real data set seen once more through the trained model, with training's augmentation:
a random crop and flip of the image (`image_transform(train=True)`) and a jittered audio window
(`load_spectrogram(train=True)`), so two rows of one clip differ the way two photos and two recordings of one
scene do, not by Gaussian noise. Rows cycle over the clips in a seeded order; queries are further augmentations
drawn from another seed, never rows of the store. Vectors are mapped to the benchmark's dimension by the same
fixed orthogonal map as the noisy copies' bases (bench.vectors.orthogonal_map).
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from indexing.store import l2_normalise
from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.clips import Clip, read_dataset
from jsa_retrieval.dataset import load_image_tensor, load_spectrogram

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


@torch.no_grad()
def augmented_encodings(data_dir: Path, checkpoint: Path, count: int, dim: int, seed: int = 0,
                        batch_size: int = 64, workers: int = 2) -> tuple[np.ndarray, np.ndarray, int]:
    """(count, dim) unit image and audio vectors of `count` augmented views of the clips in `data_dir` (all
    splits), through `checkpoint`'s model, mapped to `dim` by the benchmark's orthogonal map; and the number of
    clips they cycle over."""
    model, config, _ = load_model(checkpoint)
    clips = read_dataset(Path(data_dir)).clips
    if not clips:
        raise ValueError(f"no clips in {data_dir}")
    loader = DataLoader(AugmentedClips(clips, config, count, seed), batch_size=batch_size, num_workers=workers)
    image, audio = [], []
    for number, (images, spectrograms) in enumerate(loader):
        image.append(model.encode_image(images).vector.float().numpy())
        audio.append(model.encode_audio(spectrograms).vector.float().numpy())
        if number % 50 == 0:
            logger.info(f"augmented encodings: {(number + 1) * batch_size:,} of {count:,}")
    mapping = orthogonal_map(model.vector_dim, dim, 0)
    return (l2_normalise(l2_normalise(np.concatenate(image)) @ mapping),
            l2_normalise(l2_normalise(np.concatenate(audio)) @ mapping), len(clips))
