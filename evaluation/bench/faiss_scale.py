"""Does the automatic FAISS choice meet "one query <= 5 ms at recall@10 >= 0.95" at 1,000,000 x 512, and at what
build time and memory?

The store is written through `StoreWriter` (bench.vectors) and indexed by `build_indexes`, the code a user runs.
Queries are cross-modal (audio vectors against the image index and the reverse); recall is measured against exact
FAISS flat search and against `faiss_index.exact_top_k` (numpy, stable ties), and a sweep of the index's search
parameter shows the recall/latency trade-off measured, not guessed. (The module is not called `faiss` so that
`import faiss` inside the package always means the library.)
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import faiss
import numpy as np

from indexing.faiss_index import (INDEX_FILES, apply_search_params, build_indexes, calibration_ladder,
                                  configure_faiss, effective_search_params, exact_top_k, first_stage,
                                  index_bytes, index_search_params,
                                  neighbour_recall_at_k, omp_threads, open_indexes, search,
                                  search_parameters)
from indexing.scann_index import ScannIndex
from indexing.store import EmbeddingStore, l2_normalise

from .config import TOP_K, FaissSettings
from .memory import PeakMemory
from .vectors import cross_modal_queries, prepare_bases, write_given_store, write_structured_store

logger = logging.getLogger(__name__)

LATENCY_GOAL_MS = 5.0
RECALL_GOAL = 0.95
FLAT_LATENCY_QUERIES = 20  # exact search reads all n*d floats per query: a few queries give its latency
SWEEP_VALUES = {"nprobe": (8, 16, 24, 32, 48, 64, 128, 256), "efSearch": (16, 32, 64, 128, 256, 512)}
DIRECTIONS = {"audio->image": ("audio", "image"), "image->audio": ("image", "audio")}  # (query side, index side)
CHUNK_ROWS = 65536
MARGIN_DEPTH = 640  # the shortlist re-ranked before calibration (k 10 x k_factor 64)


# ------------------------------------------------------------------------------------------------ exact search
@dataclass
class ExactNeighbours:
    """Top-k of the same queries by exact FAISS flat search and by `exact_top_k` (numpy), with their timings."""

    flat_ids: np.ndarray  # (Q, k)
    numpy_ids: np.ndarray  # (Q, k)
    flat_seconds: float  # search only (adding the vectors is not part of a query)
    numpy_seconds: float  # matrix products and the top-k merge, reading the store excluded
    flat_index: faiss.Index


def exact_neighbours(store: EmbeddingStore, field_name: str, queries: np.ndarray, k: int = TOP_K,
                     chunk_rows: int = CHUNK_ROWS) -> ExactNeighbours:
    """One pass over the store: every chunk goes into an IndexFlatIP and through `exact_top_k`.

    Memory: the flat index (n * d floats) and one chunk with its similarities.
    """
    queries = l2_normalise(queries)
    flat = faiss.IndexFlatIP(store.dim)
    outside = [0.0]  # seconds spent reading chunks and filling the flat index, not searching
    began = time.perf_counter()
    numpy_ids = exact_top_k(_filling(flat, store.iter_chunks(field_name, chunk_rows), outside), queries, k)
    numpy_seconds = time.perf_counter() - began - outside[0]
    began = time.perf_counter()
    _, flat_ids = search(flat, queries, k)
    return ExactNeighbours(flat_ids=flat_ids, numpy_ids=numpy_ids, flat_seconds=time.perf_counter() - began,
                           numpy_seconds=numpy_seconds, flat_index=flat)


def _filling(flat: faiss.Index, chunks: Iterable[tuple[int, np.ndarray]],
             outside: list[float]) -> Iterator[tuple[int, np.ndarray]]:
    """The store's chunks, each added to `flat` on the way; the time spent here is added to outside[0]."""
    began = time.perf_counter()
    for start, block in chunks:
        flat.add(np.ascontiguousarray(block))
        outside[0] += time.perf_counter() - began
        yield start, block
        began = time.perf_counter()
    outside[0] += time.perf_counter() - began


@dataclass
class ExactDirection:
    """Exact top-k of one direction's recall queries and the cost of exact search: computed once per run and
    shared by every index the run measures (a pass over the whole store per direction)."""

    flat_ids: np.ndarray  # (Q, k)
    numpy_ids: np.ndarray  # (Q, k)
    flat_median_ms: float
    flat_qps: float
    numpy_qps: float
    margin_gap: np.ndarray  # (M,) exact k-th minus MARGIN_DEPTH-th score of the first M queries


