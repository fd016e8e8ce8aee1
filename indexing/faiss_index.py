"""FAISS indexes over the embedding store: build (train on a seeded sample, fill by streaming), save, load,
place on GPUs and search.

Two indexes per store: INDEX_DIR/image.faiss holds the image vectors and answers audio queries,
INDEX_DIR/audio.faiss holds the audio vectors and answers image queries. Index ids are store row numbers
(vectors are added in row order), so a hit maps straight to `EmbeddingStore.record(row)`.
INDEX_DIR/index.json records the choice, its search parameters, the sizes and the store's fingerprint
and id digest, so indexes are never used with vectors of another model or a store that has changed.

Search parameters are calibrated, not guessed: the store holds each row's paired vector of the other modality,
real cross-modal queries, so `calibrated_search_params` searches a sample of them over a grid of the index's
parameters (nprobe of IVF, efSearch of HNSW, and jointly the shortlist factor k_factor of a refine stage) and
keeps the cheapest point whose recall@10 against exact search reaches CALIBRATION_RECALL. Per call, `search`
picks the threads: a batch over every core (faiss's default of one query per thread), one query on one thread
(`SINGLE_QUERY_PARALLEL`), or, asked for, one query's IVF fast-scan lists split over the cores (faiss `implem`
14/15).
"""
from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import shutil
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import faiss
import numpy as np
from tqdm import tqdm

from jsa_retrieval.files import replace_atomically
from jsa_retrieval.machine import usable_cores
from jsa_retrieval.metrics import rank_by_similarity

from indexing.index_choice import (QUANTIZER_EF_SEARCH, QUANTIZER_TRAIN_SIZE, IndexChoice, choose_index,
                                   coupled_search_params)
from indexing.scann_index import ScannIndex, build_scann_index, is_scann_factory, load_scann_index
from indexing.store import VECTOR_FIELDS, EmbeddingStore, FingerprintMismatch, l2_normalise

INDEX_JSON = "index.json"
INDEX_FILES = {"image": ("image_vectors", "image.faiss"), "audio": ("audio_vectors", "audio.faiss")}
PAIRED_FIELD = {"image_vectors": "audio_vectors", "audio_vectors": "image_vectors"}  # the query modality's vectors
BLAS_THRESHOLD = 16  # FAISS default 20: batches of 16-19 queries otherwise take the slow scalar path (5.7-8x)
INDEX_FORMAT_VERSION = 1
PROGRESS_MIN_ROWS = 100_000  # smaller indexes build in about a second: no bar
# nprobe steps of a quarter up to 64 lists: at 1M image->audio reached the recall at 28 lists (FAISS) and 40 leaves
# (ScaNN) where the old ladder took 32 and 48
CALIBRATION_LADDERS = {"nprobe": (4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96, 128, 192, 256, 384, 512),
                       "efSearch": (16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 448, 512, 768, 1024),
                       "k_factor_rf": (4, 8, 16, 24, 32, 48, 64, 96, 128)}
# Cost model of one query, to rank calibration points by (measured at 1M x 512 on 2 cores, faiss 1.15.1): scanning
# 4-bit fast-scan codes costs about 0.09 ns a code byte (nprobe 16 -> 256 over lists of 500 x 128-byte codes added
# 1.37 ms), re-ranking a shortlisted candidate about 0.3 ns a byte of its stored vector (0.6 us for 2 KB floats,
# read at random). A model rather than a stopwatch: calibration then picks the same point on a loaded machine.
SCAN_NS_PER_CODE_BYTE = 0.09
REFINE_NS_PER_BYTE = 0.3
SINGLE_QUERY_IMPLEM = {False: 14, True: 15}  # IVF fast-scan, one query: lists split over threads (heap, reservoir)
SINGLE_QUERY_PARALLEL = False  # one query on one thread: with residual codes a query scans 16-32 lists, which
# split over 2 cores took 0.80-1.21x the one-thread time at 1M x 512 (no steady gain); in the service the split also
# woke faiss's OpenMP team beside torch's (two runtimes spinning for the same cores): a warm search 16.5 -> 14.8 ms
RESERVOIR_MIN_K = 21  # faiss's own rule: a reservoir rather than a heap for k > 20
CALIBRATION_QUERIES = 1000  # a few seconds of exact search at 1M; 300 left recall's standard error at about 0.004
EXACT_BLOCK_BYTES = 1 << 28  # similarities of exact search held at once: 256 MB of float32
CALIBRATION_RECALL = 0.955  # a margin over the 0.95 goal of two standard errors of 1,000 queries' mean recall@10
#                             (a query's recall@10 varies by about 0.07 around 0.95); 0.96 with 300 queries before

