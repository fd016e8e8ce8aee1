"""Which index to build: a pure function of (number of vectors, dimension, memory budget, GPU).

autofaiss-style rule, kept apart from the code that trains and fills indexes so it can be read and tested
alone. All indexes use inner product on L2-normalised vectors (= cosine similarity).

- Exact `Flat` while a brute-force scan is cheap (<= 100k vectors; <= 1M on a GPU) and fits the budget.
- Beyond that on CPU, `IVF{nlist}_HNSW32,PQ{d/2}x4fsr,{rerank}`: inverted lists of 4-bit fast-scan PQ codes (SIMD
  look-ups, d/4 bytes per vector) of each vector's residual from its list's centroid (`fsr`: the residual is
  shorter than the vector, so the same codes estimate scores more closely and a shorter shortlist suffices:
  docs/benchmarks.md, "Search at 1M × 512: the last factor"), whose top k * k_factor candidates are re-ranked
  against a second copy of the vectors: `CPU_RERANKS` in order, the first
  whose copy fits the budget (`REFINE_BYTES_PER_DIM`: 4 for RFlat, 2 for Refine(SQfp16), 1 for Refine(SQ8)).
  The lists' centroids are found through a small HNSW graph (`CPU_COARSE_QUANTIZER`) rather than a scan of all
  of them. On GPU, `IVF{nlist},Flat`. nlist ~ 2 sqrt(n) on CPU, 4 sqrt(n) on GPU; nprobe = nlist / 20 and
  k_factor 64 here, which `build_indexes` then calibrates jointly per modality on the store's own paired vectors
  (indexing.faiss_index.calibrated_search_params: the cheapest point reaching recall@10 0.955 on 1,000 queries).
  Parameters that follow nprobe are set from it wherever search parameters are set (`coupled_search_params`):
  the HNSW graph's efSearch (never below nprobe) and the shortlist (k_factor at least nprobe / 2), so that
  probing more lists never gets worse hits (docs/scaling.md, "More lists, worse hits").
- ScaNN only when named (`ScaNN{leaves},AH2,RFlat`, indexing.scann_index, the [scann] extra): at 1M it matched
  the FAISS index on one query, but its batches were not steadily faster and its repeatable build took several
  times as long, over the 300 s goal, and more memory (docs/benchmarks.md, "ScaNN", with the figures).
- Graphs (HNSW) only when named: a cross-modal query's neighbours lie spread over the indexed modality, which a
  graph walk reaches badly (plain HNSW32's recall at 1M: docs/benchmarks.md); the query-guided graph that repairs
  part of it trails the calibrated IVF above both ways (indexing.experimental.query_guided, with its figures).
- When the flat vectors exceed the budget: `IVF{nlist},SQ8` (1 byte per dimension, recall close to exact)
  if that fits, else `OPQ{m},IVF{nlist},PQ{m}` (m bytes per vector) with the largest m that fits. A refine
  stage would keep the full vectors in memory, which is exactly what the budget forbids.

Search parameters are chosen for recall@10 >= 0.95 against exact search on clustered embeddings
(tests/test_faiss_index.py measures it) and stored with the choice so that they are re-applied on load.

Why these types, with the measurements behind them (IVF-Flat's recall at 1M cross-modal queries, the re-ranking
stage and its factor, HNSW's builds and cross-modal recall): docs/benchmarks.md.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

FLAT_MAX_VECTORS = 100_000
GPU_FLAT_MAX_VECTORS = 1_000_000
CPU_IVF_LISTS_PER_SQRT = 2  # k-means is the slow part of a CPU build (its time at 1M x 512: docs/benchmarks.md)
GPU_IVF_LISTS_PER_SQRT = 4
IVF_PROBE_FRACTION = 20  # visit 1/20 of the lists (see the module docstring)
HNSW_M = 32
HNSW_EF_SEARCH = 128
HNSW_EF_CONSTRUCTION = 40  # 80 doubled 1M builds (docs/benchmarks.md)
QUANTIZER_EF_SEARCH = 64  # the HNSW coarse quantizer's walk for the calibrated nprobe (16-48 at 1M); raised to
# nprobe beyond that by `quantizer_ef_search` (why, and the timings behind 64: docs/benchmarks.md)
REFINE_K_FACTOR = 64  # shortlist k * 64 for the re-ranking of a refine stage, until calibration says otherwise
SHORTLIST_PER_LIST = 0.5  # a refine stage's k_factor is at least nprobe / 2 (`shortlist_factor`): below the points
# calibrated at 1M (docs/benchmarks.md), so it changes only searches that probe more lists than those
CPU_RERANKS = ("RFlat", "Refine(SQfp16)")  # re-ranking stages of the CPU choice, by preference: RFlat the faster,
# float16 half the memory (docs/benchmarks.md)
CPU_COARSE_QUANTIZER = "HNSW32"  # a flat scan of all centroids was a third of a single query at 1M x 512; a graph
# over them finds a query's lists in a fraction of that (docs/benchmarks.md, "Search at 1M × 512: the last factor")
REFINE_BYTES_PER_DIM = {"RFlat": 4, "Refine(Flat)": 4, "Refine(SQfp16)": 2, "Refine(SQ8)": 1}
IVF_TRAIN_PER_LIST = 64  # FAISS wants 39..256 training points per centroid
QUANTIZER_TRAIN_SIZE = 65_536  # PQ/SQ codebooks: 256 centroids per sub-quantizer need >= 9,984 points
IVF_ID_BYTES = 8
SCANN_FACTORY = re.compile(r"^ScaNN(\d+),AH(\d+),RFlat$")  # leaves, dimensions per 4-bit block
SCANN_TRAIN_PER_LEAF = 128  # ScaNN's k-means sample a leaf: 64 a leaf cost recall at 1M, FAISS's IVF lists gained
#                             nothing from 128 a list (docs/benchmarks.md, "ScaNN")
CPU_PQ_BYTES = (64, 48, 32, 24, 16, 8, 4)
GPU_PQ_BYTES = (48, 32, 24, 16, 12, 8, 4)  # GpuIndexIVFPQ code sizes usable without float16 lookup tables
GPU_PQ_SUB_DIMS = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32)


@dataclass
class IndexChoice:
    """A FAISS factory string with everything needed to train it and to search it at the intended recall."""

    factory: str
    metric: str = "ip"
    train_size: int = 0  # vectors sampled (seeded) from the store for training; 0 = no training needed
    search_params: dict[str, int] = field(default_factory=dict)  # faiss ParameterSpace names: nprobe, efSearch, ...
    build_params: dict[str, int] = field(default_factory=dict)  # efConstruction
    reason: str = ""
    estimated_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "IndexChoice":
        return cls(**{key: values[key] for key in cls.__dataclass_fields__ if key in values})


def ivf_nlist(num_vectors: int, gpu: bool = False) -> int:
    """Number of IVF lists ~ 2 sqrt(n) on CPU (training cost grows with nlist^2), 4 sqrt(n) on GPU, capped so
    every list gets >= 39 training points."""
    per_sqrt = GPU_IVF_LISTS_PER_SQRT if gpu else CPU_IVF_LISTS_PER_SQRT
    return int(max(1, min(round(per_sqrt * math.sqrt(max(num_vectors, 1))), num_vectors // 39)))


def ivf_nprobe(nlist: int) -> int:
    """Lists visited per query: 1/20 of them but at least 16 (recall@10 >= 0.95 for cross-modal queries)."""
    return int(min(nlist, max(16, nlist // IVF_PROBE_FRACTION)))


def quantizer_ef_search(nprobe: int, ef_search: int = QUANTIZER_EF_SEARCH) -> int:
    """efSearch of an HNSW coarse quantizer asked for `nprobe` lists: never below nprobe.

    FAISS sizes the graph walk's queue max(efSearch, nprobe) but stops the walk after efSearch steps, so with
    efSearch < nprobe some queries get fewer lists than asked, padded with id -1 and score -3.4e38. An inner-product
    fast-scan index of residuals takes each list's score as that list's bias when it quantizes the query's look-up
    tables; a bias span of 3.4e38 sets their scale to 0, every code then scores the same, and the query's shortlist
    is arbitrary: recall fell as nprobe rose (docs/scaling.md, "More lists, worse hits")."""
    return int(max(ef_search, nprobe))


def shortlist_factor(nprobe: int, k_factor: int) -> int:
    """k_factor of a refine stage searched over `nprobe` lists: at least nprobe * SHORTLIST_PER_LIST. Each list
    probed adds codes whose approximate scores can push a true neighbour past a fixed shortlist (recall at a held
    k_factor wavered as nprobe rose); a shortlist that grows with the lists keeps room for them."""
    return int(max(k_factor, math.ceil(nprobe * SHORTLIST_PER_LIST)))


def coupled_search_params(params: dict[str, int]) -> dict[str, int]:
    """`params` with the parameters that depend on nprobe set from it: an HNSW coarse quantizer's efSearch (where
    `quantizer_efSearch` is present) raised to nprobe (`quantizer_ef_search`), and a refine stage's k_factor
    (where `k_factor_rf` is present) raised with it (`shortlist_factor`). Every place that sets an index's search
    parameters goes through this, so asking for more lists never gets worse hits."""
    coupled = dict(params)
    if "nprobe" in coupled and "quantizer_efSearch" in coupled:
        coupled["quantizer_efSearch"] = quantizer_ef_search(coupled["nprobe"], coupled["quantizer_efSearch"])
    if "nprobe" in coupled and "k_factor_rf" in coupled:
        coupled["k_factor_rf"] = shortlist_factor(coupled["nprobe"], coupled["k_factor_rf"])
    return coupled


def estimate_bytes(kind: str, num_vectors: int, dim: int, nlist: int = 0, code_bytes: int = 0,
                   refine_bytes_per_dim: int = 4) -> int:
    """Resident memory of an index kind ('flat', 'hnsw', 'ivf_flat', 'ivf_pqfs_refine', 'ivf_sq8', 'ivf_pq'),
    in bytes; a refine stage stores `refine_bytes_per_dim` bytes a dimension."""
    n, d = num_vectors, dim
    centroids = 4 * nlist * d
    if kind == "flat":
        return 4 * n * d
    if kind == "hnsw":
        return int(n * (4 * d + 2 * HNSW_M * 4 * 1.1 + 16))  # level-0 links (2M) + upper levels + offsets
    if kind == "ivf_flat":
        return n * (4 * d + IVF_ID_BYTES) + centroids
    if kind == "ivf_pqfs_refine":  # 4-bit codes for d/2 sub-quantizers + ids, and the refine stage's copy
        return n * (d // 4 + IVF_ID_BYTES) + centroids + refine_bytes_per_dim * n * d
    if kind == "ivf_sq8":
        return n * (d + IVF_ID_BYTES) + centroids
    if kind == "ivf_pq":
        return n * (code_bytes + IVF_ID_BYTES) + centroids + 4 * d * d + 4 * 256 * d  # + OPQ matrix, codebooks
    raise ValueError(f"unknown index kind {kind!r}")


def choose_index(num_vectors: int, dim: int, memory_budget_bytes: int | None = None, gpu: bool = False,
                 factory: str | None = None) -> IndexChoice:
    """Pick the index for `num_vectors` vectors of `dim` dimensions; `factory` overrides the rule."""
    if num_vectors < 0 or dim < 1:
        raise ValueError(f"need num_vectors >= 0 and dim >= 1, got {num_vectors}, {dim}")
    if factory:
        return choice_for_factory(factory, num_vectors, reason="factory given by the user")
    budget = math.inf if memory_budget_bytes is None else memory_budget_bytes
    n, d = num_vectors, dim
    nlist = ivf_nlist(n, gpu)
    flat_limit = GPU_FLAT_MAX_VECTORS if gpu else FLAT_MAX_VECTORS
    flat = estimate_bytes("flat", n, d)
    if flat <= budget and n <= flat_limit:
        return _made("Flat", n, f"{n} vectors <= {flat_limit}: exact search is fast enough", flat)
    if not gpu and d % 2 == 0 and n > flat_limit:
        for rerank in CPU_RERANKS:
            fast_scan = estimate_bytes("ivf_pqfs_refine", n, d, nlist,
                                       refine_bytes_per_dim=REFINE_BYTES_PER_DIM[rerank])
            if fast_scan <= budget:
                return _made(f"IVF{nlist}_{CPU_COARSE_QUANTIZER},PQ{d // 2}x4fsr,{rerank}", n,
                             f"{n} vectors > {flat_limit} on CPU: fast-scan PQ codes of residuals in lists found "
                             f"through an HNSW graph of their centroids, shortlist re-ranked by {rerank}", fast_scan)
    ivf_flat = estimate_bytes("ivf_flat", n, d, nlist)
    if flat <= budget and ivf_flat <= budget:
        where = "GPU" if gpu else "CPU"
        return _made(f"IVF{nlist},Flat", n, f"{n} vectors > {flat_limit} on {where}: inverted lists over full vectors",
                     ivf_flat)
    sq8 = estimate_bytes("ivf_sq8", n, d, nlist)
    if sq8 <= budget:
        return _made(f"IVF{nlist},SQ8", n, f"flat vectors ({flat} B) exceed the budget; 8-bit scalar codes fit", sq8)
    for code_bytes in GPU_PQ_BYTES if gpu else CPU_PQ_BYTES:
        if d % code_bytes or (gpu and d // code_bytes not in GPU_PQ_SUB_DIMS):
            continue
        pq = estimate_bytes("ivf_pq", n, d, nlist, code_bytes)
        if pq <= budget:
            # GPUs clone IVFPQ but not the OPQ rotation in front of it.
            name = f"IVF{nlist},PQ{code_bytes}" if gpu else f"OPQ{code_bytes},IVF{nlist},PQ{code_bytes}"
            return _made(name, n, f"flat ({flat} B) and SQ8 ({sq8} B) exceed the budget; {code_bytes}-byte PQ codes "
                         "fit (no refine stage: it would need the flat vectors in memory)", pq)
    raise ValueError(f"a memory budget of {memory_budget_bytes} bytes cannot hold an index of {n} vectors of dim {d} "
                     f"(the smallest PQ index needs about {estimate_bytes('ivf_pq', n, d, nlist, 4)} bytes)")


def parse_scann_factory(factory: str) -> tuple[int, int] | None:
    """(leaves, dimensions per block) of a ScaNN factory string, None for any other (FAISS) string."""
    match = SCANN_FACTORY.match(factory)
    return (int(match.group(1)), int(match.group(2))) if match else None


def choice_for_factory(factory: str, num_vectors: int, reason: str = "") -> IndexChoice:
    """Training size and search parameters that a factory string needs, read from the string itself."""
    scann = parse_scann_factory(factory)
    if scann:  # the same parameter names as IVF + RFlat: leaves searched (nprobe) and the shortlist factor
        leaves = scann[0]
        return IndexChoice(factory=factory, train_size=int(min(SCANN_TRAIN_PER_LEAF * leaves, num_vectors)),
                           search_params={"nprobe": ivf_nprobe(leaves), "k_factor_rf": REFINE_K_FACTOR}, reason=reason)
    ivf = re.search(r"IVF(\d+)", factory)
    hnsw = re.search(r"HNSW(\d+)", factory)
    quantised = re.search(r"(PQ|SQ|LSH|RQ|LSQ)", factory.split(",RFlat")[0].split(",Refine")[0])
    search_params: dict[str, int] = {}
    build_params: dict[str, int] = {}
    train_size = 0
    if ivf:
        nlist = int(ivf.group(1))
        search_params["nprobe"] = ivf_nprobe(nlist)
        train_size = IVF_TRAIN_PER_LIST * nlist
        if hnsw:  # IVF with an HNSW coarse quantizer, e.g. 'IVF65536_HNSW32,Flat'
            search_params["quantizer_efSearch"] = quantizer_ef_search(search_params["nprobe"])
    elif hnsw:
        search_params["efSearch"] = HNSW_EF_SEARCH
        build_params["efConstruction"] = HNSW_EF_CONSTRUCTION
    if quantised:
        train_size = max(train_size, QUANTIZER_TRAIN_SIZE)
    if "RFlat" in factory or "Refine" in factory:
        search_params["k_factor_rf"] = REFINE_K_FACTOR
    return IndexChoice(factory=factory, train_size=int(min(train_size, num_vectors)), search_params=search_params,
                       build_params=build_params, reason=reason)


def _made(factory: str, num_vectors: int, reason: str, estimated_bytes: int) -> IndexChoice:
    choice = choice_for_factory(factory, num_vectors, reason)
    choice.estimated_bytes = int(estimated_bytes)
    return choice