def exact_direction(store: EmbeddingStore, field_name: str, queries: np.ndarray, recall_count: int,
                    chunk_rows: int = CHUNK_ROWS, k: int = TOP_K, margin_queries: int = 100) -> ExactDirection:
    """Exact neighbours of queries[:recall_count] (FAISS flat and numpy), the flat index's single-query time, and
    how far the k-th neighbour's score stands above the MARGIN_DEPTH-th for the first `margin_queries`."""
    exact = exact_neighbours(store, field_name, queries[:recall_count], k, chunk_rows)
    flat_latency = single_query_ms(exact.flat_index, queries[:FLAT_LATENCY_QUERIES], k)
    depth = min(MARGIN_DEPTH, exact.flat_index.ntotal)
    deep_scores, _ = search(exact.flat_index, queries[:margin_queries], depth)
    del exact.flat_index
    count = min(recall_count, queries.shape[0])
    return ExactDirection(flat_ids=exact.flat_ids, numpy_ids=exact.numpy_ids,
                          flat_median_ms=float(np.median(flat_latency)),
                          flat_qps=count / max(exact.flat_seconds, 1e-9),
                          numpy_qps=count / max(exact.numpy_seconds, 1e-9),
                          margin_gap=deep_scores[:, k - 1] - deep_scores[:, depth - 1])


def first_stage_error(index: faiss.Index, search_params: dict[str, int], store: EmbeddingStore, field_name: str,
                      queries: np.ndarray, depth: int = MARGIN_DEPTH) -> float:
    """Standard deviation of (first-stage score - exact score) over the first stage's top `depth` of (M, d)
    `queries` at `search_params`: the error the re-ranking has to undo. 0 for an index without approximation
    before its output (flat vectors); NaN for a ScaNN index, whose first-stage scores it does not expose."""
    if isinstance(index, ScannIndex):
        return float("nan")
    stage = first_stage(index)
    depth = min(depth, int(stage.ntotal))
    queries = l2_normalise(queries)
    estimates, rows = stage.search(queries, depth, params=search_parameters(stage, search_params))
    valid = rows >= 0
    vectors = store.read_rows(field_name, rows[valid])
    exact_scores = np.einsum("qd,qd->q", np.repeat(queries, valid.sum(axis=1), axis=0), vectors)
    return float(np.std(estimates[valid] - exact_scores))


# ------------------------------------------------------------------------------------------------ timing
def single_query_ms(index: faiss.Index, queries: np.ndarray, k: int = TOP_K, parallel: bool = False) -> np.ndarray:
    """(Q,) wall milliseconds of each query searched alone, through `faiss_index.search` as `jsar query` does
    (`parallel=True`: a query's fast-scan lists split over every core)."""
    times = np.empty(queries.shape[0])
    for i, query in enumerate(queries):
        began = time.perf_counter()
        search(index, query, k, single_query_parallel=parallel)
        times[i] = (time.perf_counter() - began) * 1000
    return times


def single_query_stages(index: faiss.Index, queries: np.ndarray, search_params: dict[str, int],
                        k: int = TOP_K) -> dict[str, float]:
    """Median milliseconds of one query, on one thread, stage by stage: the coarse quantizer alone (the nprobe
    nearest list centroids), the first stage alone (quantizer + list scan, returning the k x k_factor
    shortlist), the whole index (+ the re-ranking), and the whole index through `faiss_index.search` (+ the
    call's own work: normalising, thread setting, the copy of the answer). The differences say where a query's
    time goes; empty for an index without FAISS lists."""
    ivf = None if isinstance(index, ScannIndex) else faiss.try_extract_index_ivf(index)
    if ivf is None:
        return {}
    stage = first_stage(index)
    shortlist = k * int(search_params.get("k_factor_rf", 1))
    nprobe = int(search_params.get("nprobe", ivf.nprobe))
    queries = l2_normalise(queries)
    parts = {"coarse quantizer": lambda q: ivf.quantizer.search(q, nprobe),
             "first stage": lambda q: stage.search(q, shortlist, params=search_parameters(stage, search_params)),
             "whole index": lambda q: index.search(q, k, params=search_parameters(index, search_params)),
             "through search()": lambda q: search(index, q, k, single_query_parallel=False)}
    medians = {}
    with omp_threads(1):
        for name, run in parts.items():
            times = np.empty(queries.shape[0])
            for i in range(queries.shape[0]):
                began = time.perf_counter()
                run(queries[i:i + 1])
                times[i] = (time.perf_counter() - began) * 1000
            medians[name] = float(np.median(times))
    return medians