logger = logging.getLogger(__name__)


@functools.cache
def configure_faiss() -> int:
    """Once per process: BLAS for small query batches and one OpenMP thread per usable core. Returns threads."""
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    threads = usable_cores()
    faiss.omp_set_num_threads(threads)
    return threads


def num_gpus() -> int:
    """GPUs FAISS can use: 0 with faiss-cpu, and 0 with faiss-gpu on a machine without a GPU."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


def sample_rows(store: EmbeddingStore, field: str, size: int, seed: int = 0) -> np.ndarray:
    """(size, d) float32 rows drawn without replacement (seeded), read chunk by chunk in row order."""
    size = min(int(size), len(store))
    rows = np.sort(np.random.default_rng(seed).choice(len(store), size=size, replace=False))
    return store.read_rows(field, rows)


def build_index(store: EmbeddingStore, field: str = "image_vectors", choice: IndexChoice | None = None,
                chunk_rows: int = 65536, seed: int = 0, progress: bool = True) -> faiss.Index:
    """Train `choice.factory` on a seeded sample of `field` and add every row, `chunk_rows` at a time.

    Ids are row numbers because rows are added in order. Memory: the index, the training sample and one chunk.
    """
    threads = configure_faiss()
    if field not in VECTOR_FIELDS:
        raise ValueError(f"field must be one of {VECTOR_FIELDS}, got {field!r}")
    choice = choice or choose_index(len(store), store.dim)
    if is_scann_factory(choice.factory):
        return build_scann_index(store, field, choice.factory, choice.search_params, choice.train_size, threads,
                                 chunk_rows, seed)
    index = faiss.index_factory(store.dim, choice.factory, faiss.METRIC_INNER_PRODUCT)
    _prepare_for_training(index, choice.build_params)
    if not index.is_trained:
        if len(store) == 0:
            raise ValueError(f"{choice.factory} needs training vectors but the store is empty")
        sample = sample_rows(store, field, choice.train_size or QUANTIZER_TRAIN_SIZE, seed)
        _train(index, sample)
        del sample
    with tqdm(total=len(store), desc=f"FAISS {choice.factory} <- {field}", unit="vec", leave=False,
              disable=not progress or len(store) < PROGRESS_MIN_ROWS) as bar:
        for _, block in store.iter_chunks(field, chunk_rows):
            index.add(np.ascontiguousarray(block))
            bar.update(len(block))
    apply_search_params(index, choice.search_params)
    return index


def calibrated_search_params(index: faiss.Index, store: EmbeddingStore, field: str, choice: IndexChoice,
                             chunk_rows: int = 65536, seed: int = 0, k: int = 10,
                             fixed: dict[str, int] | None = None) -> dict[str, Any]:
    """The search parameters this index will use, measured rather than guessed: over the index's calibration grid
    (`calibration_grid`: nprobe of IVF or efSearch of HNSW, jointly with k_factor_rf of a refine stage), the
    cheapest point by `query_cost` whose recall@k reaches CALIBRATION_RECALL for CALIBRATION_QUERIES paired
    vectors of the other modality (real cross-modal queries the store holds), against exact search over `field`.
    `fixed` parameters are held at their values. Returns {'search_params': ..., 'calibration_recall': recall@k}
    (no recall where nothing is tuned); the index is left set to the chosen point."""
    fixed = dict(fixed or {})
    grid = calibration_grid(index, fixed)
    if not grid or len(store) <= k:
        params = effective_search_params(index, {**choice.search_params, **fixed})
        apply_search_params(index, params)
        return {"search_params": params}
    rows = np.sort(np.random.default_rng([seed, 2]).choice(len(store), min(CALIBRATION_QUERIES, len(store)),
                                                          replace=False))
    queries = store.read_rows(PAIRED_FIELD[field], rows)
    exact = exact_top_k(store.iter_chunks(field, chunk_rows), queries, k)
    point, recall = calibrate(index, grid, queries, exact)
    logger.info("%s over %s: %s reaches recall@%d %.3f on %d paired queries", choice.factory, field, point, k, recall,
                rows.size)
    return {"search_params": effective_search_params(index, {**choice.search_params, **fixed, **point}),
            "calibration_recall": round(recall, 4)}


def calibration_ladder(index: faiss.Index) -> tuple[str | None, tuple[int, ...]]:
    """The recall/speed parameter of `index`'s first stage and the values calibration tries (nprobe up to nlist;
    a ScaNN index's leaves searched go by the same name)."""
    if isinstance(index, ScannIndex):
        return "nprobe", tuple(v for v in CALIBRATION_LADDERS["nprobe"] if v < index.leaves) + (index.leaves,)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return "nprobe", tuple(v for v in CALIBRATION_LADDERS["nprobe"] if v < ivf.nlist) + (int(ivf.nlist),)
    if any(isinstance(part, faiss.IndexHNSW) for part in _nested_indexes(index)):
        return "efSearch", CALIBRATION_LADDERS["efSearch"]
    return None, ()


