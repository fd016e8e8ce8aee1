"""The HDF5 embedding store: one row per clip with its image and audio retrieval vectors.

Layout of INDEX_DIR/store.h5 : `image_vectors`, `audio_vectors` (N, d) float32,
L2-normalised, chunked by rows, resizable and *not* compressed (compression made writing 38x slower);
`ids`, `labels` ('' when unknown), `image_paths`, `audio_paths` (N,) variable-length utf-8 strings; attrs
`fingerprint`, `config` (json), `model_name`, `checkpoint`, `dim`, `format_version`, `ids_sha256`.

Writing is resumable and crash-safe. `StoreWriter` appends batches to a buffer and flushes them as
INDEX_DIR/parts/part-rRRR-SSSSSS.h5 (rank, sequence number), each written under a temporary name in the same
folder, fsynced and renamed into place, so a part is either complete or absent. Every row carries the
caller's position of its clip in the dataset list; `finalize` merges an existing store.h5 (rows kept first)
with the parts ordered by that position, streaming chunk by chunk, so a resumed run ends with exactly the
store an uninterrupted run makes, whatever the part boundaries were. The read side (`EmbeddingStore`)
opens the file lazily per process, so it can be handed to DataLoader workers.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import h5py
import numpy as np

from jsa_retrieval.errors import JsarError
from jsa_retrieval.files import fsync_directory, replace_atomically

STORE_FILE = "store.h5"
PARTS_DIR = "parts"
VECTOR_FIELDS = ("image_vectors", "audio_vectors")
STRING_FIELDS = ("ids", "labels", "image_paths", "audio_paths")
FORMAT_VERSION = 1

_TEMP_PREFIX = ".tmp-"
_PART_NAME = re.compile(r"^part-r(\d+)-(\d+)\.h5$")
_STRING_DTYPE = h5py.string_dtype("utf-8")
_STRING_CHUNK_ROWS = 4096
_STORAGE_CHUNK_BYTES = 1 << 20  # HDF5's default chunk cache is 1 MiB: keep one vector chunk within it


class FingerprintMismatch(JsarError, RuntimeError):
    """Vectors of two different models or configurations would be mixed; they are not comparable."""


def make_fingerprint(checkpoint_sha256: str, config: dict[str, Any], model_name: str) -> str:
    """Identity of the model that made the vectors: hash of the checkpoint hash, the config and the model name.

    Two stores (or a store and an index) are comparable only when their fingerprints are equal. For a
    randomly initialised model pass something that pins the weights (e.g. 'random-init-seed-0').
    """
    payload = json.dumps({"checkpoint": checkpoint_sha256, "config": config, "model_name": model_name},
                         sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class StoreMeta:
    """What made the vectors: saved as attrs of store.h5 and of every part file."""

    fingerprint: str
    model_name: str
    config: dict[str, Any]
    checkpoint: str
    dim: int

    def to_attrs(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "model_name": self.model_name,
                "config": json.dumps(self.config, sort_keys=True, default=str), "checkpoint": str(self.checkpoint),
                "dim": int(self.dim), "format_version": FORMAT_VERSION}

    @classmethod
    def from_attrs(cls, attrs: Any) -> "StoreMeta":
        return cls(fingerprint=_attr_str(attrs["fingerprint"]), model_name=_attr_str(attrs["model_name"]),
                   config=json.loads(_attr_str(attrs["config"])), checkpoint=_attr_str(attrs["checkpoint"]),
                   dim=int(attrs["dim"]))


@dataclass
class StoreRecords:
    """A batch of rows: n clips with their (n, d) image and audio vectors. A label of None or '' means unknown."""

    ids: list[str]
    labels: list[str | None]
    image_paths: list[str]
    audio_paths: list[str]
    image_vectors: np.ndarray
    audio_vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def checked(self, dim: int) -> "StoreRecords":
        """Validated copy with str columns and float32 L2-normalised vectors (inner product = cosine)."""
        n = len(self.ids)
        for name in ("labels", "image_paths", "audio_paths"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"StoreRecords.{name} has {len(getattr(self, name))} entries for {n} ids")
        vectors = {}
        for name in VECTOR_FIELDS:
            values = np.asarray(getattr(self, name))
            if values.shape != (n, dim):
                raise ValueError(f"StoreRecords.{name} has shape {values.shape}, expected {(n, dim)}")
            bad = ~np.isfinite(values).all(axis=1)
            if bad.any():
                raise ValueError(f"non-finite {name} for ids {[self.ids[i] for i in np.flatnonzero(bad)[:5]]}")
            vectors[name] = l2_normalise(values)
        return StoreRecords(ids=[str(i) for i in self.ids],
                            labels=["" if label is None else str(label) for label in self.labels],
                            image_paths=[str(p) for p in self.image_paths],
                            audio_paths=[str(p) for p in self.audio_paths], **vectors)


@dataclass(frozen=True)
class StoreRecord:
    """One row of the store, as a search hit shows it. `label` is None when unknown ('' in the file)."""

    row: int
    id: str
    label: str | None
    image_path: str
    audio_path: str


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, d) float32 with unit rows (zero rows stay zero); computed in float64 so it is reproducible."""
    values = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return (values / np.maximum(norms, 1e-12)).astype(np.float32)


