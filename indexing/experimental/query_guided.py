"""Query-guided cross-modal graph: HNSW over one modality, with extra edges guided by the paired vectors of the
other. Experimental: measured, not chosen (figures below); `build_query_guided_index` builds one from Python.

Cross-modal queries lie off the indexed modality's data (an audio query's neighbours among images are far from
it and from each other), so a graph built on the images alone leads them astray. RoarGraph (Chen et al.,
VLDB 2024) repairs this with a sample of queries: each sampled query's k nearest base points b_0..b_{k-1}
(the bipartite query->base kNN graph) are projected onto base-base edges b_0 <-> b_j, which connect points
that lie close *as seen from a query* although they lie apart in the base space. RoarGraph has to collect
such a query sample; jsar holds a perfect one, because every store row r carries both `image_vectors[r]` and
`audio_vectors[r]`: the paired vectors of the query modality.

Here the graph is a FAISS `IndexHNSWFlat`. Once it is built, `guide_rows` paired vectors are searched in it
(FAISS, at efSearch `GUIDE_EF`) and the projected edges are written into its level-0 neighbour lists: into
the free slots HNSW's pruning leaves (about a third of them), and where a node has too few, over its
farthest kept neighbours, at most `width // 2` of them. The result is still a plain `IndexHNSWFlat`: FAISS
saves, loads and searches it in C++, nothing runs in Python at query time. It is a CPU index (FAISS GPUs
do not run HNSW). Its efSearch is calibrated per modality on paired vectors of rows that did not guide it.

Measured at 1M x 512 realsound embeddings (2 cores, faiss-cpu 1.15.1, one run beside the automatic choice
`IVF2000,PQ256x4fs,RFlat` with calibrated nprobe), as HNSW32 + 16 hits per guiding query from 300,000 rows:

| | query-guided HNSW32 | plain HNSW32 | automatic IVF |
|---|---|---|---|
| efSearch / nprobe (calibrated) | 160 / 1,024 | 128 | 16 / 32 |
| audio->image recall@10, p50 | 0.964, 1.48 ms | 0.646, 1.36 ms | 0.973, 0.67 ms |
| image->audio recall@10, p50 | 0.789, 5.21 ms | 0.438, 1.25 ms | 0.968, 0.74 ms |
| build, both indexes | 614 s | 470 s | 97 s |

It is what makes a graph usable for audio->image at all (recall at efSearch 128: 0.65 -> 0.95), but it trails
calibrated IVF both ways, image->audio never reaches 0.95 at any efSearch up to 1,024, and it builds 6x slower.
A cross-modal query's top 10 lies spread over many clusters of the indexed modality: cheap to cover with a few
inverted lists scanned as 4-bit codes, costly to reach by walking a graph.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import faiss
import numpy as np
from tqdm import tqdm

from indexing.faiss_index import (CALIBRATION_LADDERS, CALIBRATION_QUERIES, PAIRED_FIELD, PROGRESS_MIN_ROWS,
                                  build_index, calibrate_search_param, exact_top_k)
from indexing.index_choice import choice_for_factory
from indexing.store import EmbeddingStore

logger = logging.getLogger(__name__)

GUIDE_EF = 64  # guiding searches' efSearch; 128 lifted image->audio recall at 100k from 0.883 to 0.904 (2x the time)
GUIDE_ROWS = 300_000  # paired vectors that guide each graph (a seeded sample of the store's rows)
MEMBERSHIP_BLOCK = 1 << 20  # edges checked against existing lists per step ((block, width) booleans in memory)


def projected_edges(hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RoarGraph's projection of query->base hits (S, k) onto base-base edges: b_0 -> b_j and b_j -> b_0.

    Returns unique (src, dst) int64 arrays sorted by (src, dst), without self-loops or missing hits (-1).
    """
    hits = np.asarray(hits, dtype=np.int64)
    if hits.ndim != 2 or hits.shape[1] < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    first = np.repeat(hits[:, :1], hits.shape[1] - 1, axis=1).ravel()
    rest = hits[:, 1:].ravel()
    src, dst = np.concatenate([first, rest]), np.concatenate([rest, first])
    keep = (src >= 0) & (dst >= 0) & (src != dst)
    src, dst = src[keep], dst[keep]
    if src.size == 0:
        return src, dst
    span = int(max(src.max(), dst.max())) + 1
    keys = np.unique(src * span + dst)
    return keys // span, keys % span