def batch_search(index: faiss.Index, queries: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, float]:
    """(Q, k) ids of one batched search and its throughput in queries/s."""
    began = time.perf_counter()
    _, ids = search(index, queries, k)
    return ids, queries.shape[0] / max(time.perf_counter() - began, 1e-9)


@dataclass
class SweepPoint:
    """Recall and single-query latency of one direction at one value of the search parameter, with every
    parameter the search ran with there (`applied`: the ones that follow it, e.g. the shortlist factor)."""

    value: int
    recall: float
    median_ms: float
    p95_ms: float
    applied: dict[str, int] = field(default_factory=dict)


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
                                     float(np.percentile(times, 95)),
                                     effective_search_params(index, {name: int(value)})))
    finally:
        apply_search_params(index, restore)
    return points


def sweep_values(index: faiss.Index, requested: Sequence[int] | None) -> tuple[str | None, list[int]]:
    """The index's recall/speed parameter (`faiss_index.calibration_ladder`'s) and the values to sweep:
    `requested` or its SWEEP_VALUES, nprobe kept to at most the index's nlist."""
    name, ladder = calibration_ladder(index)
    if name is None:
        return None, []
    values = list(requested if requested is not None else SWEEP_VALUES[name])
    if name == "nprobe":  # the ladder ends at nlist
        values = [value for value in values if value <= ladder[-1]]
    return name, values


# ------------------------------------------------------------------------------------------------ results
@dataclass
class DirectionBench:
    """One direction (e.g. audio vectors against the image index) at the chosen search parameters."""

    name: str
    median_ms: float
    p95_ms: float
    p99_ms: float
    split_median_ms: float  # the same queries with their fast-scan lists split over every core
    split_p99_ms: float
    batch_size: int
    batch_qps: float
    recall_vs_flat: float
    recall_vs_numpy: float
    flat_vs_numpy: float  # the two exact methods agree (1.0 up to float rounding of near-ties)
    flat_median_ms: float
    flat_qps: float
    numpy_qps: float
    margin_gap: float  # mean exact score of the 10th neighbour minus the 640th's
    first_stage_error: float  # std of the first stage's score error over its 640 candidates
    sweep: list[SweepPoint] = field(default_factory=list)
    stages_ms: dict[str, float] = field(default_factory=dict)  # single_query_stages: one query, stage by stage


@dataclass
class IndexBench:
    """One index type over the benchmark store: build cost, memory, and both directions measured."""

    factory: str
    label: str  # the factory, with the search parameters held fixed (e.g. '... | k_factor_rf=64')
    automatic: bool  # chosen by index_choice.choose_index (False: the caller named the factory)
    search_params: dict[str, int]
    sweep_param: str | None  # the parameter swept: nprobe, efSearch, or None for exact search
    reason: str
    build_seconds: float
    index_bytes: int  # both indexes' files on disk
    rss: dict[str, dict[str, int]]  # phase ('store', 'build', 'search') -> {'start': bytes, 'peak': bytes}
    directions: list[DirectionBench]


@dataclass
class FaissBench(IndexBench):
    """FAISS over a structured store: the automatic (or given) index, and any compared ones, on the same store
    and the same exact neighbours."""

    source: str  # 'noisy copies' of the model's vectors, or 'augmented encodings' of real clips
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


