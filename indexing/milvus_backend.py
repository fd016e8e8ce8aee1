"""Search in Milvus instead of FAISS: for collections that outgrow one machine (docs/scaling.md, "Search in
Milvus"; how a back end plugs in: docs/house.md, "Add an index back end").

The HDF5 store stays the source of truth. `push_store` upserts its rows into two collections named after the
store's fingerprint, `{prefix}_{fingerprint[:16]}_image` (image vectors: answers audio queries) and `..._audio`
(audio vectors: answers image queries), each row keyed by the clip id and carrying its store row, label, paths
and L2-normalised vector, then records the backend in INDEX_DIR/index.json. `MilvusIndexes` answers with the
same (scores, store rows) arrays as `faiss_index.RetrievalIndexes`, so the Engine's hits and maps do not change.
Metric: inner product on unit vectors, the scores of FAISS flat IP.

A push is resumable: INDEX_DIR/milvus_push.json records how many store rows are in Milvus and a digest of their
ids, written after each batch's upsert returns, so a killed push starts again at its last finished batch; an
upsert by id never makes duplicates, so a batch sent twice costs only time.

URI: a local `.db` path runs Milvus Lite inside this process (tests, small sets; one process at a time per
file); `http://host:19530` reaches a Milvus cluster through the same client, with the token (`user:password`
or an API key) read from $JSAR_MILVUS_TOKEN, never from the command line or index.json.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from jsa_retrieval.errors import JsarError
from jsa_retrieval.files import replace_atomically

from .store import EmbeddingStore, FingerprintMismatch, l2_normalise

INDEX_JSON = "index.json"  # the file faiss_index writes: one index.json per folder, whichever backend
PUSH_STATE = "milvus_push.json"
TOKEN_ENV = "JSAR_MILVUS_TOKEN"
FINGERPRINT_PROPERTY = "jsar.fingerprint"
EXTRA_HINT = 'Milvus needs the [milvus] extra: pip install -e ".[milvus]"'
FORMAT_VERSION = 1
COLLECTIONS = {"image": "image_vectors", "audio": "audio_vectors"}  # collection suffix -> store field
PUSH_BATCH_ROWS = 2048  # about 4 MiB of 512-d vectors per upsert: well under gRPC's 64 MiB message limit
SEARCH_BATCH = 1024  # queries per search call
MAX_TOP_K = 16384  # Milvus's limit on k (and on queries per call)
MAX_TEXT = 65535  # Milvus's VARCHAR limit; strings take only the bytes they use
# Build and search parameters per Milvus index type. FLAT is exact (the scores of FAISS flat IP); the others are
# for a cluster, where Milvus indexes each sealed segment (~1 GiB of vectors by default) on its own, so nlist
# and graph sizes are per segment, not per collection. See docs/scaling.md.
INDEX_TYPES: dict[str, tuple[dict[str, int], dict[str, int]]] = {
    "FLAT": ({}, {}),
    "HNSW": ({"M": 32, "efConstruction": 256}, {"ef": 128}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_PQ": ({"nlist": 1024, "m": 64, "nbits": 8}, {"nprobe": 32}),
    "DISKANN": ({}, {"search_list": 100}),
    "AUTOINDEX": ({}, {}),
}
AT_LEAST_K = frozenset({"ef", "search_list"})  # search parameters that must be >= k

logger = logging.getLogger(__name__)


class MilvusError(JsarError, RuntimeError):
    """Milvus could not be reached, or refused an operation: one line saying which and where."""


class MilvusNotInstalled(JsarError, ImportError):
    """pymilvus (and milvus-lite) are an optional extra."""


@dataclass
class MilvusTarget:
    """Where and how to push: a Lite `.db` path or a cluster URL, the collections' name prefix, the index type."""

    uri: str
    prefix: str = "jsar"
    index_type: str | None = None  # None: FLAT for Milvus Lite, HNSW for a cluster
    token: str | None = field(default=None, repr=False)  # None: $JSAR_MILVUS_TOKEN

    def resolved(self) -> "MilvusTarget":
        """A Lite path made absolute (index.json is read from other folders) and the index type chosen."""
        uri = str(Path(self.uri).expanduser().resolve()) if is_lite_uri(self.uri) else self.uri.rstrip("/")
        index_type = (self.index_type or ("FLAT" if is_lite_uri(uri) else "HNSW")).upper()
        if index_type not in INDEX_TYPES:
            raise ValueError(f"unknown Milvus index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
        if not self.prefix or not (self.prefix[0].isalpha() or self.prefix[0] == "_") \
                or not all(c.isalnum() or c == "_" for c in self.prefix):
            raise ValueError(f"collection prefix {self.prefix!r} must be letters, digits and _, "
                             "not starting with a digit")
        return MilvusTarget(uri, self.prefix, index_type, self.token)


class MilvusOptionsError(JsarError, ValueError):
    """`jsar index`'s Milvus options do not go together (the CLI shows it as a usage error)."""


def index_target(backend: str, push: bool, uri: str | None, prefix: str = "jsar",
                 index_type: str | None = None) -> MilvusTarget | None:
    """Where `jsar index` puts vectors besides OUT's store: None for FAISS files only, else the Milvus target of
    `--backend milvus` (embed, then upsert) or `--push milvus` (upsert OUT's existing store). Milvus needs a
    URI, and a URI needs one of the two."""
    if (push or backend == "milvus") and not uri:
        raise MilvusOptionsError("Milvus needs --milvus-uri (a .db file for Milvus Lite, or http://host:19530)")
    if not push and uri and backend != "milvus":
        raise MilvusOptionsError("--milvus-uri goes with --backend milvus or --push milvus")
    return MilvusTarget(uri, prefix, index_type) if uri else None


def is_lite_uri(uri: str) -> bool:
    """A local `.db` file: pymilvus runs Milvus Lite on it (its own rule)."""
    return str(uri).endswith(".db")


def collection_names(prefix: str, fingerprint: str) -> dict[str, str]:
    """{'image': ..., 'audio': ...}: one pair per model fingerprint (and prefix, to keep two stores apart)."""
    return {modality: f"{prefix}_{fingerprint[:16]}_{modality}" for modality in COLLECTIONS}


def recorded_backend(index_dir: str | Path) -> str:
    """'milvus' when INDEX_DIR/index.json says so, else 'faiss' (also when there is no index.json yet)."""
    path = Path(index_dir) / INDEX_JSON
    if not path.is_file():
        return "faiss"
    return json.loads(path.read_text()).get("backend", "faiss")


def connect(uri: str, token: str | None = None, timeout: float = 10.0) -> Any:
    """A `pymilvus.MilvusClient` on `uri`; one-line errors for a missing extra or an unreachable server."""
    try:
        from pymilvus import MilvusClient, MilvusException
    except ImportError as error:
        raise MilvusNotInstalled(EXTRA_HINT) from error
    if is_lite_uri(uri):
        try:
            import milvus_lite  # noqa: F401  (pymilvus alone, the [milvus-client] extra, reaches only a cluster)
        except ImportError as error:
            raise MilvusNotInstalled(f"a .db URI runs Milvus Lite; {EXTRA_HINT}") from error
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    token = os.environ.get(TOKEN_ENV, "") if token is None else token
    lite_log = logging.getLogger("milvus_lite.server_manager")  # logs a traceback of its own, then pymilvus raises
    level = lite_log.level
    lite_log.setLevel(logging.CRITICAL)
    try:
        return MilvusClient(uri=uri, token=token, timeout=timeout)
    except MilvusException as error:
        hint = (" (Milvus Lite lets one process at a time use a file: is `jsar serve` or a push using it?)"
                if is_lite_uri(uri) and Path(uri).exists() else "")
        raise MilvusError(f"cannot reach Milvus at {uri}: {_message(error)}{hint}") from None
    finally:
        lite_log.setLevel(level)


def check_reachable(target: MilvusTarget) -> None:
    """Fail in one line now (extra missing, bad URI, server down) rather than after hours of embedding."""
    target = target.resolved()
    client = connect(target.uri, target.token)
    try:
        with _milvus_errors(f"list collections at {target.uri}"):
            client.list_collections()
    finally:
        client.close()


def _message(error: Exception) -> str:
    return " ".join(str(getattr(error, "message", None) or error).split())


@contextlib.contextmanager
def _milvus_errors(action: str) -> Iterator[None]:
    """Turn pymilvus's errors into one line naming what jsar was doing."""
    from pymilvus import MilvusException

    try:
        yield
    except MilvusException as error:
        raise MilvusError(f"Milvus failed to {action}: {_message(error)}") from None


def _description(store: EmbeddingStore, modality: str) -> str:
    return json.dumps({"jsar": FORMAT_VERSION, "fingerprint": store.meta.fingerprint,
                       "model_name": store.meta.model_name, "modality": modality, "dim": store.dim}, sort_keys=True)


def _ensure_collection(client: Any, name: str, store: EmbeddingStore, modality: str, target: MilvusTarget) -> bool:
    """Create collection `name` for `modality` if missing (True), else check that it holds this model's vectors."""
    from pymilvus import DataType, MilvusClient

    with _milvus_errors(f"look up collection {name}"):
        if client.has_collection(name):
            _check_collection(client.describe_collection(name), name, store)
            return False
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                        description=_description(store, modality))
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_TEXT)
    schema.add_field("row", DataType.INT64)
    for name_ in ("label", "image_path", "audio_path"):
        schema.add_field(name_, DataType.VARCHAR, max_length=MAX_TEXT)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=store.dim)
    index_params = client.prepare_index_params()
    index_params.add_index("vector", index_type=target.index_type, metric_type="IP",
                           params=INDEX_TYPES[target.index_type][0])
    with _milvus_errors(f"create collection {name}"):
        client.create_collection(name, schema=schema, index_params=index_params,
                                 properties={FINGERPRINT_PROPERTY: store.meta.fingerprint})
    return True


