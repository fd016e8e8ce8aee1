"""ScaNN as a named CPU index: a k-means tree of leaves whose vectors are scored by anisotropic 4-bit codes (Google's
AVQ, `score_ah`), the shortlist re-ranked against the float32 vectors.

Why beside FAISS: at 1M x 512 cross-modal queries, side by side with the automatic FAISS index, it answered one
query as fast; its batches were 13-20 % faster in one run and 10-40 % slower in another, at a build 3.7-3.9 x as
long (docs/benchmarks.md, "ScaNN"). So it is built
only when named (`jsar index --factory ScaNN2000,AH2,RFlat`) and is an optional dependency (the [scann] extra,
Linux wheels only). Builds are seeded and repeatable (`seeded_config`).

`ScannIndex` answers like a faiss index where `faiss_index` uses one (`d`, `ntotal`, `search(x, k, params=)`), with
the same search-parameter names: `nprobe` (leaves searched) and `k_factor_rf` (shortlist = k * k_factor_rf). So
`build_indexes` calibrates it, index.json records it and `search`, `RetrievalIndexes`, the Engine and the bench use
it unchanged. Factory string: `ScaNN{leaves},AH{dims per 4-bit block},RFlat`.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from jsa_retrieval.errors import JsarError
from jsa_retrieval.files import fsync_directory, fsync_path

from indexing.index_choice import REFINE_K_FACTOR, parse_scann_factory
from indexing.store import EmbeddingStore

ANISOTROPIC_THRESHOLD = 0.2  # ScaNN's recommended eta for unit-norm vectors under inner product
SCANN_BATCH = 256  # queries per work item of ScaNN's parallel batch search
EXTRA_HINT = 'ScaNN needs the [scann] extra (Linux wheels): pip install -e ".[scann]"'
DEFAULT_PARAMS = {"nprobe": 16, "k_factor_rf": REFINE_K_FACTOR}
CODEBOOK_TRAIN_SIZE = 131_072  # the anisotropic codebooks' sample
SHAPE_FILE = "jsar-index.json"  # dim, ntotal, leaves and code bytes beside ScaNN's own files


logger = logging.getLogger(__name__)


class ScannNotInstalled(JsarError, ImportError):
    """The `scann` package is missing (or has no wheel for this platform)."""


def scann_module() -> Any:
    """The scann package, or ScannNotInstalled naming the extra."""
    try:
        import scann  # noqa: PLC0415 (optional dependency)
    except ImportError as error:
        raise ScannNotInstalled(f"{EXTRA_HINT} ({error})") from None
    return scann


def scann_available() -> bool:
    try:
        scann_module()
    except ScannNotInstalled:
        return False
    return True


def is_scann_factory(factory: str) -> bool:
    return parse_scann_factory(factory) is not None


class ScannIndex:
    """A ScaNN searcher over store rows 0..n-1 (ids are row numbers), with its search parameters."""

    def __init__(self, searcher: Any, dim: int, ntotal: int, leaves: int, code_bytes: int,
                 params: dict[str, int] | None = None, threads: int = 1) -> None:
        self.searcher = searcher
        self.d = int(dim)
        self.ntotal = int(ntotal)
        self.leaves = int(leaves)
        self.code_bytes = int(code_bytes)  # of one vector: 4 bits a block of dimensions
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        searcher.set_num_threads(max(1, int(threads)))

    def set_params(self, params: dict[str, int] | None) -> None:
        self.params.update({name: int(value) for name, value in (params or {}).items()
                            if name in DEFAULT_PARAMS})

    def search(self, queries: np.ndarray, k: int, params: dict[str, int] | None = None) -> tuple[np.ndarray,
                                                                                               np.ndarray]:
        """(Q, d) unit-norm float32 queries -> scores, ids (Q, k): one query on the calling thread, a batch over
        ScaNN's thread pool. Missing hits (a leaf set holding fewer than k vectors) are id -1, score -inf."""
        point = {**self.params, **(params or {})}
        leaves = int(min(point["nprobe"], self.leaves))
        shortlist = int(max(k, k * point["k_factor_rf"]))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.shape[0] == 1:  # one query's answer is as long as what its leaves hold, up to k
            found, values = self.searcher.search(queries[0], k, shortlist, leaves)
            found, values = found[None, :k], values[None, :k]
        else:  # a batch's is (Q, k), a short row padded with NaN scores at its end
            found, values = self.searcher.search_batched_parallel(queries, k, shortlist, leaves, SCANN_BATCH)
        scores = np.full((queries.shape[0], k), -np.inf, np.float32)
        ids = np.full((queries.shape[0], k), -1, np.int64)
        width = found.shape[1]
        kept = np.isfinite(values)
        scores[:, :width] = np.where(kept, values, -np.inf)
        ids[:, :width] = np.where(kept, found.astype(np.int64), -1)  # ScaNN's ids are uint32
        return scores, ids

    def query_cost(self, params: dict[str, int], k: int, scan_ns_per_byte: float, refine_ns_per_byte: float) -> float:
        """Modelled nanoseconds of one query: the searched leaves' codes plus the shortlist's float32 vectors read for
        re-ranking (the same model as FAISS's IVF fast-scan with RFlat)."""
        point = {**self.params, **params}
        scanned = min(point["nprobe"], self.leaves) * self.ntotal / max(self.leaves, 1) * self.code_bytes
        return scanned * scan_ns_per_byte + k * point["k_factor_rf"] * 4 * self.d * refine_ns_per_byte

    def save(self, path: str | Path) -> Path:
        """Serialise into folder `path`: written and fsynced under a temporary name in the same parent, then renamed
        into place (an older folder is moved aside first and removed after), so a crash leaves old or new."""
        path = Path(path)
        temp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
        aside = path.with_name(f".old-{path.name}-{os.getpid()}")
        try:
            self.searcher.serialize(str(temp), relative_path=True)
            (temp / SHAPE_FILE).write_text(json.dumps({"dim": self.d, "ntotal": self.ntotal, "leaves": self.leaves,
                                                       "code_bytes": self.code_bytes}))
            for part in temp.iterdir():
                fsync_path(part)
            fsync_directory(temp)
            if path.exists():
                path.rename(aside)
            temp.rename(path)
            fsync_directory(path.parent)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
            if path.exists():
                shutil.rmtree(aside, ignore_errors=True)
            elif aside.exists():  # the new folder never arrived: the old one goes back
                aside.rename(path)
        return path


