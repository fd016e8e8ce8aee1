"""Recordings that Debian packages keep inside archives: GCompris's Qt resource bundles (.rcc) and 0 A.D.'s
public.zip hold their sounds as members, not as files.

A mapping path `ARCHIVE!MEMBER` names MEMBER inside ARCHIVE (a path in the extracted package), so a package is
used exactly as `dpkg -x` leaves it; `member_file` hands the decoder a real file either way.
"""
from __future__ import annotations

import struct
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

from jsa_retrieval.errors import JsarError

SEPARATOR = "!"
_RCC_DIRECTORY, _RCC_ZLIB, _RCC_ZSTD = 2, 1, 4


class ArchiveError(JsarError, ValueError):
    """An archive member could not be read; the message names the archive and the member."""


class MemberMissing(ArchiveError, KeyError):
    """The archive has no such member."""

    __str__ = Exception.__str__  # KeyError's would quote the message


def split_member(path: str) -> tuple[str, str | None]:
    """'a/b.rcc!/x/y.ogg' -> ('a/b.rcc', 'x/y.ogg'); a plain path -> (path, None)."""
    archive, separator, member = path.partition(SEPARATOR)
    return (archive, member.lstrip(":/")) if separator else (path, None)


def rcc_members(blob: bytes) -> dict[str, tuple[int, int]]:
    """Every file in a Qt resource bundle (rcc format 1-3): path -> (flags, data offset of its size field)."""
    if blob[:4] != b"qres":
        raise ValueError("not a Qt resource bundle (no 'qres' magic)")
    version, tree, data, names = struct.unpack_from(">IIII", blob, 4)
    node_size = 14 if version == 1 else 22  # format 2 added an 8-byte modification time to every node
    members: dict[str, tuple[int, int]] = {}

    def name_at(offset: int) -> str:
        length = struct.unpack_from(">H", blob, names + offset)[0]
        start = names + offset + 6  # length, then a 4-byte hash, then UTF-16 BE characters
        return blob[start:start + 2 * length].decode("utf-16-be")

    pending = [(0, "")]
    while pending:
        node, prefix = pending.pop()
        base = tree + node * node_size
        name_offset, flags = struct.unpack_from(">IH", blob, base)
        path = f"{prefix}/{name_at(name_offset)}".lstrip("/") if node else ""
        if flags & _RCC_DIRECTORY:
            count, first = struct.unpack_from(">II", blob, base + 6)
            if first + count > len(blob) // node_size or (node and first <= node):
                raise ValueError(f"corrupt directory node {node}")  # children come after their parent
            pending.extend((child, path) for child in range(first, first + count))
        else:
            members[path] = (flags, data + struct.unpack_from(">I", blob, base + 10)[0])
    return members


def read_rcc_member(blob: bytes, member: str) -> bytes:
    """The bytes of `member` in a Qt resource bundle, zlib-inflated if rcc compressed it."""
    members = rcc_members(blob)
    if member not in members:
        raise KeyError(member)
    flags, offset = members[member]
    size = struct.unpack_from(">I", blob, offset)[0]
    payload = blob[offset + 4:offset + 4 + size]
    if len(payload) != size:
        raise ValueError("member runs past the end of the bundle")
    if flags & _RCC_ZSTD:
        raise ValueError("zstd-compressed member; not supported")
    return zlib.decompress(payload[4:]) if flags & _RCC_ZLIB else payload  # qCompress: 4-byte length, then zlib


def read_member(archive: Path, member: str) -> bytes:
    """The bytes of `member` in a .zip or Qt .rcc archive; ArchiveError (one line) when it cannot be had."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                return bundle.read(member)
        return read_rcc_member(Path(archive).read_bytes(), member)
    except KeyError:
        raise MemberMissing(f"{archive}: no member {member}") from None
    except (OSError, ValueError, struct.error, zlib.error, zipfile.BadZipFile) as error:
        raise ArchiveError(f"{archive}!{member}: cannot read ({' '.join(str(error).split())})") from None


@contextmanager
def member_file(source: Path, path: str) -> Iterator[Path]:
    """A real file for a mapping path under `source`: the file itself, or the archive member copied to a
    temporary file with the member's suffix (the decoder picks its reader by suffix)."""
    archive, member = split_member(path)
    if member is None:
        yield Path(source) / path
        return
    data = read_member(Path(source) / archive, member)
    with tempfile.TemporaryDirectory(prefix="jsar-member-") as folder:
        copy = Path(folder) / f"recording{PurePosixPath(member).suffix}"
        copy.write_bytes(data)
        yield copy