def calibration_grid(index: faiss.Index, fixed: dict[str, int] | None = None) -> list[dict[str, int]]:
    """Every point calibration may try: the first stage's ladder (`calibration_ladder`) crossed with the refine
    stage's shortlist factors (k_factor_rf) when the index re-ranks; parameters in `fixed` are left out of the
    grid (held at their values). Ordered by the first stage's value, then the factor."""
    fixed = fixed or {}
    axes: list[tuple[str, tuple[int, ...]]] = []
    name, ladder = calibration_ladder(index)
    if name is not None and name not in fixed:
        axes.append((name, ladder))
    if (_refine_stage(index) is not None or isinstance(index, ScannIndex)) and "k_factor_rf" not in fixed:
        axes.append(("k_factor_rf", CALIBRATION_LADDERS["k_factor_rf"]))
    points: list[dict[str, int]] = [{}]
    for axis, values in axes:
        points = [{**point, axis: int(value)} for point in points for value in values]
    return points if axes else []


def query_cost(index: faiss.Index, params: dict[str, int], k: int = 10) -> float:
    """Modelled nanoseconds of one query at `params` beyond the fixed part (coarse quantizer, the call): the IVF
    lists' codes scanned plus the refine stage's shortlist read at random (SCAN_NS_PER_CODE_BYTE,
    REFINE_NS_PER_BYTE); HNSW's cost is its efSearch."""
    if isinstance(index, ScannIndex):
        return index.query_cost(params, k, SCAN_NS_PER_CODE_BYTE, REFINE_NS_PER_BYTE)
    params = effective_search_params(index, params)  # the shortlist the search will really re-rank
    cost = 0.0
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        nprobe = params.get("nprobe", ivf.nprobe)
        cost += nprobe * max(ivf.ntotal, 1) / max(ivf.nlist, 1) * ivf.code_size * SCAN_NS_PER_CODE_BYTE
    elif "efSearch" in params:
        cost += params["efSearch"]
    refine = _refine_stage(index)
    if refine is not None:
        stored = faiss.downcast_index(refine.refine_index)
        bytes_per_vector = getattr(stored, "code_size", 4 * index.d)
        cost += k * params.get("k_factor_rf", refine.k_factor) * bytes_per_vector * REFINE_NS_PER_BYTE
    return cost


def calibrate(index: faiss.Index, grid: list[dict[str, int]], queries: np.ndarray, exact_ids: np.ndarray,
              target: float = CALIBRATION_RECALL) -> tuple[dict[str, int], float]:
    """The cheapest point of `grid` (by `query_cost`) whose recall@k of (Q, d) `queries` against `exact_ids` (Q, k)
    reaches `target`; the most expensive point if none does. Points are searched with per-call parameters
    (`search_parameters`, the index untouched) from the cheapest up, stopping at the first that reaches the
    target; a point with no more of any parameter than one that missed is skipped (recall grows with each).
    Returns (point, its recall), the index left set to the point."""
    k = exact_ids.shape[1]
    ranked = sorted(grid, key=lambda point: (query_cost(index, point, k), tuple(point.values())))
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    chosen, recall, missed = ranked[-1], None, []
    for point in ranked:
        if any(all(point[name] <= low[name] for name in point) for low in missed):
            continue  # no more lists and no longer a shortlist than a point that missed: it misses too
        found = index.search(queries, k, params=search_parameters(index, point))[1]
        point_recall = neighbour_recall_at_k(found, exact_ids, k)
        if point_recall >= target:
            chosen, recall = point, point_recall
            break
        missed.append(point)
    if recall is None:  # none reached the target: the most expensive point, measured
        recall = neighbour_recall_at_k(index.search(queries, k, params=search_parameters(index, chosen))[1],
                                       exact_ids, k)
    apply_search_params(index, chosen)
    return dict(chosen), recall


