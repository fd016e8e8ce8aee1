"""Benchmarks on this machine: indexing throughput against the bare model, and FAISS at a million vectors.

Two questions, answered side by side in one run so every ratio compares numbers taken under the same load
(the project's machines: 2 shared cores, no GPU; the target scale: up to a few million clips on one machine):

1. Is the model the bottleneck of `jsar index`? `index_dataset` clips/s against `bare_forward_rate` (the two
   encoders alone on random tensors of the configured size, same batch size); goal ratio >= 0.8. The decode
   cost per clip, the DataLoader's decode-only rate and the ratio ceiling when decoding shares the model's
   cores say why a ratio is low.
2. Does the automatic FAISS choice meet "one query <= 5 ms at recall@10 >= 0.95" at 1,000,000 x 512, and at
   what build time and memory? The store is written through `StoreWriter` and indexed by `build_indexes`, the
   code a user runs. Queries are cross-modal (audio vectors against the image index and the reverse), recall
   is measured against exact FAISS flat search and against a numpy brute force, and a sweep of the search
   parameter shows the recall/latency trade-off measured, not guessed.

Vectors that resemble real embeddings: the model's own image and audio target-slot vectors of the synthetic
set are the *bases*. An untrained network maps every input into a narrow cone (mean pairwise cosine 0.994
measured for a random cpu-config JSA), where noise would drown every difference between clips, so bases
whose mean pairwise cosine exceeds `COLLAPSED_MEAN_COSINE` are centred (per-modality mean subtracted,
renormalised); a trained model's bases (0.6-0.7) are kept as they are. Bases of another dimension are mapped
to `dim` by a fixed random orthogonal map (seeded): for dim >= the model's it preserves every inner product
exactly, for a smaller dim it is a random orthogonal projection (Johnson-Lindenstrauss) and is renormalised.
Row r of the store is a noisy copy of base r mod m: normalise(base + sigma * g), g ~ N(0, I/dim), so
E|g| = 1 and cos(copy, base) ~ 1/sqrt(1 + sigma^2) = 0.86 at sigma 0.6; two copies of one base meet at
cos ~ 0.74, so the nearest neighbours of a vector are copies of its own and of nearby bases. Queries are
fresh noisy copies drawn with another seed, never the indexed ones.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import faiss
import numpy as np
import torch

from indexing.embed import bare_forward_rate, index_dataset
from indexing.faiss_index import (INDEX_FILES, apply_search_params, build_indexes, configure_faiss,
                                  index_search_params, neighbour_recall_at_k, open_indexes, search)
from indexing.store import EmbeddingStore, StoreMeta, StoreRecords, StoreWriter, l2_normalise
from jsa_retrieval.clips import Clip, read_dataset
from jsa_retrieval.config import DataConfig, get_config
from jsa_retrieval.machine import machine_info
from jsa_retrieval.dataset import InferenceClipDataset, load_audio_window, make_loader
from jsa_retrieval.decode import load_image
from jsa_retrieval.inference import pick_device
from jsa_retrieval.transforms import log_spectrogram, normalise_pixels, squash_image
from jsa_retrieval.models import checkpoint_state, create_model, load_model
from jsa_retrieval.synth import SynthConfig, generate

logger = logging.getLogger(__name__)

DEFAULT_VECTORS = 1_000_000
QUICK_VECTORS = 100_000
DEFAULT_DIM = 512
DEFAULT_CLIPS = 512
QUICK_CLIPS = 256
NOISE_SIGMA = 0.6  # cos(copy, base) ~ 1 / sqrt(1 + 0.36) = 0.86
COLLAPSED_MEAN_COSINE = 0.9  # bases closer than this on average are centred (see the module docstring)
INDEXING_RATIO_GOAL = 0.8
LATENCY_GOAL_MS = 5.0
RECALL_GOAL = 0.95
TOP_K = 10
FLAT_LATENCY_QUERIES = 20  # exact search reads all n*d floats per query: a few queries give its latency
SWEEP_VALUES = {"nprobe": (8, 16, 24, 32, 48, 64, 128, 256), "efSearch": (16, 32, 64, 128, 256, 512)}
DIRECTIONS = {"audio->image": ("audio", "image"), "image->audio": ("image", "audio")}  # (query side, index side)
_MODALITY_SEED = {"image": 0, "audio": 1}
_STORE_SEED, _QUERY_SEED = 0, 1


# ------------------------------------------------------------------------------------------------ memory
def _status_bytes(key: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/self/status in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak resident set size of this process inside a `with` block, in bytes.

    FAISS and HDF5 allocate outside Python, so tracemalloc would miss them; the kernel's high-water mark
    (VmHWM) sees everything and is reset on entry, so each phase gets its own peak. Where the reset is not
    allowed the lifetime peak (ru_maxrss) is reported instead and `exact` is False.
    """

    def __enter__(self) -> "PeakMemory":
        self.exact = _reset_peak_rss()
        self.start = _status_bytes("VmRSS")
        self.peak = self.start
        return self

    def __exit__(self, *exc: Any) -> None:
        lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak = _status_bytes("VmHWM") if self.exact else lifetime