def storage_chunk_rows(dim: int) -> int:
    """Rows per HDF5 chunk of a vector dataset: about 1 MiB, so a random row read touches 1 MiB at most."""
    return int(max(1, min(_STRING_CHUNK_ROWS, _STORAGE_CHUNK_BYTES // (4 * max(dim, 1)))))


class StoreWriter:
    """Resumable writer of INDEX_DIR/store.h5 for one model fingerprint.

    Usage: `done = writer.done_ids()`, embed only the clips not in `done`, call `write(records, positions)`
    per batch (positions = index of each clip in the caller's full clip list), then `finalize()`.
    Under DDP give each rank its own `rank` (part names do not collide), flush on every rank, barrier, and
    finalize on one rank only.
    """

    def __init__(self, index_dir: str | Path, meta: StoreMeta, chunk_rows: int = 4096, rank: int = 0):
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        self.index_dir = Path(index_dir)
        self.meta = meta
        self.chunk_rows = int(chunk_rows)
        self.rank = int(rank)
        self.parts_dir = self.index_dir / PARTS_DIR
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self._check_existing()
        for stray in self.parts_dir.glob(f"{_TEMP_PREFIX}part-r{self.rank:03d}-*"):
            stray.unlink()  # a part this rank was writing when it died: never renamed, so never counted
        if self.rank == 0:  # the rank that finalizes owns the temporary store of a merge that died
            (self.index_dir / f"{_TEMP_PREFIX}{STORE_FILE}").unlink(missing_ok=True)
        own = [seq for rank, seq, _ in _list_parts(self.parts_dir) if rank == self.rank]
        self._next_seq = max(own, default=-1) + 1
        self._buffer: list[tuple[StoreRecords, np.ndarray]] = []
        self._buffered_rows = 0

    @property
    def store_path(self) -> Path:
        return self.index_dir / STORE_FILE

    def _check_existing(self) -> None:
        """Refuse to resume or append when anything already on disk was made by another model."""
        if self.store_path.exists():
            with h5py.File(self.store_path, "r") as handle:
                existing = StoreMeta.from_attrs(handle.attrs)
            _require_fingerprint(existing.fingerprint, self.meta.fingerprint, str(self.store_path))
            if existing.dim != self.meta.dim:
                raise ValueError(f"{self.store_path} holds {existing.dim}-d vectors, "
                                 f"writer was given dim={self.meta.dim}")
        for _, _, path in _list_parts(self.parts_dir):
            with h5py.File(path, "r") as handle:
                _require_fingerprint(_attr_str(handle.attrs["fingerprint"]), self.meta.fingerprint, str(path))

    def done_ids(self) -> set[str]:
        """Ids already embedded: rows of an existing store.h5, of complete parts and of this writer's buffer."""
        done: set[str] = set()
        if self.store_path.exists():
            with h5py.File(self.store_path, "r") as handle:
                done.update(_read_strings(handle["ids"], 0, handle["ids"].shape[0]))
        for _, _, path in _list_parts(self.parts_dir):
            with h5py.File(path, "r") as handle:
                done.update(_read_strings(handle["ids"], 0, handle["ids"].shape[0]))
        for records, _ in self._buffer:
            done.update(records.ids)
        return done

    def write(self, records: StoreRecords, positions: Sequence[int] | np.ndarray) -> None:
        """Buffer a batch; a part file is written whenever `chunk_rows` rows are buffered.

        positions: (n,) non-negative ints, each clip's index in the caller's full clip list; they fix the
        final row order so that resuming never changes the store.
        """
        order = np.asarray(positions)
        if order.shape != (len(records),) or (order.size and not np.issubdtype(order.dtype, np.integer)):
            raise ValueError(f"positions must be {len(records)} integers, got shape {order.shape} {order.dtype}")
        if order.size and order.min() < 0:
            raise ValueError("positions must be non-negative")
        if len(records) == 0:
            return
        self._buffer.append((records.checked(self.meta.dim), order.astype(np.int64)))
        self._buffered_rows += len(records)
        if self._buffered_rows >= self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one part: temp file in parts/, fsync, rename. No-op when empty."""
        if not self._buffer:
            return
        positions = np.concatenate([p for _, p in self._buffer])
        records = _concatenate([r for r, _ in self._buffer])
        order = np.argsort(positions, kind="stable")  # parts sorted by position: merges read them sequentially
        name = f"part-r{self.rank:03d}-{self._next_seq:06d}.h5"
        self.parts_dir.mkdir(parents=True, exist_ok=True)  # finalize removes it; the writer may be reused
        temp = self.parts_dir / f"{_TEMP_PREFIX}{name}"
        with h5py.File(temp, "w") as handle:
            handle.attrs.update(self.meta.to_attrs())
            handle.attrs["rank"] = self.rank
            handle.attrs["sequence"] = self._next_seq
            handle.create_dataset("positions", data=positions[order])
            for field in STRING_FIELDS:
                column = np.array(getattr(records, field), dtype=object)[order]
                handle.create_dataset(field, data=column, dtype=_STRING_DTYPE)
            for field in VECTOR_FIELDS:
                handle.create_dataset(field, data=getattr(records, field)[order], dtype=np.float32)
        replace_atomically(temp, self.parts_dir / name)
        self._next_seq += 1
        self._buffer, self._buffered_rows = [], 0

    def finalize(self) -> Path:
        """Merge store.h5 (if any, rows first) and every part (ordered by position) into a new store.h5.

        Streams `chunk_rows` rows at a time, writes under a temporary name, fsyncs, renames, then deletes
        the parts. Part rows whose id is already in store.h5 are skipped: they are leftovers of a finalize
        that died after the rename, or re-embeddings under the same fingerprint (hence the same vectors).
        """
        self.flush()
        self._check_existing()
        parts = [path for _, _, path in _list_parts(self.parts_dir)]
        existing_ids: set[str] = set()
        num_existing = 0
        if self.store_path.exists():
            with h5py.File(self.store_path, "r") as handle:
                num_existing = handle["ids"].shape[0]
                existing_ids = set(_read_strings(handle["ids"], 0, num_existing))
        plan = _merge_plan(parts, existing_ids)
        if plan.num_rows == 0 and self.store_path.exists():
            _remove_parts(parts, self.parts_dir)
            return self.store_path
        temp = self.index_dir / f"{_TEMP_PREFIX}{STORE_FILE}"
        with h5py.File(temp, "w") as out:
            out.attrs.update(self.meta.to_attrs())
            _create_store_datasets(out, num_existing + plan.num_rows, self.meta.dim)
            if num_existing:
                with h5py.File(self.store_path, "r") as old:
                    for start in range(0, num_existing, self.chunk_rows):
                        stop = min(start + self.chunk_rows, num_existing)
                        for field in STRING_FIELDS:
                            out[field][start:stop] = _read_strings(old[field], start, stop)
                        for field in VECTOR_FIELDS:
                            out[field][start:stop] = old[field][start:stop]
            _copy_parts_in_order(out, parts, plan, num_existing, self.chunk_rows)
            out.attrs["ids_sha256"] = _ids_digest(out["ids"], self.chunk_rows)
        replace_atomically(temp, self.store_path)
        _remove_parts(parts, self.parts_dir)
        return self.store_path


@dataclass
class _MergePlan:
    """Final order of the new rows: row `k` of the output comes from part `part[k]`, row `row[k]`."""

    part: np.ndarray
    row: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.part.shape[0])


def _merge_plan(parts: list[Path], existing_ids: set[str]) -> _MergePlan:
    """Order all new part rows by (position, part, row); refuse duplicate ids or positions among them."""
    positions, part_numbers, rows = [], [], []
    seen: dict[str, Path] = {}
    for number, path in enumerate(parts):
        with h5py.File(path, "r") as handle:
            ids = _read_strings(handle["ids"], 0, handle["ids"].shape[0])
            part_positions = handle["positions"][...]
        keep = np.array([i not in existing_ids for i in ids], dtype=bool)
        for i in np.flatnonzero(keep):
            if ids[i] in seen:
                raise ValueError(f"clip id {ids[i]!r} appears in both {seen[ids[i]].name} and {path.name}; "
                                 "clip ids must be unique")
            seen[ids[i]] = path
        positions.append(part_positions[keep])
        part_numbers.append(np.full(int(keep.sum()), number, dtype=np.int64))
        rows.append(np.flatnonzero(keep))
    if not positions:
        return _MergePlan(part=np.zeros(0, np.int64), row=np.zeros(0, np.int64))
    position = np.concatenate(positions)
    part, row = np.concatenate(part_numbers), np.concatenate(rows)
    order = np.lexsort((row, part, position))
    sorted_positions = position[order]
    repeated = np.flatnonzero(sorted_positions[1:] == sorted_positions[:-1])
    if repeated.size:
        raise ValueError(f"position {int(sorted_positions[repeated[0]])} was given to two different clips; "
                         "positions must be each clip's unique index in the clip list")
    return _MergePlan(part=part[order], row=row[order])


def _copy_parts_in_order(out: h5py.File, parts: list[Path], plan: _MergePlan, offset: int, chunk_rows: int) -> None:
    """Write the planned rows at out[offset:], `chunk_rows` at a time, keeping a part open only while needed."""
    remaining = np.bincount(plan.part, minlength=len(parts))
    handles: dict[int, h5py.File] = {}
    try:
        for start in range(0, plan.num_rows, chunk_rows):
            stop = min(start + chunk_rows, plan.num_rows)
            part, row = plan.part[start:stop], plan.row[start:stop]
            columns: dict[str, Any] = {field: np.empty(stop - start, dtype=object) for field in STRING_FIELDS}
            columns.update({field: np.empty((stop - start, out[field].shape[1]), np.float32)
                            for field in VECTOR_FIELDS})
            for number in np.unique(part):
                where = np.flatnonzero(part == number)
                source_rows = row[where]
                low, high = int(source_rows.min()), int(source_rows.max()) + 1  # contiguous: parts are sorted
                handle = handles.get(int(number))
                if handle is None:
                    handle = handles[int(number)] = h5py.File(parts[number], "r")
                for field in STRING_FIELDS:
                    block = np.asarray(_read_strings(handle[field], low, high), dtype=object)
                    columns[field][where] = block[source_rows - low]
                for field in VECTOR_FIELDS:
                    columns[field][where] = handle[field][low:high][source_rows - low]
                remaining[number] -= where.size
                if remaining[number] == 0:
                    handles.pop(int(number)).close()
            for field, values in columns.items():
                out[field][offset + start:offset + stop] = values
    finally:
        for handle in handles.values():
            handle.close()


class EmbeddingStore:
    """Read side of store.h5: metadata up front, the HDF5 file opened lazily in whichever process reads.

    h5py handles must not cross a fork, so the handle is reopened when the process id changes and is
    dropped when the object is pickled (DataLoader workers with spawn).
    """

    def __init__(self, path: Path, meta: StoreMeta, num_rows: int, ids_sha256: str = ""):
        self.path = Path(path)
        self.meta = meta
        self.ids_sha256 = ids_sha256  # digest of the ids in row order, recorded by indexes built on this store
        self._num_rows = int(num_rows)
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        self._strings: dict[str, Any] = {}  # the open handle's string datasets (a lookup by name costs ~0.1 ms)

    @classmethod
    def open(cls, index_dir: str | Path) -> "EmbeddingStore":
        path = Path(index_dir) / STORE_FILE
        if not path.exists():
            raise FileNotFoundError(f"no embedding store at {path}; embed a dataset into {index_dir} first")
        with h5py.File(path, "r") as handle:
            meta = StoreMeta.from_attrs(handle.attrs)
            num_rows = handle["ids"].shape[0]
            ids_sha256 = _attr_str(handle.attrs.get("ids_sha256", ""))
        return cls(path, meta, num_rows, ids_sha256)

    def __len__(self) -> int:
        return self._num_rows

    @property
    def dim(self) -> int:
        return self.meta.dim

    def _file(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            self._handle = h5py.File(self.path, "r")  # a handle inherited over fork is abandoned, not closed
            self._pid = os.getpid()
            self._strings = {}
        return self._handle

    def _string_dataset(self, field: str) -> Any:
        """`_dataset(field)` read as str, kept for the open handle."""
        self._file()  # a new handle (or process) starts with no kept datasets
        if field not in self._strings:
            self._strings[field] = self._dataset(field).asstr()
        return self._strings[field]

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle, self._pid, self._strings = None, None, {}

    def __enter__(self) -> "EmbeddingStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"], state["_pid"], state["_strings"] = None, None, {}
        return state

    def _dataset(self, field: str) -> h5py.Dataset:
        if field not in VECTOR_FIELDS + STRING_FIELDS:
            raise ValueError(f"unknown store field {field!r}; expected one of {VECTOR_FIELDS + STRING_FIELDS}")
        return self._file()[field]

    def iter_chunks(self, field: str = "image_vectors", chunk_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start row, block): vectors as (<= chunk_rows, d) float32, strings as (<= chunk_rows,) object."""
        dataset = self._dataset(field)
        for start in range(0, self._num_rows, chunk_rows):
            stop = min(start + chunk_rows, self._num_rows)
            if field in STRING_FIELDS:
                yield start, np.asarray(_read_strings(dataset, start, stop), dtype=object)
            else:
                yield start, np.asarray(dataset[start:stop], dtype=np.float32)

    def read_rows(self, field: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows at `indices` (any order, repeats allowed), in that order: (k, d) float32 or (k,) object of str.

        Reads one storage chunk at a time, so memory stays at the result plus one chunk.
        """
        dataset = self._dataset(field)
        wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self._num_rows):
            raise IndexError(f"row indices must lie in [0, {self._num_rows})")
        unique, inverse = np.unique(wanted, return_inverse=True)
        is_string = field in STRING_FIELDS
        result = np.empty((unique.size,) if is_string else (unique.size, self.dim),
                          dtype=object if is_string else np.float32)
        step = dataset.chunks[0] if dataset.chunks else max(unique.size, 1)
        chunk_of = unique // step
        bounds = np.flatnonzero(np.diff(chunk_of)) + 1
        for group in np.split(np.arange(unique.size), bounds):
            if group.size == 0:
                continue
            low, high = int(unique[group[0]]), int(unique[group[-1]]) + 1
            block = _read_strings(dataset, low, high) if is_string else dataset[low:high]
            result[group] = np.asarray(block, dtype=result.dtype)[unique[group] - low]
        return result[inverse]

    def record(self, row: int) -> StoreRecord:
        """The strings of one row (for showing a hit)."""
        return self.records([row])[0]

    def records(self, rows: Sequence[int]) -> list[StoreRecord]:
        """The strings of several rows, in the order given (a search's hits): one read per string field for all
        of them, not one per row and field (40 small HDF5 reads were 12 ms of a 35 ms service search)."""
        indexes = [row + self._num_rows if row < 0 else row for row in map(int, rows)]
        bad = [row for row, index in zip(rows, indexes) if not 0 <= index < self._num_rows]
        if bad:
            raise IndexError(f"row {bad[0]} out of range for a store of {self._num_rows} rows")
        if not indexes:
            return []
        wanted = sorted(set(indexes))  # h5py reads a selection of increasing rows
        columns = {field: dict(zip(wanted, self._string_dataset(field)[wanted].tolist())) for field in STRING_FIELDS}
        return [StoreRecord(row=index, id=columns["ids"][index], label=columns["labels"][index] or None,
                            image_path=columns["image_paths"][index], audio_path=columns["audio_paths"][index])
                for index in indexes]

    def column(self, field: str) -> list[str]:
        """A whole string column (ids or labels fit in memory even for millions of clips; vectors do not)."""
        if field not in STRING_FIELDS:
            raise ValueError(f"column() reads string fields {STRING_FIELDS}; stream vectors with iter_chunks()")
        values: list[str] = []
        for _, block in self.iter_chunks(field, chunk_rows=65536):
            values.extend(block.tolist())
        return values

    def ids(self) -> list[str]:
        return self.column("ids")

    def labels(self) -> list[str]:
        """Class label per row, '' when unknown (the file's convention, convenient for grouping)."""
        return self.column("labels")


def _ids_digest(dataset: h5py.Dataset, chunk_rows: int) -> str:
    """SHA-256 of the ids in row order: lets an index tell that the rows it points at are still the same."""
    digest = hashlib.sha256()
    for start in range(0, dataset.shape[0], chunk_rows):
        for value in _read_strings(dataset, start, min(start + chunk_rows, dataset.shape[0])):
            digest.update(value.encode("utf-8") + b"\n")
    return digest.hexdigest()


def _create_store_datasets(handle: h5py.File, num_rows: int, dim: int) -> None:
    """Empty datasets of the final size, chunked by rows, resizable (appends), without compression."""
    vector_rows = storage_chunk_rows(dim)
    for field in VECTOR_FIELDS:
        handle.create_dataset(field, shape=(num_rows, dim), maxshape=(None, dim), dtype=np.float32,
                              chunks=(vector_rows, dim))
    for field in STRING_FIELDS:
        handle.create_dataset(field, shape=(num_rows,), maxshape=(None,), dtype=_STRING_DTYPE,
                              chunks=(_STRING_CHUNK_ROWS,))


def _concatenate(batches: list[StoreRecords]) -> StoreRecords:
    if len(batches) == 1:
        return batches[0]
    return StoreRecords(
        **{field: [value for batch in batches for value in getattr(batch, field)] for field in STRING_FIELDS},
        **{field: np.concatenate([getattr(batch, field) for batch in batches]) for field in VECTOR_FIELDS})


def _read_strings(dataset: h5py.Dataset, start: int, stop: int) -> list[str]:
    if stop <= start:
        return []
    return dataset.asstr()[start:stop].tolist()


def _attr_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _require_fingerprint(found: str, expected: str, where: str) -> None:
    if found != expected:
        raise FingerprintMismatch(
            f"{where} was made by model fingerprint {found[:12]}, not {expected[:12]}: vectors of different "
            "models cannot be mixed; use a new index directory or remove the old one")


def _list_parts(parts_dir: Path) -> list[tuple[int, int, Path]]:
    """Complete parts as (rank, sequence, path), sorted; temporary files never match the pattern."""
    found = []
    if parts_dir.is_dir():
        for path in parts_dir.iterdir():
            match = _PART_NAME.match(path.name)
            if match:
                found.append((int(match.group(1)), int(match.group(2)), path))
    return sorted(found)


def _remove_parts(parts: list[Path], parts_dir: Path) -> None:
    for path in parts:
        path.unlink(missing_ok=True)
    fsync_directory(parts_dir)
    try:
        parts_dir.rmdir()
    except OSError:
        pass  # another rank's files (or its temp files) are still there
