"""Vectors that resemble real embeddings, at any count and dimension, for the FAISS benchmark.

The model's own image and audio target-slot vectors of the synthetic set are the *bases*. An untrained network
maps every input into a narrow cone (mean pairwise cosine 0.994 measured for a random cpu-config JSA), where
noise would drown every difference between clips, so bases whose mean pairwise cosine exceeds
`COLLAPSED_MEAN_COSINE` are centred (per-modality mean subtracted, renormalised); a trained model's bases
(0.6-0.7) are kept as they are. Bases of another dimension are mapped to `dim` by a fixed random orthogonal map
(seeded): for dim >= the model's it preserves every inner product exactly, for a smaller dim it is a random
orthogonal projection (Johnson-Lindenstrauss) and is renormalised. Row r of the store is a noisy copy of base
r mod m: normalise(base + sigma * g), g ~ N(0, I/dim), so E|g| = 1 and cos(copy, base) ~ 1/sqrt(1 + sigma^2) =
0.86 at sigma 0.6; two copies of one base meet at cos ~ 0.74, so the nearest neighbours of a vector are copies of
its own and of nearby bases. Queries are fresh noisy copies drawn with another seed, never the indexed ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from indexing.store import StoreMeta, StoreRecords, StoreWriter, l2_normalise

from .config import DEFAULT_DIM, NOISE_SIGMA

COLLAPSED_MEAN_COSINE = 0.9  # bases closer than this on average are centred (see the module docstring)
_MODALITY_SEED = {"image": 0, "audio": 1}
_STORE_SEED, _QUERY_SEED = 0, 1


@dataclass
class BaseVectors:
    """(m, dim) unit image and audio bases of the structured store, with how they were made from the model's."""

    image: np.ndarray
    audio: np.ndarray
    model_dim: int
    centred: bool
    mean_cosine_model: float  # mean pairwise cosine of the model's vectors (image and audio averaged)
    mean_cosine: float  # the same after centring (if any) and mapping
    pair_cosine: float  # mean cos(image base i, audio base i): how aligned the two modalities are


def mean_pairwise_cosine(vectors: np.ndarray, sample: int = 2048, seed: int = 0) -> float:
    """Mean cosine over distinct pairs of (a seeded sample of) unit rows (n, d)."""
    rows = vectors
    if rows.shape[0] > sample:
        rows = rows[np.random.default_rng(seed).choice(rows.shape[0], sample, replace=False)]
    n = rows.shape[0]
    if n < 2:
        return 1.0
    total = float(np.square(rows.astype(np.float64).sum(axis=0)).sum())  # sum over all ordered pairs + n
    return (total - n) / (n * (n - 1))


def orthogonal_map(in_dim: int, out_dim: int, seed: int = 0) -> np.ndarray:
    """(in_dim, out_dim) fixed random map with orthonormal rows (in_dim <= out_dim: inner products kept exactly)
    or orthonormal columns (in_dim > out_dim: a random orthogonal projection)."""
    if in_dim == out_dim:
        return np.eye(in_dim, dtype=np.float32)
    rng = np.random.default_rng(seed)
    tall, _ = np.linalg.qr(rng.standard_normal((max(in_dim, out_dim), min(in_dim, out_dim))))
    return (tall.T if in_dim < out_dim else tall).astype(np.float32)


def prepare_bases(image: np.ndarray, audio: np.ndarray, dim: int = DEFAULT_DIM, seed: int = 0) -> BaseVectors:
    """The model's (m, d) image and audio vectors -> unit (m, dim) bases: centred if collapsed, then mapped."""
    image, audio = l2_normalise(image), l2_normalise(audio)
    if image.shape != audio.shape or image.shape[0] < 1:
        raise ValueError(f"need equal, non-empty image and audio vectors, got {image.shape} and {audio.shape}")
    before = (mean_pairwise_cosine(image) + mean_pairwise_cosine(audio)) / 2
    centred = before > COLLAPSED_MEAN_COSINE and image.shape[0] > 1
    if centred:
        image, audio = l2_normalise(image - image.mean(axis=0)), l2_normalise(audio - audio.mean(axis=0))
    mapping = orthogonal_map(image.shape[1], dim, seed)
    image, audio = l2_normalise(image @ mapping), l2_normalise(audio @ mapping)
    return BaseVectors(image=image, audio=audio, model_dim=mapping.shape[0], centred=centred,
                       mean_cosine_model=before,
                       mean_cosine=(mean_pairwise_cosine(image) + mean_pairwise_cosine(audio)) / 2,
                       pair_cosine=float(np.mean(np.sum(image * audio, axis=1))))