@contextmanager
def native_stderr_to_log() -> Iterator[None]:
    """ScaNN's C++ (absl) logs a few info lines per build straight to file descriptor 2, and no setting turns them
    off: catch them in a temporary file and pass them on as debug records (as warnings if the build fails)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines():
                logger.log(logging.WARNING if failed else logging.DEBUG, "scann: %s", line)


def seeded_config(config: str, seed: int) -> str:
    """ScaNN's text config with the leaves' k-means seeded: with k-means++ starts (`random_init=False`) and a seed the
    same store builds the same index; ScaNN's random starts ignore the seed (three builds of one store gave three
    indexes)."""
    if config.count("partitioning {") != 1:
        raise ValueError("expected one partitioning block in the ScaNN config")
    return config.replace("partitioning {", f"partitioning {{\n        clustering_seed: {int(seed)}", 1)


def build_scann_index(store: EmbeddingStore, field: str, factory: str, search_params: dict[str, int],
                      train_size: int, threads: int, chunk_rows: int = 65536, seed: int = 0) -> ScannIndex:
    """Train and fill `factory` over every row of `field` on `threads`, seeded (ScaNN builds from one array: the store
    is read into it chunk by chunk, and ScaNN keeps its own copy for re-ranking)."""
    parsed = parse_scann_factory(factory)
    if parsed is None:
        raise ValueError(f"not a ScaNN factory string: {factory!r} (expected ScaNN<leaves>,AH<dims>,RFlat)")
    if len(store) == 0:
        raise ValueError(f"{factory} needs vectors but the store is empty")
    scann = scann_module()
    leaves, dims_per_block = parsed
    if leaves > len(store):
        raise ValueError(f"{factory} asks for {leaves} leaves but the store holds {len(store)} vectors")
    vectors = np.empty((len(store), store.dim), np.float32)
    for start, block in store.iter_chunks(field, chunk_rows):
        vectors[start:start + len(block)] = block
    logger.info("ScaNN %s over %d rows of %s: training and coding on %d threads", factory, len(store), field, threads)
    params = {**DEFAULT_PARAMS, **search_params}
    tree_sample = int(min(len(store), max(train_size, leaves)))
    codebook_sample = int(min(len(store), CODEBOOK_TRAIN_SIZE))
    builder = (scann.scann_ops_pybind.builder(vectors, 10, "dot_product")
               .tree(num_leaves=leaves, num_leaves_to_search=min(params["nprobe"], leaves),
                     training_sample_size=tree_sample, random_init=False)
               .score_ah(dims_per_block, anisotropic_quantization_threshold=ANISOTROPIC_THRESHOLD,
                         training_sample_size=codebook_sample)
               .reorder(10 * params["k_factor_rf"]))
    config = seeded_config(builder.create_config(), seed)
    with native_stderr_to_log():
        searcher = scann.scann_ops_pybind.create_searcher(vectors, config, max(1, threads))
    code_bytes = math.ceil(math.ceil(store.dim / dims_per_block) / 2)  # 4 bits a block: d/4 bytes with AH2
    return ScannIndex(searcher, store.dim, len(store), leaves, code_bytes, params, threads)


def load_scann_index(path: str | Path, search_params: dict[str, int] | None, threads: int) -> ScannIndex:
    """The index `ScannIndex.save` wrote into folder `path`, set to `search_params`."""
    scann = scann_module()
    shape = json.loads((Path(path) / SHAPE_FILE).read_text())
    if (Path(path) / "scann_docids.pkl").exists():  # jsar never writes one; scann would unpickle it
        raise ValueError(f"{path} holds a scann_docids.pkl that jsar did not write; refusing to unpickle it")
    searcher = scann.scann_ops_pybind.load_searcher(str(path))
    return ScannIndex(searcher, shape["dim"], shape["ntotal"], shape["leaves"], shape["code_bytes"], search_params,
                      threads)