def insert_edges(lists: np.ndarray, src: np.ndarray, dst: np.ndarray) -> int:
    """Add edges src -> dst to (n, width) neighbour lists (valid ids first, then -1) in place; returns how many.

    (src, dst) must be sorted by src. Edges already present are skipped. A node's new edges go into its free
    slots; where fewer are free than it has new edges, up to width // 2 of its last (farthest) entries give way.
    """
    if src.size == 0:
        return 0
    num_nodes, width = lists.shape
    fresh = np.ones(src.size, dtype=bool)
    for start in range(0, src.size, MEMBERSHIP_BLOCK):
        part = slice(start, start + MEMBERSHIP_BLOCK)
        fresh[part] = ~(lists[src[part]] == dst[part, None]).any(axis=1)
    src, dst = src[fresh], dst[fresh]
    if src.size == 0:
        return 0
    filled = (lists >= 0).sum(axis=1)
    new_count = np.bincount(src, minlength=num_nodes)
    first_slot = np.minimum(filled, width - np.minimum(new_count, width // 2))
    group_start = np.concatenate([[0], np.cumsum(new_count)[:-1]])
    slot = first_slot[src] + (np.arange(src.size) - group_start[src])
    placed = slot < width
    lists[src[placed], slot[placed]] = dst[placed]
    return int(placed.sum())


@dataclass
class GuideStats:
    """What adding query-guided edges did to a graph (logged)."""

    queries: int
    edges_added: int
    free_slots_before: float  # mean free level-0 slots per node before
    seconds: float


def hnsw_of(index: faiss.Index) -> faiss.IndexHNSW:
    """The IndexHNSW inside `index` (itself, downcast); a clear error for any other type."""
    found = faiss.downcast_index(index)
    if not isinstance(found, faiss.IndexHNSW):
        raise ValueError(f"query-guided edges need an HNSW index, got {type(found).__name__}")
    return found


def add_query_guided_edges(index: faiss.Index, query_blocks: Iterable[np.ndarray], guide_k: int,
                           guide_ef: int = GUIDE_EF) -> GuideStats:
    """Search each (B, d) block of paired query-modality vectors in the built HNSW `index`, project the top
    `guide_k` hits onto base-base edges and write them into the level-0 lists. Memory: the level-0 lists as
    an (n, 2M) int32 array, and the hits (S, guide_k)."""
    began = time.perf_counter()
    hnsw = hnsw_of(index).hnsw
    num_nodes = int(index.ntotal)
    saved_ef = hnsw.efSearch
    hnsw.efSearch = max(int(guide_ef), int(guide_k))
    try:
        hits = [index.search(np.ascontiguousarray(block, dtype=np.float32), guide_k)[1] for block in query_blocks]
    finally:
        hnsw.efSearch = saved_ef
    hits_all = np.concatenate(hits) if hits else np.zeros((0, guide_k), np.int64)
    offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)[:num_nodes]
    width = int(hnsw.nb_neighbors(0))
    neighbours = faiss.vector_to_array(hnsw.neighbors)
    slots = offsets[:, None] + np.arange(width)[None, :]  # level 0 comes first in each node's block
    lists = neighbours[slots]
    free_before = float((lists < 0).sum()) / max(num_nodes, 1)
    src, dst = projected_edges(hits_all)
    added = insert_edges(lists, src, dst)
    neighbours[slots] = lists
    faiss.copy_array_to_vector(neighbours, hnsw.neighbors)
    stats = GuideStats(queries=int(hits_all.shape[0]), edges_added=added, free_slots_before=free_before,
                       seconds=time.perf_counter() - began)
    logger.info("query-guided edges: %d queries, %d edges added (%.1f a node, %.1f free level-0 slots a node "
                "before), %.1f s", stats.queries, added, added / max(num_nodes, 1), free_before, stats.seconds)
    return stats


def build_query_guided_index(store: EmbeddingStore, field: str = "image_vectors", hnsw_m: int = 32,
                             guide_k: int = 16, guide_rows: int = GUIDE_ROWS, chunk_rows: int = 65536,
                             seed: int = 0, k: int = 10) -> tuple[faiss.Index, dict[str, float]]:
    """HNSW{hnsw_m} over `field` (faiss_index.build_index), guided by the paired vectors of `guide_rows` seeded
    rows (`guide_k` hits each), its efSearch calibrated on other rows' paired vectors. Returns the index (efSearch
    set) and {'efSearch': value, 'calibration_recall': recall@k}."""
    choice = choice_for_factory(f"HNSW{hnsw_m}", len(store))
    index = build_index(store, field, choice, chunk_rows, seed)
    guided = guiding_rows(len(store), guide_rows, seed)
    add_guided_edges(index, store, PAIRED_FIELD[field], guide_k, guided, chunk_rows)
    rest = np.setdiff1d(np.arange(len(store)), guided) if guided.size < len(store) else np.arange(len(store))
    rows = np.sort(np.random.default_rng([seed, 2]).choice(rest, min(CALIBRATION_QUERIES, rest.size), replace=False))
    queries = store.read_rows(PAIRED_FIELD[field], rows)
    exact = exact_top_k(store.iter_chunks(field, chunk_rows), queries, k)
    value, recall = calibrate_search_param(index, "efSearch", CALIBRATION_LADDERS["efSearch"], queries, exact)
    return index, {"efSearch": value, "calibration_recall": round(recall, 4)}


def guiding_rows(num_rows: int, count: int, seed: int) -> np.ndarray:
    """The seeded, sorted rows whose paired vectors guide a graph (`count` of them, at most all)."""
    return np.sort(np.random.default_rng([seed, 1]).choice(num_rows, min(int(count), num_rows), replace=False))


def add_guided_edges(index: faiss.Index, store: EmbeddingStore, paired_field: str, guide_k: int, rows: np.ndarray,
                     chunk_rows: int = 65536) -> GuideStats:
    """Guide `index` (an HNSW over the other field) by the paired vectors of `rows` (sorted) in `paired_field`,
    read in row order one chunk at a time."""
    blocks = (store.read_rows(paired_field, rows[start:start + chunk_rows])
              for start in range(0, rows.size, chunk_rows))
    with tqdm(total=rows.size, desc=f"query-guided edges <- {paired_field}", unit="query", leave=False,
              disable=len(store) < PROGRESS_MIN_ROWS) as bar:
        return add_query_guided_edges(index, _counted(blocks, bar), guide_k)


def _counted(blocks: Iterator[np.ndarray], bar: tqdm) -> Iterator[np.ndarray]:
    for block in blocks:
        yield block
        bar.update(len(block))