def noisy_copies(bases: np.ndarray, base_rows: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """(n, dim) unit rows normalise(bases[base_rows] + sigma * g), g ~ N(0, I / dim) so that E|g| = 1."""
    dim = bases.shape[1]
    noise = rng.standard_normal((base_rows.size, dim), dtype=np.float32)
    noise *= np.float32(sigma / math.sqrt(dim))
    noise += bases[base_rows]
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return noise


def structured_chunks(bases: BaseVectors, num_vectors: int, sigma: float, seed: int,
                      chunk_rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(start row, image block, audio block) covering rows [0, num_vectors); row r copies base r mod m.

    Each block draws from its own generator seeded by (seed, block), so any block can be remade alone.
    """
    m = bases.image.shape[0]
    for number, start in enumerate(range(0, num_vectors, chunk_rows)):
        rows = np.arange(start, min(start + chunk_rows, num_vectors))
        blocks = [noisy_copies(getattr(bases, side), rows % m, sigma,
                               np.random.default_rng([seed, _STORE_SEED, _MODALITY_SEED[side], number]))
                  for side in ("image", "audio")]
        yield start, blocks[0], blocks[1]


def write_structured_store(index_dir: str | Path, bases: BaseVectors, num_vectors: int, sigma: float = NOISE_SIGMA,
                           seed: int = 0, chunk_rows: int = 65536) -> Path:
    """Write `num_vectors` structured rows into INDEX_DIR/store.h5 through StoreWriter, one chunk in memory.

    Ids are row numbers, labels the base number, paths empty: only the vectors matter to an index.
    """
    dim = bases.image.shape[1]
    meta = StoreMeta(fingerprint=f"bench-structured-seed{seed}-sigma{sigma}", model_name="bench",
                     config={"vectors": num_vectors, "dim": dim, "sigma": sigma, "bases": bases.image.shape[0]},
                     checkpoint="none", dim=dim)
    writer = StoreWriter(index_dir, meta, chunk_rows=chunk_rows)
    m = bases.image.shape[0]
    for start, image, audio in structured_chunks(bases, num_vectors, sigma, seed, chunk_rows):
        rows = range(start, start + image.shape[0])
        empty = [""] * image.shape[0]
        writer.write(StoreRecords(ids=[f"v{r}" for r in rows], labels=[f"b{r % m}" for r in rows],
                                  image_paths=empty, audio_paths=empty, image_vectors=image, audio_vectors=audio),
                     positions=np.arange(start, start + image.shape[0]))
    return writer.finalize()


def write_given_store(index_dir: str | Path, image: np.ndarray, audio: np.ndarray, seed: int = 0,
                      chunk_rows: int = 65536) -> Path:
    """Write (n, dim) given image and audio rows (bench.augmented's) into INDEX_DIR/store.h5 through StoreWriter."""
    num, dim = image.shape
    meta = StoreMeta(fingerprint=f"bench-given-seed{seed}-{num}", model_name="bench",
                     config={"vectors": num, "dim": dim, "source": "given rows"}, checkpoint="none", dim=dim)
    writer = StoreWriter(index_dir, meta, chunk_rows=chunk_rows)
    for start in range(0, num, chunk_rows):
        rows = range(start, min(start + chunk_rows, num))
        empty = [""] * len(rows)
        writer.write(StoreRecords(ids=[f"v{r}" for r in rows], labels=empty, image_paths=empty, audio_paths=empty,
                                  image_vectors=image[rows.start:rows.stop], audio_vectors=audio[rows.start:rows.stop]),
                     positions=np.arange(rows.start, rows.stop))
    return writer.finalize()


def cross_modal_queries(bases: BaseVectors, side: str, count: int, sigma: float = NOISE_SIGMA,
                        seed: int = 0) -> np.ndarray:
    """(count, dim) fresh noisy copies of random `side` bases, drawn from a seed stream the store never uses."""
    rng = np.random.default_rng([seed, _QUERY_SEED, _MODALITY_SEED[side]])
    vectors = getattr(bases, side)
    return noisy_copies(vectors, rng.integers(0, vectors.shape[0], count), sigma, rng)