def calibrate_search_param(index: faiss.Index, name: str, ladder: Iterable[int], queries: np.ndarray,
                           exact_ids: np.ndarray, target: float = CALIBRATION_RECALL) -> tuple[int, float]:
    """One parameter alone (`calibrate` over the grid of `ladder`'s values of `name`): the smallest value whose
    recall@k reaches `target`, else the last. Returns (value, its recall), the index left set to it."""
    point, recall = calibrate(index, [{name: int(value)} for value in ladder], queries, exact_ids, target)
    return point[name], recall


def neighbour_recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found top-k ∩ truth top-k| / k; ids < 0 (no result) never count."""
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"found has {found.shape[0]} queries, truth {truth.shape[0]}")
    if found.shape[0] == 0:
        return 0.0
    hits = [len(set(row[:k][row[:k] >= 0].tolist()) & set(exact[:k].tolist())) for row, exact in zip(found, truth)]
    return float(np.mean(hits)) / k


def _refine_stage(index: faiss.Index) -> Any:
    """The IndexRefine (or IndexRefineFlat) at the top of `index`, or None (a ScaNN index re-ranks inside)."""
    if isinstance(index, ScannIndex):
        return None
    top = faiss.downcast_index(index)
    return top if isinstance(top, faiss.IndexRefine) else None


def first_stage(index: faiss.Index) -> faiss.Index:
    """The index whose (approximate) scores pick a refine stage's shortlist; `index` itself without one."""
    refine = _refine_stage(index)
    return faiss.downcast_index(refine.base_index) if refine is not None else index


def search_parameters(index: faiss.Index, params: dict[str, int]) -> faiss.SearchParameters | None:
    """Per-call faiss parameters for `params` (nprobe, efSearch, k_factor_rf): an IndexRefineSearchParameters
    around the first stage's own, so a search at other settings never changes the shared index. The nested
    objects are kept alive on the returned one (faiss holds raw pointers). A ScaNN index takes the dict itself."""
    if isinstance(index, ScannIndex):
        return dict(params)
    refine = _refine_stage(index)
    first = faiss.downcast_index(first_stage(index))
    inner: faiss.SearchParameters | None = None
    if isinstance(first, faiss.IndexIVF):
        inner = (faiss.IVFRaBitQSearchParameters()
                 if isinstance(first, (faiss.IndexIVFRaBitQFastScan, faiss.IndexIVFRaBitQ))
                 else faiss.IVFSearchParameters())
        inner.nprobe = int(params.get("nprobe", first.nprobe))
        if isinstance(inner, faiss.IVFRaBitQSearchParameters):
            inner.qb, inner.centered = first.qb, first.centered
        if _hnsw_quantizer(first) is not None:  # the graph's walk follows the lists asked for
            walk = faiss.SearchParametersHNSW()
            walk.efSearch = effective_search_params(first, {"nprobe": inner.nprobe, **params})["quantizer_efSearch"]
            inner.quantizer_params = walk
            inner.referenced_objects = [walk]
    elif isinstance(first, faiss.IndexHNSW):
        inner = faiss.SearchParametersHNSW()
        inner.efSearch = int(params.get("efSearch", first.hnsw.efSearch))
    if refine is None:
        return inner
    outer = faiss.IndexRefineSearchParameters()
    shortlist = effective_search_params(index, {"k_factor_rf": int(refine.k_factor), **params})["k_factor_rf"]
    outer.k_factor = float(shortlist)
    if inner is not None:
        outer.base_index_params = inner
        outer.referenced_objects = [inner]  # inner keeps its own quantizer parameters alive
    return outer