def _check_collection(described: dict[str, Any], name: str, store: EmbeddingStore) -> None:
    """Refuse a collection made for another model: its fingerprint property (Milvus Lite keeps no description)
    or, failing that, the fingerprint in its description."""
    found = (described.get("properties") or {}).get(FINGERPRINT_PROPERTY)
    if found is None:
        try:
            found = json.loads(described.get("description") or "{}").get("fingerprint")
        except (json.JSONDecodeError, AttributeError):
            found = None
    if found != store.meta.fingerprint:
        raise FingerprintMismatch(
            f"Milvus collection {name} holds vectors of model fingerprint {str(found or 'unknown')[:12]}, not "
            f"{store.meta.fingerprint[:12]}: vectors of different models cannot be mixed; use another collection "
            "prefix or drop the collection")


def push_store(index_dir: str | Path, target: MilvusTarget, batch_rows: int = PUSH_BATCH_ROWS,
               progress: bool = True) -> dict[str, Any]:
    """Upsert INDEX_DIR/store.h5 into the target's two collections, resuming where a killed push stopped, then
    record the backend in index.json; returns index.json's content. Refuses collections of another model and
    collections that end up holding rows this store does not have (another store under the same prefix)."""
    index_dir = Path(index_dir)
    target = target.resolved()
    with EmbeddingStore.open(index_dir) as store:
        client = connect(target.uri, target.token)
        try:
            names = collection_names(target.prefix, store.meta.fingerprint)
            created = [_ensure_collection(client, names[m], store, m, target) for m in COLLECTIONS]
            start = 0 if any(created) else _resumable_rows(index_dir, store, target.uri, names)
            seconds = _upsert_rows(client, store, names, start, batch_rows, progress, index_dir, target.uri)
            counts = _row_counts(client, names)
            if start and min(counts.values()) < len(store):
                logger.warning("Milvus holds fewer rows than recorded (%s); pushing the whole store again", counts)
                seconds += _upsert_rows(client, store, names, 0, batch_rows, progress, index_dir, target.uri)
                counts = _row_counts(client, names)
            for modality, count in counts.items():
                if count != len(store):
                    raise MilvusError(
                        f"Milvus collection {names[modality]} holds {count} rows but the store has {len(store)}: "
                        "another store of the same model shares it; push under another --milvus-collection prefix")
            with _milvus_errors("load the collections"):
                for name in names.values():
                    client.load_collection(name)
        finally:
            client.close()
        pushed = len(store) - start
        logger.info("pushed %d rows of each modality to Milvus at %s in %.1fs", pushed, target.uri, seconds)
        return _record_backend(index_dir, store, target, names, pushed, seconds)