# ---------------------------------------------------------------------------------------- shared inputs
def make_random_checkpoint(path: str | Path, config_name: str = "cpu", model_name: str = "jsa",
                           seed: int = 0) -> Path:
    """A randomly initialised checkpoint in the trainer's format (`checkpoint_state`): lets the benchmark run where no trained model exists. Timing does not depend on the
    weights; `bench_faiss_scale` centres the collapsed vectors such a model makes."""
    config = get_config(config_name)
    config.model.image_weights = "none"  # the benchmark must run offline, without ImageNet weights
    torch.manual_seed(seed)
    model = create_model(config, model_name)
    path = Path(path)
    torch.save(checkpoint_state(model, config, meta={"note": f"random initialisation, seed {seed}"}), path)
    return path


def make_synthetic_data(out_dir: str | Path, clips: int, seed: int = 0) -> Path:
    """The synthetic benchmark (jsa_retrieval.synth) at its default 160 px / 3 s: what `jsar demo` indexes."""
    generate(out_dir, SynthConfig(n_clips=clips, seed=seed), progress=False)
    return Path(out_dir)


# --------------------------------------------------------------------------------------------- indexing
@dataclass
class IndexingBench:
    """Clips/s of the indexing pipeline against the model alone, and where a clip's time goes.

    model_ms_per_clip is wall time with torch using every core; decode_ms_per_clip is the CPU time one worker
    process spends per clip (1000 / its decode-only rate); the *_ms stages are per clip: worker stages on one
    thread, the main process's batch stages (normalise, spectrogram, transfer) at the torch threads.
    """

    clips: int
    batch_size: int
    workers: int
    torch_threads: int
    index_rate: float  # clips/s through index_dataset: decoding in workers + both encoders + store writes
    bare_rate: float  # clips/s of encode_image + encode_audio on random tensors of the configured size
    decode_rate: float  # clips/s of the DataLoader alone (same workers and batch size, no model)
    decode_ms_per_clip: float
    image_decode_ms: float  # worker: read + decode one image (full decode unless draft), one thread
    image_resize_ms: float  # worker: squash to the model's size (bicubic), one thread
    audio_decode_ms: float  # worker: read + mix to mono + resample + centred window, one thread
    normalise_ms: float  # main process: uint8 -> normalised float, per clip of a batch
    spectrogram_ms: float  # main process: log spectrograms of the batch, per clip
    transfer_ms: float  # main process: batch to the model's device (0 on the CPU)
    store_write_ms: float  # StoreWriter.write + finalize, per clip
    seconds: float

    @property
    def ratio(self) -> float:
        return self.index_rate / self.bare_rate if self.bare_rate > 0 else 0.0

    @property
    def model_ms_per_clip(self) -> float:
        return 1000.0 / self.bare_rate if self.bare_rate > 0 else math.inf

    @property
    def batch_prep_ms(self) -> float:
        """Main-process work per clip between the loader and the encoders (it does not overlap them)."""
        return self.normalise_ms + self.spectrogram_ms + self.transfer_ms

    @property
    def shared_core_ceiling(self) -> float:
        """Best ratio possible when decoding runs on the model's cores: the model needs t_model of every core
        per clip, decoding t_decode of one and the batch preparation t_prep of every core, so a clip takes at
        least t_model + t_prep + t_decode / cores of wall time."""
        model, decode = self.model_ms_per_clip, self.decode_ms_per_clip
        cores = max(self.torch_threads, 1)
        return model / (model + self.batch_prep_ms + decode / cores) if math.isfinite(model) else 0.0

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(ratio=self.ratio, model_ms_per_clip=self.model_ms_per_clip, batch_prep_ms=self.batch_prep_ms,
                      shared_core_ceiling=self.shared_core_ceiling)
        return values


def decode_rate(clips: Sequence[Clip], data_config: DataConfig, batch_size: int, workers: int) -> float:
    """Clips/s of the DataLoader that `index_dataset` uses (same dataset, workers and batch size), no model."""
    loader = make_loader(InferenceClipDataset(clips, data_config), batch_size, num_workers=workers)
    started, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["index"]) if "image" in batch else 0
    return count / (time.perf_counter() - started)


@dataclass
class StageTimes:
    """Milliseconds per clip of each stage of `index_dataset` apart from the encoders (see IndexingBench)."""

    image_decode: float
    image_resize: float
    audio_decode: float
    normalise: float
    spectrogram: float
    transfer: float
    store_write: float


def _per_clip_ms(seconds: float, count: int) -> float:
    return seconds * 1000 / max(count, 1)