def exact_top_k(blocks: Iterable[tuple[int, np.ndarray]], queries: np.ndarray, k: int,
                block_bytes: int = EXACT_BLOCK_BYTES) -> np.ndarray:
    """(Q, min(k, N)) gallery rows of the exact inner-product top k of (Q, d) `queries`, most similar first.

    The gallery comes as (first row, (n, d) block) pairs in row order (`store.iter_chunks(field)`, or
    `[(0, vectors)]`), so a store is never loaded whole. Ties go to the lower row (`metrics.rank_by_similarity`'s
    rule), so the ranking is reproducible and does not depend on an index or a BLAS. Scores are computed a slice
    of queries at a time (at most `block_bytes` of float32 similarities); within a block only the columns that
    reach some query's k-th largest score can enter any top k, and only those are merged with the best so far
    by a stable sort (earlier blocks first, so ties still go to the lower row). Cost: Q·N·d multiply-adds.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or k < 1:
        raise ValueError(f"need (Q, d) queries and k >= 1, got {queries.shape} and k={k}")
    best_scores = np.zeros((queries.shape[0], 0), np.float32)
    best_rows = np.zeros((queries.shape[0], 0), np.int64)
    for start, block in blocks:
        block = np.ascontiguousarray(block, dtype=np.float32)
        if block.ndim != 2 or block.shape[1] != queries.shape[1]:
            raise ValueError(f"queries (Q, d) and gallery (N, d) must share d, got {queries.shape} and {block.shape}")
        if block.shape[0] == 0:
            continue
        width = min(k, best_rows.shape[1] + block.shape[0])
        merged_scores = np.empty((queries.shape[0], width), np.float32)
        merged_rows = np.empty((queries.shape[0], width), np.int64)
        step = max(1, block_bytes // (4 * block.shape[0]))
        for first in range(0, queries.shape[0], step):
            part = slice(first, first + step)
            scores = queries[part] @ block.T  # (q, n)
            depth = min(k, block.shape[0])
            kth = -np.partition(-scores, depth - 1, axis=1)[:, depth - 1:depth]  # each query's k-th best here
            columns = np.flatnonzero((scores >= kth).any(axis=0))
            candidates = np.concatenate([best_scores[part], scores[:, columns]], axis=1)
            rows = np.concatenate([best_rows[part], np.broadcast_to(columns + start, (len(scores), columns.size))],
                                  axis=1)
            order = rank_by_similarity(candidates, width)
            merged_scores[part] = np.take_along_axis(candidates, order, axis=1)
            merged_rows[part] = np.take_along_axis(rows, order, axis=1)
        best_scores, best_rows = merged_scores, merged_rows
    return best_rows


def _prepare_for_training(index: faiss.Index, build_params: dict[str, int]) -> None:
    """Switch off polysemous training (Hamming filtering we never use; minutes of annealing) and set efConstruction."""
    for part in _nested_indexes(index):
        if hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False
        if hasattr(part, "hnsw") and "efConstruction" in build_params:
            part.hnsw.efConstruction = int(build_params["efConstruction"])


def _nested_indexes(index: faiss.Index) -> list[Any]:
    """The index and the indexes wrapped inside it (pre-transform, refine, IVF quantizer), downcast."""
    found, pending = [], [index]
    while pending:
        part = faiss.downcast_index(pending.pop())
        found.append(part)
        for attribute in ("index", "base_index", "quantizer"):
            inner = getattr(part, attribute, None)
            if isinstance(inner, faiss.Index):
                pending.append(inner)
    return found


def _train(index: faiss.Index, sample: np.ndarray) -> None:
    """Train; with GPUs present the IVF k-means assignment runs on them (the slow part for large nlist)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or num_gpus() == 0:
        index.train(sample)
        return
    clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.metric_type))
    ivf.clustering_index = clustering_index
    try:
        index.train(sample)
    finally:
        ivf.clustering_index = None  # the GPU index is freed with this Python object: drop the raw pointer


def apply_search_params(index: faiss.Index, search_params: dict[str, int] | None) -> faiss.Index:
    """Set nprobe / efSearch / k_factor_rf / quantizer_efSearch explicitly (files and GPU clones may not keep them),
    with the parameters that follow others set from them (`effective_search_params`)."""
    if isinstance(index, ScannIndex):
        index.set_params(search_params)
    elif search_params:
        space = faiss.GpuParameterSpace() if num_gpus() > 0 else faiss.ParameterSpace()
        for name, value in effective_search_params(index, search_params).items():
            space.set_index_parameter(index, name, float(value))
    return index


def effective_search_params(index: faiss.Index, search_params: dict[str, int]) -> dict[str, int]:
    """`search_params` as `index` must be searched with them: where its IVF lists are found through an HNSW graph
    and the call sets nprobe or the graph's efSearch, `quantizer_efSearch` (QUANTIZER_EF_SEARCH unless given) is
    raised to nprobe (index_choice.coupled_search_params: a walk shorter than nprobe hands some queries fewer
    lists, and fast-scan then scores all their codes alike). The one rule both `apply_search_params` (the index
    as `jsar query`, `jsar serve`, the Engine and the bench search it) and `search_parameters` (per call, as
    calibration searches) follow."""
    params = dict(search_params)
    if isinstance(index, ScannIndex) or not {"nprobe", "quantizer_efSearch"} & params.keys():
        return params
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return params
    params.setdefault("nprobe", int(ivf.nprobe))
    if _hnsw_quantizer(ivf) is not None:
        params.setdefault("quantizer_efSearch", QUANTIZER_EF_SEARCH)
    refine = _refine_stage(index)
    if refine is not None:
        params.setdefault("k_factor_rf", int(refine.k_factor))
    return coupled_search_params(params)