def _resumable_rows(index_dir: Path, store: EmbeddingStore, uri: str, names: dict[str, str]) -> int:
    """Store rows already in Milvus by milvus_push.json: its count, if the store's first ids are still the ones
    pushed to these collections; otherwise 0 (upserting again is safe, only slower)."""
    path = index_dir / PUSH_STATE
    if not path.is_file():
        return 0
    state = json.loads(path.read_text())
    done = int(state.get("rows_done", 0))
    if state.get("uri") != uri or state.get("collections") != names or done > len(store):
        return 0
    return done if _ids_digest(store, done).hexdigest() == state.get("ids_sha256") else 0


def _ids_digest(store: EmbeddingStore, rows: int, chunk_rows: int = 65536) -> Any:
    """Running SHA-256 of the first `rows` ids, in the store's own digest format (id + newline)."""
    digest = hashlib.sha256()
    for start in range(0, rows, chunk_rows):
        for value in store.read_rows("ids", np.arange(start, min(start + chunk_rows, rows))):
            digest.update(value.encode("utf-8") + b"\n")
    return digest


def _upsert_rows(client: Any, store: EmbeddingStore, names: dict[str, str], start: int, batch_rows: int,
                 progress: bool, index_dir: Path, uri: str) -> float:
    """Upsert rows [start, N) batch by batch, recording progress after each; returns the seconds it took."""
    digest = _ids_digest(store, start)
    started = time.monotonic()
    with tqdm(total=len(store), initial=start, desc=f"Milvus <- {store.path.name}", unit="row",
              disable=not progress or start >= len(store)) as bar:
        for low in range(start, len(store), batch_rows):
            rows = np.arange(low, min(low + batch_rows, len(store)))
            strings = {name: store.read_rows(name, rows) for name in ("ids", "labels", "image_paths", "audio_paths")}
            for modality, vector_field in COLLECTIONS.items():
                vectors = store.read_rows(vector_field, rows)
                data = [{"id": strings["ids"][i], "row": int(rows[i]), "label": strings["labels"][i],
                         "image_path": strings["image_paths"][i], "audio_path": strings["audio_paths"][i],
                         "vector": vectors[i]} for i in range(rows.size)]
                with _milvus_errors(f"upsert rows {low}-{rows[-1]} into {names[modality]}"):
                    client.upsert(names[modality], data)
            for value in strings["ids"]:
                digest.update(value.encode("utf-8") + b"\n")
            _write_json(index_dir / PUSH_STATE, {"uri": uri, "collections": names, "rows_done": int(rows[-1]) + 1,
                                                 "ids_sha256": digest.hexdigest()})
            bar.update(rows.size)
    with _milvus_errors("flush the collections"):
        for name in names.values():
            client.flush(name)
    return time.monotonic() - started


