"""Helpers the tests share (imported as `from helpers import ...`; pytest puts tests/ on the path): small stores of
paired vectors and brute-force answers to check indexes against."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from indexing.store import StoreMeta, StoreRecords, StoreWriter, l2_normalise


def clustered_pairs(num: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image vectors from a 30-component Gaussian mixture; audio vectors = noisy copies (cross-modal-like pairs)."""
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(30, dim)))
    image = l2_normalise(centres[rng.integers(0, 30, num)] + 0.35 * rng.normal(size=(num, dim)) / np.sqrt(dim))
    audio = l2_normalise(image + 0.1 * rng.normal(size=(num, dim)) / np.sqrt(dim))
    return image, audio


def write_store(index_dir: Path, image: np.ndarray, audio: np.ndarray, fingerprint: str = "fp-test") -> None:
    num, dim = image.shape
    meta = StoreMeta(fingerprint=fingerprint, model_name="jsa", config={"dim": dim}, checkpoint="none", dim=dim)
    writer = StoreWriter(index_dir, meta, chunk_rows=1024)
    records = StoreRecords(ids=[f"c{i}" for i in range(num)], labels=[f"k{i % 9}" for i in range(num)],
                           image_paths=[f"i{i}.jpg" for i in range(num)], audio_paths=[f"a{i}.wav" for i in range(num)],
                           image_vectors=image, audio_vectors=audio)
    writer.write(records, positions=np.arange(num))
    writer.finalize()


def brute_force_top_k(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and ids (Q, k) of a full float64 sort, ties to the lower id: the oracle indexes are checked against."""
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean overlap of the first 10 columns of `found` and `exact`, over 10."""
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found[:, :10], exact[:, :10])]))