def stage_times(clips: Sequence[Clip], data_config: DataConfig, store_meta: StoreMeta, work_dir: Path,
                device: torch.device) -> StageTimes:
    """Where a clip's time goes outside the encoders: the worker stages one by one on one thread, as in a
    DataLoader worker; the main process's stages on the batch of `clips` at the torch threads; the store write
    of as many rows into `work_dir`."""
    size, threads = data_config.image_size, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        began = time.perf_counter()
        images = [load_image(clip.image) for clip in clips]
        decoded = time.perf_counter()
        pixels = torch.stack([torch.from_numpy(np.array(squash_image(image, size))) for image in images])
        resized = time.perf_counter()
        waves = torch.stack([torch.from_numpy(load_audio_window(clip.audio, data_config)) for clip in clips])
        audio_done = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    normalise_pixels(pixels[:1].to(device))  # warm-up: setting up kernels and FFT plans is not per-clip cost
    log_spectrogram(waves[:1].to(device), data_config)
    marks = [time.perf_counter()]
    pixels, waves = pixels.to(device), waves.to(device)
    _synchronize(device)
    marks.append(time.perf_counter())
    normalise_pixels(pixels)
    _synchronize(device)
    marks.append(time.perf_counter())
    log_spectrogram(waves, data_config)
    _synchronize(device)
    marks.append(time.perf_counter())
    count = len(clips)
    writer = StoreWriter(work_dir, store_meta)
    vectors = np.random.default_rng(0).normal(size=(count, store_meta.dim)).astype(np.float32)
    write_started = time.perf_counter()
    writer.write(StoreRecords(ids=[clip.id for clip in clips], labels=[clip.label for clip in clips],
                              image_paths=[str(clip.image) for clip in clips],
                              audio_paths=[str(clip.audio) for clip in clips],
                              image_vectors=vectors, audio_vectors=vectors), list(range(count)))
    writer.finalize()
    written = time.perf_counter()
    return StageTimes(image_decode=_per_clip_ms(decoded - began, count),
                      image_resize=_per_clip_ms(resized - decoded, count),
                      audio_decode=_per_clip_ms(audio_done - resized, count),
                      transfer=_per_clip_ms(marks[1] - marks[0], count) if device.type != "cpu" else 0.0,
                      normalise=_per_clip_ms(marks[2] - marks[1], count),
                      spectrogram=_per_clip_ms(marks[3] - marks[2], count),
                      store_write=_per_clip_ms(written - write_started, count))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_indexing(data_dir: str | Path, checkpoint: str | Path, index_dir: str | Path, batch_size: int = 64,
                   workers: int = 2, bare_batches: int = 10, device: str | None = None) -> IndexingBench:
    """Index `data_dir` into `index_dir` (which must not hold a store yet) and compare with the bare model.

    The bare rate is measured right before and right after indexing, so both see the same machine load; their
    harmonic mean (total clips over total time) is the reference.
    """
    started = time.perf_counter()
    bare_before = bare_forward_rate(Path(checkpoint), batch_size=batch_size, batches=bare_batches, device=device)
    summary = index_dataset(Path(data_dir), Path(checkpoint), Path(index_dir), batch_size=batch_size,
                            num_workers=workers, device=device, progress=False)
    if summary.already_done:
        raise ValueError(f"{index_dir} already held {summary.already_done} embedded clips; give an empty folder")
    bare_after = bare_forward_rate(Path(checkpoint), batch_size=batch_size, batches=bare_batches, device=device)
    bare = 2 / (1 / bare_before + 1 / bare_after)
    _, config, _ = load_model(checkpoint)
    with EmbeddingStore.open(index_dir) as store:  # the store index_dataset just wrote knows its meta
        meta = store.meta
    clips = read_dataset(data_dir).clips
    loader_rate = decode_rate(clips, config.data, batch_size, workers)
    one_worker = loader_rate if workers == 1 else decode_rate(clips, config.data, batch_size, min(workers, 1))
    with tempfile.TemporaryDirectory(prefix="jsar-stage-times-") as scratch:
        stages = stage_times(clips[:batch_size], config.data, meta, Path(scratch), pick_device(device))
    return IndexingBench(clips=summary.embedded, batch_size=batch_size, workers=workers,
                         torch_threads=torch.get_num_threads(), index_rate=summary.clips_per_second,
                         bare_rate=bare, decode_rate=loader_rate, decode_ms_per_clip=1000.0 / one_worker,
                         image_decode_ms=stages.image_decode, image_resize_ms=stages.image_resize,
                         audio_decode_ms=stages.audio_decode, normalise_ms=stages.normalise,
                         spectrogram_ms=stages.spectrogram, transfer_ms=stages.transfer,
                         store_write_ms=stages.store_write, seconds=time.perf_counter() - started)


# ------------------------------------------------------------------------------------ structured vectors
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


def cross_modal_queries(bases: BaseVectors, side: str, count: int, sigma: float = NOISE_SIGMA,
                        seed: int = 0) -> np.ndarray:
    """(count, dim) fresh noisy copies of random `side` bases, drawn from a seed stream the store never uses."""
    rng = np.random.default_rng([seed, _QUERY_SEED, _MODALITY_SEED[side]])
    vectors = getattr(bases, side)
    return noisy_copies(vectors, rng.integers(0, vectors.shape[0], count), sigma, rng)


# ----------------------------------------------------------------------------------------------- search
@dataclass
class ExactNeighbours:
    """Top-k of the same queries by exact FAISS flat search and by numpy brute force, with their timings."""

    flat_ids: np.ndarray  # (Q, k)
    numpy_ids: np.ndarray  # (Q, k)
    flat_seconds: float  # search only (adding the vectors is not part of a query)
    numpy_seconds: float  # matrix products + argpartition, reading the store excluded
    flat_index: faiss.Index