def _row_counts(client: Any, names: dict[str, str]) -> dict[str, int]:
    """Live rows per collection (count(*) at strong consistency: upserted ids counted once)."""
    counts = {}
    with _milvus_errors("count rows"):
        for modality, name in names.items():
            answer = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
            counts[modality] = int(answer[0]["count(*)"])
    return counts


def _record_backend(index_dir: Path, store: EmbeddingStore, target: MilvusTarget, names: dict[str, str],
                    pushed: int, seconds: float) -> dict[str, Any]:
    """index.json with backend 'milvus'; FAISS entries of the same store state are kept (eval still uses them)."""
    path = index_dir / INDEX_JSON
    previous = json.loads(path.read_text()) if path.is_file() else {}
    same_store = (previous.get("store_ids_sha256") == store.ids_sha256
                  and previous.get("fingerprint") == store.meta.fingerprint)
    info = dict(previous) if same_store else {}
    from pymilvus import __version__ as pymilvus_version

    info.update({"backend": "milvus", "fingerprint": store.meta.fingerprint, "model_name": store.meta.model_name,
                 "store_rows": len(store), "store_ids_sha256": store.ids_sha256, "dim": store.dim,
                 "metric": "inner_product", "milvus": {
                     "format_version": FORMAT_VERSION, "uri": target.uri, "collections": names,
                     "index_type": target.index_type, "index_params": INDEX_TYPES[target.index_type][0],
                     "search_params": INDEX_TYPES[target.index_type][1], "pymilvus_version": pymilvus_version,
                     "last_push": {"rows": pushed, "seconds": round(seconds, 3)}}})
    _write_json(path, info, indent=2)
    return info


def _write_json(path: Path, content: dict[str, Any], indent: int | None = None) -> None:
    temp = path.with_name(f".tmp-{path.name}")
    temp.write_text(json.dumps(content, indent=indent, sort_keys=True) + "\n")
    replace_atomically(temp, path)


