"""Files that are never left half-written, and how a file is identified by its content.

Checkpoints, stores, indexes and run ledgers are all written to a temporary name in the destination folder,
fsynced, renamed over the destination and the folder fsynced, so a crash leaves the old file or the new one.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Callable


def jsar_cache_root() -> Path:
    """$JSAR_CACHE, else $XDG_CACHE_HOME/jsar, else ~/.cache/jsar: where downloads and derived caches live."""
    root = os.environ.get("JSAR_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jsar"
    return Path(root)


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries (a rename or unlink in it), to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fsync_path(directory)


def replace_atomically(temp: Path, final: Path) -> None:
    """fsync the finished temp file, rename it over `final` and fsync the folder, so a crash leaves old or new."""
    fsync_path(temp)
    os.replace(temp, final)
    fsync_directory(Path(final).parent)


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(handle)` on a temporary file beside `path`, then `replace_atomically` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
        replace_atomically(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def file_sha256(path: str | Path, block_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file read in blocks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def hit_picture_name(rank: int, item_id: str) -> str:
    """File name of a search hit's picture, 'hit_RR_ID.png', the id reduced to characters safe in a file name:
    `jsar query --out` and its `--server` client name them alike."""
    safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in item_id)
    return f"hit_{rank:02d}_{safe_id}.png"