def exact_neighbours(store: EmbeddingStore, field_name: str, queries: np.ndarray, k: int = TOP_K,
                     chunk_rows: int = 65536) -> ExactNeighbours:
    """One pass over the store: every chunk goes into an IndexFlatIP and through a numpy top-k.

    numpy keeps a running (Q, k) best list: per chunk, scores (Q, chunk) = queries @ block.T, argpartition
    picks the chunk's top k, merged with the best so far. Memory: the flat index (n * d floats) and one chunk.
    """
    queries = l2_normalise(queries)
    count = queries.shape[0]
    flat = faiss.IndexFlatIP(store.dim)
    best_scores = np.full((count, k), -np.inf, np.float32)
    best_ids = np.full((count, k), -1, np.int64)
    numpy_seconds = 0.0
    for start, block in store.iter_chunks(field_name, chunk_rows):
        flat.add(np.ascontiguousarray(block))
        began = time.perf_counter()
        scores = queries @ block.T
        depth = min(k, block.shape[0])
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        merged_ids = np.concatenate([best_ids, top + start], axis=1)
        keep = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(merged_scores, keep, axis=1)
        best_ids = np.take_along_axis(merged_ids, keep, axis=1)
        numpy_seconds += time.perf_counter() - began
    began = time.perf_counter()
    _, flat_ids = search(flat, queries, k)
    return ExactNeighbours(flat_ids=flat_ids, numpy_ids=best_ids, flat_seconds=time.perf_counter() - began,
                           numpy_seconds=numpy_seconds, flat_index=flat)