class MilvusIndexes:
    """Both directions over one store's Milvus collections, answering like `faiss_index.RetrievalIndexes`:
    `image` answers audio queries, `audio` answers image queries, with store rows as ids."""

    def __init__(self, client: Any, info: dict[str, Any], store: EmbeddingStore):
        self.client = client
        self.info = info
        self.store = store
        self.collections: dict[str, str] = info["milvus"]["collections"]
        self.search_params: dict[str, int] = dict(info["milvus"].get("search_params", {}))

    def audio_to_image(self, audio_queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, d) audio vectors -> scores, store rows (Q, k') of the best-matching images."""
        return self.search("image", audio_queries, k)

    def image_to_audio(self, image_queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, d) image vectors -> scores, store rows (Q, k') of the best-matching audio."""
        return self.search("audio", image_queries, k)

    def search(self, modality: str, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product of L2-normalised queries in collection `modality`, shaped as
        `faiss_index.search` answers: (Q, k') scores and store rows, k' = min(k, rows) less trailing columns
        no query filled; gaps are row -1 with score -inf."""
        if not 1 <= k <= MAX_TOP_K:
            raise ValueError(f"k must be between 1 and {MAX_TOP_K} with Milvus, got {k}")
        matrix = np.asarray(queries, dtype=np.float32)
        matrix = matrix[None, :] if matrix.ndim == 1 else matrix
        if matrix.ndim != 2 or matrix.shape[1] != self.store.dim:
            raise ValueError(f"queries must be (Q, {self.store.dim}), got {np.shape(queries)}")
        depth = min(int(k), len(self.store))
        scores = np.full((matrix.shape[0], depth), -np.inf, np.float32)
        rows = np.full((matrix.shape[0], depth), -1, np.int64)
        if depth == 0 or matrix.shape[0] == 0:
            return scores, rows
        params = {"metric_type": "IP", "params": {name: max(value, depth) if name in AT_LEAST_K else value
                                                  for name, value in self.search_params.items()}}
        matrix = l2_normalise(matrix)
        for low in range(0, matrix.shape[0], SEARCH_BATCH):
            with _milvus_errors(f"search {self.collections[modality]}"):
                answers = self.client.search(self.collections[modality], data=list(matrix[low:low + SEARCH_BATCH]),
                                             limit=depth, output_fields=["row"], search_params=params,
                                             anns_field="vector")
            for offset, hits in enumerate(answers):
                for column, hit in enumerate(hits):
                    scores[low + offset, column] = hit["distance"]
                    rows[low + offset, column] = hit["entity"]["row"]
        found = np.flatnonzero((rows >= 0).any(axis=0))
        width = int(found[-1]) + 1 if found.size else 0
        return scores[:, :width], rows[:, :width]

    def close(self) -> None:
        self.client.close()
        self.store.close()


def open_milvus_indexes(index_dir: str | Path, uri: str | None = None, token: str | None = None) -> MilvusIndexes:
    """Connect to the collections index.json names (at `uri` when given: the cluster seen from here), refusing
    collections of another model or a store that changed since the push."""
    index_dir = Path(index_dir)
    info = json.loads((index_dir / INDEX_JSON).read_text())
    store = EmbeddingStore.open(index_dir)
    if info["fingerprint"] != store.meta.fingerprint:
        raise FingerprintMismatch(
            f"the Milvus collections of {index_dir} hold model fingerprint {info['fingerprint'][:12]} but the store "
            f"holds {store.meta.fingerprint[:12]}: push the store again (jsar index --push milvus)")
    if info["store_rows"] != len(store) or info["store_ids_sha256"] != store.ids_sha256:
        raise FingerprintMismatch(
            f"the Milvus collections of {index_dir} were pushed from {info['store_rows']} rows but the store now "
            f"has {len(store)} (or other clips): push it again (jsar index --push milvus --out {index_dir})")
    if uri:
        info = {**info, "milvus": {**info["milvus"], "uri": MilvusTarget(uri).resolved().uri}}
    client = connect(info["milvus"]["uri"], token)
    with _milvus_errors("describe the collections"):
        for name in info["milvus"]["collections"].values():
            if not client.has_collection(name):
                raise MilvusError(f"Milvus at {info['milvus']['uri']} has no collection {name}; "
                                  f"push the store (jsar index --push milvus --out {index_dir})")
            _check_collection(client.describe_collection(name), name, store)
            client.load_collection(name)
    return MilvusIndexes(client, info, store)