def _hnsw_quantizer(ivf: faiss.Index) -> Any:
    """The HNSW graph over the lists' centroids of IVF index `ivf`, or None (a flat quantizer)."""
    quantizer = faiss.downcast_index(faiss.downcast_index(ivf).quantizer)
    return quantizer if isinstance(quantizer, faiss.IndexHNSW) else None


def to_cpu(index: faiss.Index) -> faiss.Index:
    """A CPU copy of a GPU index (what write_index needs); CPU indexes are returned unchanged."""
    if num_gpus() > 0 and _is_gpu_index(index):
        return faiss.index_gpu_to_cpu(index)
    return index


def _is_gpu_index(index: faiss.Index) -> bool:
    if isinstance(index, ScannIndex):
        return False
    names = ("GpuIndex", "IndexShards", "IndexReplicas")  # multi-GPU clones are shards or replicas of GpuIndex
    gpu_types = tuple(getattr(faiss, name) for name in names if hasattr(faiss, name))
    return isinstance(faiss.downcast_index(index), gpu_types) if gpu_types else False


def to_gpu(index: faiss.Index, shard: bool = False, search_params: dict[str, int] | None = None,
           use_float16: bool = False) -> faiss.Index:
    """Place an index on all GPUs (replicated, or sharded with `shard`); without GPUs return it unchanged.

    A faiss-gpu build on a machine without GPUs would otherwise return an empty index that fails on
    search. Index types FAISS cannot clone to GPUs (HNSW, for one) stay on the CPU, with a warning.
    GPU search takes k <= 2048.
    """
    if num_gpus() == 0 or isinstance(index, ScannIndex):  # ScaNN searches on the CPU
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.shard = shard
    options.useFloat16 = use_float16
    try:
        placed = faiss.index_cpu_to_all_gpus(index, co=options)
    except RuntimeError as error:
        warnings.warn(f"this index type cannot run on GPU ({str(error).splitlines()[0]}); searching on CPU")
        return index
    return apply_search_params(placed, search_params)


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """Write atomically (temp file in the same folder, fsync, rename), copying a GPU index to the CPU first."""
    path = Path(path)
    if isinstance(index, ScannIndex):
        return index.save(path)
    temp = path.with_name(f".tmp-{path.name}")
    faiss.write_index(to_cpu(index), str(temp))
    replace_atomically(temp, path)
    return path


def index_bytes(path: str | Path) -> int:
    """Bytes on disk of an index file, or of a ScaNN index's folder."""
    path = Path(path)
    return sum(part.stat().st_size for part in path.iterdir()) if path.is_dir() else path.stat().st_size


def load_index(path: str | Path, search_params: dict[str, int] | None = None) -> faiss.Index:
    """Read an index (a ScaNN index is a folder) and re-apply its search parameters explicitly rather than
    trusting what the file kept."""
    threads = configure_faiss()
    if Path(path).is_dir():
        return load_scann_index(path, search_params, threads)
    return apply_search_params(faiss.read_index(str(path)), search_params)