def single_query_ms(index: faiss.Index, queries: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """(Q,) wall milliseconds of each query searched alone, through `faiss_index.search` as `jsar query` does."""
    times = np.empty(queries.shape[0])
    for i, query in enumerate(queries):
        began = time.perf_counter()
        search(index, query, k)
        times[i] = (time.perf_counter() - began) * 1000
    return times


def batch_search(index: faiss.Index, queries: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, float]:
    """(Q, k) ids of one batched search and its throughput in queries/s."""
    began = time.perf_counter()
    _, ids = search(index, queries, k)
    return ids, queries.shape[0] / max(time.perf_counter() - began, 1e-9)


def search_param_name(factory: str) -> str | None:
    """The parameter that trades recall for speed in this index type (None for exact search)."""
    if "IVF" in factory:
        return "nprobe"
    if "HNSW" in factory:
        return "efSearch"
    return None


@dataclass
class SweepPoint:
    """Recall and single-query latency of one direction at one value of the search parameter."""

    value: int
    recall: float
    median_ms: float
    p95_ms: float


def sweep_search_param(index: faiss.Index, name: str, values: Sequence[int], latency_queries: np.ndarray,
                       recall_queries: np.ndarray, truth: np.ndarray, restore: dict[str, int],
                       k: int = TOP_K) -> list[SweepPoint]:
    """Measure recall@k (batched) and single-query latency at each value, then put `restore` back."""
    points = []
    try:
        for value in values:
            apply_search_params(index, {name: int(value)})
            found, _ = batch_search(index, recall_queries, k)
            times = single_query_ms(index, latency_queries, k)
            points.append(SweepPoint(int(value), neighbour_recall_at_k(found, truth, k), float(np.median(times)),
                                     float(np.percentile(times, 95))))
    finally:
        apply_search_params(index, restore)
    return points


@dataclass
class DirectionBench:
    """One direction (e.g. audio vectors against the image index) at the chosen search parameters."""

    name: str
    median_ms: float
    p95_ms: float
    p99_ms: float
    batch_size: int
    batch_qps: float
    recall_vs_flat: float
    recall_vs_numpy: float
    flat_vs_numpy: float  # the two exact methods agree (1.0 up to float rounding of near-ties)
    flat_median_ms: float
    flat_qps: float
    numpy_qps: float
    sweep: list[SweepPoint] = field(default_factory=list)


@dataclass
class ExactDirection:
    """Exact top-k of one direction's recall queries and the cost of exact search: computed once per run and
    shared by every index the run measures (a pass over the whole store per direction)."""

    flat_ids: np.ndarray  # (Q, k)
    numpy_ids: np.ndarray  # (Q, k)
    flat_median_ms: float
    flat_qps: float
    numpy_qps: float


def exact_direction(store: EmbeddingStore, field_name: str, queries: np.ndarray, recall_count: int,
                    flat_latency_count: int, chunk_rows: int, k: int) -> ExactDirection:
    """Exact neighbours of queries[:recall_count] (FAISS flat and numpy) and the flat index's single-query time."""
    exact = exact_neighbours(store, field_name, queries[:recall_count], k, chunk_rows)
    flat_latency = single_query_ms(exact.flat_index, queries[:flat_latency_count], k)
    del exact.flat_index
    count = min(recall_count, queries.shape[0])
    return ExactDirection(flat_ids=exact.flat_ids, numpy_ids=exact.numpy_ids,
                          flat_median_ms=float(np.median(flat_latency)),
                          flat_qps=count / max(exact.flat_seconds, 1e-9),
                          numpy_qps=count / max(exact.numpy_seconds, 1e-9))


@dataclass
class IndexBench:
    """One index type over the benchmark store: build cost, memory, and both directions measured."""

    factory: str
    automatic: bool  # chosen by index_choice.choose_index (False: the caller named the factory)
    search_params: dict[str, int]
    reason: str
    build_seconds: float
    index_bytes: int  # both .faiss files on disk
    rss: dict[str, dict[str, int]]  # phase ('store', 'build', 'search') -> {'start': bytes, 'peak': bytes}
    directions: list[DirectionBench]


@dataclass
class FaissBench(IndexBench):
    """FAISS over a structured store: the automatic (or given) index, and any compared ones, on the same store
    and the same exact neighbours."""

    vectors: int
    dim: int
    base_clips: int
    bases: dict[str, Any]  # BaseVectors statistics (no arrays)
    sigma: float
    copy_base_cosine: float  # measured mean cos(copy, its base)
    pair_cosine: float  # measured mean cos(image r, audio r) in the store: the cross-modal gap ...
    random_cosine: float  # ... against mean cos(image r, audio of a random other row)
    faiss_threads: int
    store_seconds: float
    peak_rss_exact: bool
    seconds: float
    compared: list[IndexBench] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _direction_bench(name: str, index: faiss.Index, queries: np.ndarray, exact: ExactDirection, latency_count: int,
                     batch_count: int, recall_count: int, search_params: dict[str, int], sweep_name: str | None,
                     sweep_values: Sequence[int], k: int) -> DirectionBench:
    """Latency, throughput, recall against the shared exact neighbours, and the sweep of one index."""
    recall_queries = queries[:recall_count]
    latency = single_query_ms(index, queries[:latency_count], k)
    _, qps = batch_search(index, queries[:batch_count], k)
    found, _ = batch_search(index, recall_queries, k)
    sweep = []
    if sweep_name:
        sweep = sweep_search_param(index, sweep_name, sweep_values, queries[:latency_count], recall_queries,
                                   exact.flat_ids, search_params, k)
    return DirectionBench(
        name=name, median_ms=float(np.median(latency)), p95_ms=float(np.percentile(latency, 95)),
        p99_ms=float(np.percentile(latency, 99)), batch_size=min(batch_count, queries.shape[0]), batch_qps=qps,
        recall_vs_flat=neighbour_recall_at_k(found, exact.flat_ids, k),
        recall_vs_numpy=neighbour_recall_at_k(found, exact.numpy_ids, k),
        flat_vs_numpy=neighbour_recall_at_k(exact.flat_ids, exact.numpy_ids, k),
        flat_median_ms=exact.flat_median_ms, flat_qps=exact.flat_qps, numpy_qps=exact.numpy_qps, sweep=sweep)


def _sweep_values(index: faiss.Index, name: str | None, requested: Sequence[int] | None) -> list[int]:
    """The values to sweep: `requested` or SWEEP_VALUES of `name`, nprobe capped at the index's nlist."""
    if name is None:
        return []
    values = list(requested if requested is not None else SWEEP_VALUES[name])
    ivf = faiss.try_extract_index_ivf(index)
    if name == "nprobe" and ivf is not None:
        values = [value for value in values if value <= ivf.nlist]
    return values


def bench_faiss_scale(index_dir: str | Path, image: np.ndarray, audio: np.ndarray, vectors: int = DEFAULT_VECTORS,
                      dim: int = DEFAULT_DIM, sigma: float = NOISE_SIGMA, factory: str | None = None,
                      latency_queries: int = 200, batch_queries: int = 2000, recall_queries: int = 1000,
                      sweep_values: Sequence[int] | None = None, flat_latency_queries: int = FLAT_LATENCY_QUERIES,
                      gpu: bool | None = False, chunk_rows: int = 65536, seed: int = 0, k: int = TOP_K,
                      compare: Sequence[str] = ()) -> FaissBench:
    """Structured store of `vectors` x `dim` from the model's (m, d) `image`/`audio` vectors, indexes by
    `build_indexes` (automatic choice unless `factory`), then both cross-modal directions measured; then the
    same for each factory of `compare`, one after another, against the same exact neighbours.

    `index_dir` must be empty or missing. `sweep_values` default: SWEEP_VALUES of the index's parameter, up to
    nlist for IVF. gpu=False measures the CPU path even where faiss-gpu sees a GPU.
    """
    started = time.perf_counter()
    index_dir = Path(index_dir)
    if index_dir.exists() and any(index_dir.iterdir()):
        raise ValueError(f"{index_dir} is not empty; the benchmark writes a fresh store there")
    threads = configure_faiss()
    bases = prepare_bases(image, audio, dim, seed)
    logger.info(f"writing {vectors:,} x {dim} structured vectors (both modalities) through StoreWriter")
    with PeakMemory() as store_memory:
        began = time.perf_counter()
        write_structured_store(index_dir, bases, vectors, sigma, seed, chunk_rows)
        store_seconds = time.perf_counter() - began
    with EmbeddingStore.open(index_dir) as store:
        rows = np.arange(min(vectors, 4096))
        sample, paired = store.read_rows("image_vectors", rows), store.read_rows("audio_vectors", rows)
        count = max(latency_queries, batch_queries, recall_queries, flat_latency_queries)
        queries, exact = {}, {}
        for name, (query_side, index_side) in DIRECTIONS.items():
            logger.info(f"{name}: exact neighbours of {min(recall_queries, count)} queries (flat + numpy), once")
            queries[name] = cross_modal_queries(bases, query_side, count, sigma, seed)
            exact[name] = exact_direction(store, f"{index_side}_vectors", queries[name], recall_queries,
                                          flat_latency_queries, chunk_rows, k)
    copy_cosine = float(np.mean(np.sum(sample * bases.image[rows % bases.image.shape[0]], 1)))
    measure = functools.partial(_index_bench, index_dir, queries=queries, exact=exact, gpu=gpu, chunk_rows=chunk_rows,
                                seed=seed, latency_queries=latency_queries, batch_queries=batch_queries,
                                recall_queries=recall_queries, sweep_values=sweep_values, k=k)
    primary = measure(factory)
    primary.rss["store"] = {"start": store_memory.start, "peak": store_memory.peak}
    compared = [measure(other) for other in compare]
    return FaissBench(
        **{key: getattr(primary, key) for key in IndexBench.__dataclass_fields__},
        vectors=vectors, dim=dim, base_clips=bases.image.shape[0],
        bases={key: value for key, value in dataclasses.asdict(bases).items() if key not in ("image", "audio")},
        sigma=sigma, copy_base_cosine=copy_cosine, pair_cosine=float(np.mean(np.sum(sample * paired, 1))),
        random_cosine=float(np.mean(np.sum(sample * np.roll(paired, 1, axis=0), 1))), faiss_threads=threads,
        store_seconds=store_seconds, peak_rss_exact=store_memory.exact, seconds=time.perf_counter() - started,
        compared=compared)


def _index_bench(index_dir: Path, factory: str | None, queries: dict[str, np.ndarray],
                 exact: dict[str, ExactDirection], gpu: bool | None, chunk_rows: int, seed: int, latency_queries: int,
                 batch_queries: int, recall_queries: int, sweep_values: Sequence[int] | None, k: int) -> IndexBench:
    """Build both indexes of `factory` (None: the automatic choice) over the store in `index_dir`, replacing any
    built before, and measure both directions."""
    logger.info(f"building both indexes ({factory or 'automatic choice'}) with build_indexes")
    with PeakMemory() as build_memory:
        began = time.perf_counter()
        info = build_indexes(index_dir, factory=factory, chunk_rows=chunk_rows, seed=seed, gpu=gpu)
        build_seconds = time.perf_counter() - began
    choice = info["choice"]
    index_bytes = sum((index_dir / file_name).stat().st_size for _, file_name in INDEX_FILES.values())
    directions = []
    with PeakMemory() as search_memory:
        indexes = open_indexes(index_dir, gpu=gpu)
        sweep_name = search_param_name(choice["factory"])
        for name, (_, index_side) in DIRECTIONS.items():
            logger.info(f"{choice['factory']} {name}: latency, throughput, recall, sweep")
            index = getattr(indexes, index_side)
            directions.append(_direction_bench(name, index, queries[name], exact[name], latency_queries,
                                               batch_queries, recall_queries, index_search_params(info, index_side),
                                               sweep_name, _sweep_values(index, sweep_name, sweep_values), k))
        indexes.store.close()
        del indexes
    own = {side: index_search_params(info, side) for side in INDEX_FILES}
    params = own["image"] if own["image"] == own["audio"] else {
        f"{side} index {key}": value for side, values in own.items() for key, value in values.items()}
    return IndexBench(factory=choice["factory"], automatic=factory is None, search_params=params,
                      reason=choice["reason"], build_seconds=build_seconds, index_bytes=index_bytes,
                      rss={"build": {"start": build_memory.start, "peak": build_memory.peak},
                           "search": {"start": search_memory.start, "peak": search_memory.peak}},
                      directions=directions)


# ----------------------------------------------------------------------------------------------- report
@dataclass
class BenchReport:
    """Both benchmarks of one run, the machine they ran on, and the summary table."""

    machine: dict[str, Any]
    indexing: IndexingBench | None
    faiss_scale: FaissBench | None
    seconds: float

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(section, measure, value, note) rows of the summary table."""
        rows: list[tuple[str, str, str, str]] = []
        if self.indexing is not None:
            rows += _indexing_rows(self.indexing)
        if self.faiss_scale is not None:
            rows += _faiss_rows(self.faiss_scale)
        return rows

    def table(self) -> str:
        """The summary table as fixed-width text, headed by the machine and its load."""
        machine = self.machine
        load = machine.get("load_average") or [0.0]
        header = (f"jsar benchmarks: {machine['usable_cores']} cores, load average {load[0]:.2f} at start, "
                  f"torch {machine['torch_version']} ({machine['torch_threads']} threads), "
                  f"faiss {machine.get('faiss_version', '?')}, "
                  f"{self.seconds:.0f} s in all")
        body = [("section", "measure", "value", "note")] + self.rows()
        widths = [max(len(row[i]) for row in body) for i in range(3)]
        lines = [header, ""]
        for number, row in enumerate(body):
            lines.append("  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(row)).rstrip())
            if number == 0:
                lines.append("  ".join("-" * width for width in widths) + "  " + "-" * 4)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "seconds": self.seconds,
                "indexing": None if self.indexing is None else self.indexing.to_dict(),
                "faiss_scale": None if self.faiss_scale is None else self.faiss_scale.to_dict(),
                "table": self.table()}


def goal_met(met: bool) -> str:
    return "met" if met else "MISSED"


def _gib(value: int) -> str:
    return f"{value / (1 << 30):.2f} GiB"


def _indexing_rows(bench: IndexingBench) -> list[tuple[str, str, str, str]]:
    section = "indexing"
    ratio_note = f"goal >= {INDEXING_RATIO_GOAL}: {goal_met(bench.ratio >= INDEXING_RATIO_GOAL)}"
    return [
        (section, f"index_dataset ({bench.clips} clips, batch {bench.batch_size}, {bench.workers} workers)",
         f"{bench.index_rate:.1f} clips/s", "decode in workers + encoders + store writes"),
        (section, "bare encoders, random tensors (same batch)", f"{bench.bare_rate:.1f} clips/s",
         f"torch {bench.torch_threads} threads; before and after indexing (harmonic mean)"),
        (section, "ratio index / bare", f"{bench.ratio:.2f}", ratio_note),
        (section, f"decode only (DataLoader, {bench.workers} workers)", f"{bench.decode_rate:.1f} clips/s", "no model"),
        (section, "decode CPU per clip (one worker)", f"{bench.decode_ms_per_clip:.2f} ms",
         f"image decode {bench.image_decode_ms:.2f} + resize {bench.image_resize_ms:.2f} ms, audio read + window "
         f"{bench.audio_decode_ms:.2f} ms (one thread, in process)"),
        (section, "batch preparation per clip (main process)", f"{bench.batch_prep_ms:.2f} ms",
         f"normalise {bench.normalise_ms:.2f} + spectrograms {bench.spectrogram_ms:.2f} + transfer "
         f"{bench.transfer_ms:.2f} ms; store write {bench.store_write_ms:.2f} ms"),
        (section, "model wall time per clip (all cores)", f"{bench.model_ms_per_clip:.1f} ms", ""),
        (section, "ratio ceiling, decode sharing the cores", f"{bench.shared_core_ceiling:.2f}",
         "t_model / (t_model + t_prep + t_decode / cores)"),
    ]


def _faiss_rows(bench: FaissBench) -> list[tuple[str, str, str, str]]:
    section = "faiss"
    bases = bench.bases
    store = bench.rss["store"]
    rows = [
        (section, f"store {bench.vectors:,} x {bench.dim}, 2 modalities", f"{bench.store_seconds:.1f} s",
         f"StoreWriter + finalize; peak RSS {_gib(store['peak'])} ({_gib(store['start'])} at start)"),
        (section, "bases", f"{bench.base_clips} clips",
         f"model dim {bases['model_dim']} -> {bench.dim}; mean cos {bases['mean_cosine_model']:.3f}"
         f"{' -> centred ' + format(bases['mean_cosine'], '.3f') if bases['centred'] else ''}; "
         f"image-audio pair cos {bases['pair_cosine']:.3f}"),
        (section, f"noise sigma {bench.sigma}", f"cos(copy, base) {bench.copy_base_cosine:.3f}", "measured"),
        (section, "cross-modal gap: cos(image r, audio r) / random audio",
         f"{bench.pair_cosine:.3f} / {bench.random_cosine:.3f}", "measured on the store's first rows"),
    ]
    raw = 2 * bench.vectors * bench.dim * 4
    for index in [bench, *bench.compared]:
        rows += _index_rows(section, index, bench.faiss_threads, raw, bench.peak_rss_exact)
    return rows


def _index_rows(section: str, bench: IndexBench, threads: int, raw_bytes: int,
                peak_exact: bool) -> list[tuple[str, str, str, str]]:
    """Rows of one index: choice, build, memory, then per direction latency, throughput, recall and sweep."""
    params = ", ".join(f"{key}={value}" for key, value in bench.search_params.items()) or "exact"
    def rss(phase: str) -> str:
        values = bench.rss[phase]
        lifetime = "" if peak_exact else ", lifetime peak: VmHWM reset not allowed"
        return f"peak RSS {_gib(values['peak'])} ({_gib(values['start'])} at start{lifetime})"

    rows = [
        (section, "index (build_indexes, automatic choice)" if bench.automatic else "index (factory given)",
         bench.factory, f"{params}; {bench.reason}"),
        (section, "build both indexes (train + add + save)", f"{bench.build_seconds:.1f} s",
         f"{threads} threads; {rss('build')}; files {_gib(bench.index_bytes)} "
         f"({bench.index_bytes / raw_bytes:.2f} x the raw float32 vectors)"),
        (section, "search phase", _gib(bench.rss["search"]["peak"]), f"{rss('search')}: both indexes open"),
    ]
    for direction in bench.directions:
        name = direction.name
        latency_ok = direction.median_ms <= LATENCY_GOAL_MS
        recall_ok = direction.recall_vs_flat >= RECALL_GOAL
        rows += [
            (section, f"{name} single query median / p95 / p99",
             f"{direction.median_ms:.2f} / {direction.p95_ms:.2f} / {direction.p99_ms:.2f} ms",
             f"goal <= {LATENCY_GOAL_MS} ms: {goal_met(latency_ok)}; exact flat {direction.flat_median_ms:.1f} ms "
             f"({direction.flat_median_ms / max(direction.median_ms, 1e-9):.0f}x)"),
            (section, f"{name} batch of {direction.batch_size}", f"{direction.batch_qps:,.0f} q/s",
             f"exact flat {direction.flat_qps:,.0f} q/s, numpy {direction.numpy_qps:,.0f} q/s"),
            (section, f"{name} recall@{TOP_K} vs flat / vs numpy",
             f"{direction.recall_vs_flat:.3f} / {direction.recall_vs_numpy:.3f}",
             f"goal >= {RECALL_GOAL}: {goal_met(recall_ok)}; flat vs numpy {direction.flat_vs_numpy:.3f}"),
        ]
        for point in direction.sweep:
            rows.append((section, f"{name} sweep {search_param_name(bench.factory)}={point.value}",
                         f"recall {point.recall:.3f}, {point.median_ms:.2f} ms",
                         f"p95 {point.p95_ms:.2f} ms"))
    return rows


def _store_vectors(index_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with EmbeddingStore.open(index_dir) as store:
        rows = np.arange(len(store))
        return store.read_rows("image_vectors", rows), store.read_rows("audio_vectors", rows)


def run_benchmarks(data_dir: str | Path | None = None, checkpoint: str | Path | None = None,
                   work_dir: str | Path | None = None, quick: bool = False, clips: int | None = None,
                   batch_size: int = 64, workers: int = 2, vectors: int | None = None, dim: int = DEFAULT_DIM,
                   factory: str | None = None, sigma: float = NOISE_SIGMA, latency_queries: int = 200,
                   batch_queries: int | None = None, recall_queries: int | None = None,
                   sweep_values: Sequence[int] | None = None, indexing: bool = True, faiss_scale: bool = True,
                   device: str | None = None, seed: int = 0, json_path: str | Path | None = None,
                   compare: Sequence[str] = (), vectors_from: str | Path | None = None) -> BenchReport:
    """Run the indexing and FAISS benchmarks (either may be switched off) and return the report.

    data_dir: clips to index; default a synthetic set of `clips` clips made in the work folder.
    checkpoint: default a random cpu-config JSA checkpoint saved in the work folder.
    work_dir: where data, store and indexes go (kept); default a temporary folder, removed at the end. The 1M
    benchmark needs about 12 GB of disk there. quick: 100k vectors, 256 clips, fewer queries (a smoke run).
    The FAISS bases are the vectors the indexing step stored, so that step runs (untimed when indexing=False),
    unless `vectors_from` names a folder `jsar index` made: its vectors are the bases. `compare`: factories
    measured after the automatic choice, on the same store and exact neighbours.
    """
    started = time.perf_counter()
    machine = machine_info(device)
    vectors = vectors or (QUICK_VECTORS if quick else DEFAULT_VECTORS)
    clips = clips or (QUICK_CLIPS if quick else DEFAULT_CLIPS)
    batch_queries = batch_queries or (1000 if quick else 2000)
    recall_queries = recall_queries or (300 if quick else 1000)
    temporary = tempfile.TemporaryDirectory(prefix="jsar-bench-") if work_dir is None else None
    root = Path(temporary.name if temporary else work_dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        if checkpoint is None and (indexing or vectors_from is None):
            checkpoint = make_random_checkpoint(root / "random-cpu-jsa.pt", seed=seed)
            logger.info(f"random cpu-config JSA checkpoint: {checkpoint}")
        if data_dir is None and (indexing or vectors_from is None):
            logger.info(f"making {clips} synthetic clips")
            data_dir = make_synthetic_data(root / "synthetic", clips, seed)
        clip_index = root / "clip-index"
        if clip_index.exists():
            shutil.rmtree(clip_index)
        indexing_bench = None
        if indexing:
            logger.info("indexing benchmark: bare encoders, index_dataset, decode-only")
            indexing_bench = bench_indexing(data_dir, checkpoint, clip_index, batch_size, workers, device=device)
        elif faiss_scale and vectors_from is None:
            index_dataset(Path(data_dir), Path(checkpoint), clip_index, batch_size=batch_size, num_workers=workers,
                          device=device, progress=False)
        faiss_bench = None
        if faiss_scale:
            image, audio = _store_vectors(Path(vectors_from) if vectors_from else clip_index)
            scale_dir = root / "scale-index"
            if scale_dir.exists():
                shutil.rmtree(scale_dir)
            faiss_bench = bench_faiss_scale(
                scale_dir, image, audio, vectors=vectors, dim=dim, sigma=sigma, factory=factory,
                latency_queries=latency_queries, batch_queries=batch_queries, recall_queries=recall_queries,
                sweep_values=sweep_values, seed=seed, compare=compare)
            if temporary is None:
                shutil.rmtree(scale_dir)  # gigabytes: a kept work folder keeps the clips, not the scale store
        report = BenchReport(machine=machine, indexing=indexing_bench, faiss_scale=faiss_bench,
                             seconds=time.perf_counter() - started)
    finally:
        if temporary is not None:
            temporary.cleanup()
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return report