# ------------------------------------------------------------------------------------------------ the run
def _direction_bench(name: str, index: faiss.Index, queries: np.ndarray, exact: ExactDirection,
                     settings: FaissSettings, search_params: dict[str, int], k: int, store: EmbeddingStore,
                     field_name: str) -> DirectionBench:
    """Latency (both single-query paths), throughput, recall against the shared exact neighbours, the first
    stage's error against the exact score margin, and the sweep of one index."""
    recall_queries = queries[:settings.recall_queries]
    latency = single_query_ms(index, queries[:settings.latency_queries], k)
    split = single_query_ms(index, queries[:settings.latency_queries], k, parallel=True)
    _, qps = batch_search(index, queries[:settings.batch_queries], k)
    found, _ = batch_search(index, recall_queries, k)
    param, values = sweep_values(index, settings.sweep_values)
    sweep = []
    if param:
        sweep = sweep_search_param(index, param, values, queries[:settings.latency_queries], recall_queries,
                                   exact.flat_ids, search_params, k)
    return DirectionBench(
        name=name, median_ms=float(np.median(latency)), p95_ms=float(np.percentile(latency, 95)),
        p99_ms=float(np.percentile(latency, 99)), split_median_ms=float(np.median(split)),
        split_p99_ms=float(np.percentile(split, 99)), batch_size=min(settings.batch_queries, queries.shape[0]),
        batch_qps=qps, recall_vs_flat=neighbour_recall_at_k(found, exact.flat_ids, k),
        recall_vs_numpy=neighbour_recall_at_k(found, exact.numpy_ids, k),
        flat_vs_numpy=neighbour_recall_at_k(exact.flat_ids, exact.numpy_ids, k),
        flat_median_ms=exact.flat_median_ms, flat_qps=exact.flat_qps, numpy_qps=exact.numpy_qps,
        margin_gap=float(np.mean(exact.margin_gap)),
        first_stage_error=first_stage_error(index, search_params, store, field_name,
                                            queries[:exact.margin_gap.shape[0]]),
        sweep=sweep, stages_ms=single_query_stages(index, queries[:settings.latency_queries], search_params, k))


@dataclass
class GivenRows:
    """A store's rows given outright (bench.augmented's real encodings) instead of noisy copies, with each
    direction's queries: (n, dim) unit image and audio rows, direction -> (Q, dim) queries never in the store."""

    image: np.ndarray
    audio: np.ndarray
    queries: dict[str, np.ndarray]
    clips: int  # distinct clips behind the rows


def bench_faiss_scale(index_dir: str | Path, image: np.ndarray, audio: np.ndarray,
                      settings: FaissSettings | None = None, seed: int = 0, gpu: bool | None = False,
                      chunk_rows: int = CHUNK_ROWS, k: int = TOP_K, given: GivenRows | None = None) -> FaissBench:
    """Structured store of `settings.vectors` x `settings.dim` from the model's (m, d) `image`/`audio` vectors
    (or the rows of `given`, then `image`/`audio` are unused), indexes by `build_indexes` (automatic choice unless
    `settings.factory`), then both cross-modal directions measured; then the same for each entry of
    `settings.compare`, one after another, against the same exact neighbours. Every index's search parameters
    are calibrated by `build_indexes` (compare entries may hold some fixed).

    `index_dir` must be empty or missing. Sweep values default to SWEEP_VALUES of the index's parameter, up to
    nlist for IVF. gpu=False measures the CPU path even where faiss-gpu sees a GPU.
    """
    started = time.perf_counter()
    settings = (settings or FaissSettings()).resolved()
    index_dir = Path(index_dir)
    if index_dir.exists() and any(index_dir.iterdir()):
        raise ValueError(f"{index_dir} is not empty; the benchmark writes a fresh store there")
    threads = configure_faiss()
    bases = None if given is not None else prepare_bases(image, audio, settings.dim, seed)
    vectors = given.image.shape[0] if given is not None else settings.vectors
    logger.info(f"writing {vectors:,} x {settings.dim} {'given' if given else 'structured'} vectors (both "
                "modalities) through StoreWriter")
    with PeakMemory() as store_memory:
        began = time.perf_counter()
        if given is not None:
            write_given_store(index_dir, given.image, given.audio, seed, chunk_rows)
        else:
            write_structured_store(index_dir, bases, vectors, settings.sigma, seed, chunk_rows)
        store_seconds = time.perf_counter() - began
    with EmbeddingStore.open(index_dir) as store:
        rows = np.arange(min(vectors, 4096))
        sample, paired = store.read_rows("image_vectors", rows), store.read_rows("audio_vectors", rows)
        count = max(settings.latency_queries, settings.batch_queries, settings.recall_queries, FLAT_LATENCY_QUERIES)
        queries, exact = {}, {}
        for name, (query_side, index_side) in DIRECTIONS.items():
            logger.info(f"{name}: exact neighbours of {min(settings.recall_queries, count)} queries (flat + numpy)")
            queries[name] = (given.queries[name][:count] if given is not None
                             else cross_modal_queries(bases, query_side, count, settings.sigma, seed))
            exact[name] = exact_direction(store, f"{index_side}_vectors", queries[name], settings.recall_queries,
                                          chunk_rows, k, settings.margin_queries)
    measure = functools.partial(_index_bench, index_dir, queries=queries, exact=exact, settings=settings, seed=seed,
                                gpu=gpu, chunk_rows=chunk_rows, k=k)
    primary = measure(settings.factory)
    primary.rss["store"] = {"start": store_memory.start, "peak": store_memory.peak}
    compared = [measure(other) for other in settings.compare]
    base_rows = rows % (given.clips if given is not None else bases.image.shape[0])
    copy_cosine = (float("nan") if given is not None
                   else float(np.mean(np.sum(sample * bases.image[base_rows], 1))))
    return FaissBench(
        **{key: getattr(primary, key) for key in IndexBench.__dataclass_fields__},
        source="augmented encodings" if given is not None else "noisy copies",
        vectors=vectors, dim=settings.dim, base_clips=given.clips if given is not None else bases.image.shape[0],
        bases={} if bases is None else {key: value for key, value in dataclasses.asdict(bases).items()
                                        if key not in ("image", "audio")},
        sigma=settings.sigma if given is None else 0.0, copy_base_cosine=copy_cosine,
        pair_cosine=float(np.mean(np.sum(sample * paired, 1))),
        random_cosine=float(np.mean(np.sum(sample * np.roll(paired, 1, axis=0), 1))), faiss_threads=threads,
        store_seconds=store_seconds, peak_rss_exact=store_memory.exact, seconds=time.perf_counter() - started,
        compared=compared)