def search(index: faiss.Index, queries: np.ndarray, k: int,
           single_query_parallel: bool = SINGLE_QUERY_PARALLEL) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product of L2-normalised queries (cosine). queries (Q, d) or (d,) -> scores, ids (Q, k').

    k' = min(k, ntotal), minus trailing columns where no query found anything (IVF lists can hold fewer
    than k vectors); any remaining gap is id -1 with score -inf. ids are store row numbers.
    The call runs on `call_threads` threads: a batch on every core; one query on one thread, or with
    `single_query_parallel` on IVF fast-scan lists, on faiss's path that splits its lists over every core.
    """
    configure_faiss()
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    matrix = np.asarray(queries, dtype=np.float32)
    matrix = matrix[None, :] if matrix.ndim == 1 else matrix
    if matrix.ndim != 2 or matrix.shape[1] != index.d:
        raise ValueError(f"queries must be (Q, {index.d}), got {np.shape(queries)}")
    depth = min(int(k), int(index.ntotal))
    if depth == 0 or matrix.shape[0] == 0:
        return np.zeros((matrix.shape[0], 0), np.float32), np.zeros((matrix.shape[0], 0), np.int64)
    fast_scan, refine = _search_stages(index)
    parallel_one = single_query_parallel and fast_scan is not None and matrix.shape[0] == 1
    if fast_scan is not None:  # one index object serves all threads: the path follows this call's size
        wanted = depth * _shortlist_factor(refine)
        fast_scan.implem = SINGLE_QUERY_IMPLEM[wanted >= RESERVOIR_MIN_K] if parallel_one else 0
    with omp_threads(call_threads(matrix.shape[0], parallel_one)):
        scores, ids = index.search(l2_normalise(matrix), depth)
    if (ids[:, -1] >= 0).all():  # every query found `depth` hits: faiss's fresh arrays as they are
        return scores, ids
    found = np.flatnonzero((ids >= 0).any(axis=0))
    width = int(found[-1]) + 1 if found.size else 0
    scores, ids = scores[:, :width].copy(), ids[:, :width].copy()
    scores[ids < 0] = -np.inf
    return scores, ids


def single_query_path(index: faiss.Index, parallel: bool = SINGLE_QUERY_PARALLEL) -> str:
    """How `search` runs one query on `index` (recorded in index.json beside the search parameters)."""
    fast_scan = _fast_scan_lists(index)
    if fast_scan is None or not parallel:
        return "one thread"
    implem = SINGLE_QUERY_IMPLEM[10 * _shortlist_factor(_refine_stage(index)) >= RESERVOIR_MIN_K]
    return f"fast-scan implem {implem}: the query's lists split over {configure_faiss()} threads"


@contextmanager
def omp_threads(count: int) -> Iterator[None]:
    """faiss's OpenMP threads set to `count` for this thread within the block, and restored after (torch may
    share the thread and its OpenMP runtime)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def call_threads(num_queries: int, single_query_parallel: bool) -> int:
    """OpenMP threads for one call: every usable core for a batch, or for one query on a path that splits its work;
    one thread for a single query otherwise (faiss would run it on one thread anyway, and waking idle OpenMP
    threads costs more than the work of a small call). OpenMP keeps the setting per calling thread."""
    cores = configure_faiss()
    return cores if single_query_parallel or num_queries > 1 else 1


_SEARCH_STAGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _search_stages(index: faiss.Index) -> tuple[Any, Any]:
    """(`_fast_scan_lists`, `_refine_stage`) of the index object `index`, looked up once while it lives: each
    lookup walks SWIG proxies (about 12 us together), a fifth of what `search` added to a 0.05 ms query."""
    stages = _SEARCH_STAGES.get(index)
    if stages is None:
        stages = _SEARCH_STAGES[index] = (_fast_scan_lists(index), _refine_stage(index))
    return stages


def _fast_scan_lists(index: faiss.Index) -> Any:
    """The IndexIVFFastScan (PQ or RaBitQ fast-scan lists) that answers `index`'s first stage, or None."""
    ivf = None if isinstance(index, ScannIndex) else faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    ivf = faiss.downcast_index(ivf)
    return ivf if isinstance(ivf, faiss.IndexIVFFastScan) else None


def _shortlist_factor(refine: Any) -> int:
    """How many candidates per wanted hit the first stage returns: the refine stage's k_factor, 1 without one
    (`refine` is `_refine_stage(index)`)."""
    return int(refine.k_factor) if refine is not None else 1


@dataclass
class RetrievalIndexes:
    """Both directions over one store: `image` answers audio queries, `audio` answers image queries."""

    image: faiss.Index
    audio: faiss.Index
    info: dict[str, Any]
    store: EmbeddingStore

    def audio_to_image(self, audio_queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, d) audio vectors -> scores, store rows (Q, k') of the best-matching images."""
        return search(self.image, audio_queries, k)

    def image_to_audio(self, image_queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, d) image vectors -> scores, store rows (Q, k') of the best-matching audio."""
        return search(self.audio, image_queries, k)


def build_indexes(index_dir: str | Path, factory: str | None = None, memory_budget: int | None = None,
                  chunk_rows: int = 65536, seed: int = 0, gpu: bool | None = None, calibrate: bool | None = None,
                  fixed_params: dict[str, int] | None = None, progress: bool = True) -> dict[str, Any]:
    """Build image.faiss and audio.faiss over INDEX_DIR/store.h5 and write index.json; returns its content.

    memory_budget (bytes) is for both indexes together, so each gets half. `gpu` (default: GPUs present)
    only steers the choice towards GPU-capable types; files are always written as CPU indexes. Search parameters
    are calibrated per modality (`calibrated_search_params`) when `calibrate` (default: only for the automatic
    choice; a named factory is used as named), holding `fixed_params` at their values. `progress`: a bar while a
    large store's vectors are added.
    """
    index_dir = Path(index_dir)
    with EmbeddingStore.open(index_dir) as store:
        use_gpu = num_gpus() > 0 if gpu is None else gpu
        budget = None if memory_budget is None else memory_budget // 2
        choice = choose_index(len(store), store.dim, budget, gpu=use_gpu, factory=factory)
        calibrate = factory is None if calibrate is None else calibrate
        entries = {}
        for name, (field, file_name) in INDEX_FILES.items():
            if is_scann_factory(choice.factory):
                file_name = Path(file_name).with_suffix(".scann").name  # a folder of ScaNN's files
            index = build_index(store, field, choice, chunk_rows, seed, progress)
            searched = (calibrated_search_params(index, store, field, choice, chunk_rows, seed, fixed=fixed_params)
                        if calibrate else {"search_params": effective_search_params(
                            index, {**choice.search_params, **(fixed_params or {})})})
            save_index(index, index_dir / file_name)
            entries[name] = {"file": file_name, "field": field, "ntotal": int(index.ntotal),
                             "answers": "audio queries" if name == "image" else "image queries", **searched,
                             "single_query_path": single_query_path(index)}
            del index
        info = {"format_version": INDEX_FORMAT_VERSION, "fingerprint": store.meta.fingerprint,
                "model_name": store.meta.model_name, "store_rows": len(store), "store_ids_sha256": store.ids_sha256,
                "dim": store.dim, "metric": "inner_product", "choice": choice.to_dict(), "indexes": entries,
                "seed": seed, "memory_budget_bytes": memory_budget, "faiss_version": faiss.__version__}
        if is_scann_factory(choice.factory):
            info["scann_version"] = importlib.metadata.version("scann")
    temp = index_dir / f".tmp-{INDEX_JSON}"
    temp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    replace_atomically(temp, index_dir / INDEX_JSON)
    _remove_unreferenced_indexes(index_dir, entries)
    return info


def _remove_unreferenced_indexes(index_dir: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Once index.json names the new files, drop a modality's index of the other kind (image.faiss after a ScaNN
    build, image.scann after a FAISS one): gigabytes at scale that nothing reads any more."""
    for name, (_, file_name) in INDEX_FILES.items():
        for kind in (index_dir / file_name, (index_dir / file_name).with_suffix(".scann")):
            if kind.name != entries[name]["file"] and kind.exists():
                shutil.rmtree(kind) if kind.is_dir() else kind.unlink()


def index_search_params(info: dict[str, Any], name: str) -> dict[str, int]:
    """Search parameters of index `name` ('image' or 'audio') recorded in index.json: its own (calibrated) ones,
    else the choice's (index.json files written before calibration)."""
    return info["indexes"][name].get("search_params", info["choice"]["search_params"])


def open_indexes(index_dir: str | Path, gpu: bool | None = None, shard: bool = False) -> RetrievalIndexes:
    """Load both indexes (on GPUs when present, unless gpu=False), refusing ones built on another store state."""
    index_dir = Path(index_dir)
    info_path = index_dir / INDEX_JSON
    if not info_path.exists():
        raise FileNotFoundError(f"no {INDEX_JSON} in {index_dir}; build the indexes first")
    info = json.loads(info_path.read_text())
    if "indexes" not in info:
        raise FileNotFoundError(f"{index_dir} holds no FAISS indexes (its {INDEX_JSON} records the "
                                f"{info.get('backend', 'unknown')!r} back end); build them with `jsar index` "
                                "without --backend milvus")
    store = EmbeddingStore.open(index_dir)
    if info["fingerprint"] != store.meta.fingerprint:
        raise FingerprintMismatch(
            f"indexes in {index_dir} were built from model fingerprint {info['fingerprint'][:12]} but the store "
            f"holds {store.meta.fingerprint[:12]}: rebuild the indexes")
    if info["store_rows"] != len(store) or info["store_ids_sha256"] != store.ids_sha256:
        raise FingerprintMismatch(
            f"indexes in {index_dir} cover {info['store_rows']} rows but the store now has {len(store)} "
            "(or other clips): rebuild the indexes")
    params = {name: index_search_params(info, name) for name in INDEX_FILES}
    loaded = {name: load_index(index_dir / info["indexes"][name]["file"], params[name]) for name in INDEX_FILES}
    use_gpu = num_gpus() > 0 if gpu is None else gpu
    if use_gpu:
        loaded = {name: to_gpu(index, shard=shard, search_params=params[name]) for name, index in loaded.items()}
    return RetrievalIndexes(image=loaded["image"], audio=loaded["audio"], info=info, store=store)