def compare_spec(spec: str | None) -> tuple[str | None, dict[str, int]]:
    """'FACTORY|name=value|...' -> (factory, {name: value}); a plain factory has no fixed parameters."""
    if spec is None:
        return None, {}
    factory, *fixed = spec.split("|")
    params = {}
    for item in fixed:
        name, _, value = item.partition("=")
        if not name.strip() or not value.strip().isdigit():
            raise ValueError(f"{spec!r}: after the factory, give search parameters as name=integer")
        params[name.strip()] = int(value)
    return factory.strip(), params


def _index_bench(index_dir: Path, spec: str | None, queries: dict[str, np.ndarray],
                 exact: dict[str, ExactDirection], settings: FaissSettings, seed: int, gpu: bool | None,
                 chunk_rows: int, k: int) -> IndexBench:
    """Build both indexes of `spec` (None: the automatic choice; else `compare_spec`'s factory and fixed search
    parameters) over the store in `index_dir`, replacing any built before, calibrated, and measure both
    directions."""
    factory, fixed = compare_spec(spec)
    logger.info(f"building both indexes ({spec or 'automatic choice'}) with build_indexes")
    with PeakMemory() as build_memory:
        began = time.perf_counter()
        info = build_indexes(index_dir, factory=factory, chunk_rows=chunk_rows, seed=seed, gpu=gpu, calibrate=True,
                             fixed_params=fixed)
        build_seconds = time.perf_counter() - began
    choice = info["choice"]
    files_bytes = sum(index_bytes(index_dir / entry["file"]) for entry in info["indexes"].values())
    directions = []
    with PeakMemory() as search_memory:
        indexes = open_indexes(index_dir, gpu=gpu)
        for name, (_, index_side) in DIRECTIONS.items():
            logger.info(f"{choice['factory']} {name}: latency, throughput, recall, margin, sweep")
            directions.append(_direction_bench(name, getattr(indexes, index_side), queries[name], exact[name],
                                               settings, index_search_params(info, index_side), k, indexes.store,
                                               f"{index_side}_vectors"))
        sweep_param = calibration_ladder(indexes.image)[0]
        indexes.store.close()
        del indexes
    own = {side: index_search_params(info, side) for side in INDEX_FILES}
    params = own["image"] if own["image"] == own["audio"] else {
        f"{side} index {key}": value for side, values in own.items() for key, value in values.items()}
    label = choice["factory"] + "".join(f" | {name}={value}" for name, value in fixed.items())
    return IndexBench(factory=choice["factory"], label=label, automatic=factory is None, search_params=params,
                      sweep_param=sweep_param, reason=choice["reason"], build_seconds=build_seconds,
                      index_bytes=files_bytes,
                      rss={"build": {"start": build_memory.start, "peak": build_memory.peak},
                           "search": {"start": search_memory.start, "peak": search_memory.peak}},
                      directions=directions)
