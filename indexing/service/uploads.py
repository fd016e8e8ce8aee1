"""Uploaded files: recognised by their first bytes (never by their name or declared type), decoded through the
same readers as files on disk, and removed as soon as they are decoded.

Each upload is written to a folder `jsar-upload-<pid>-<random>` in the temporary directory. A service killed
while decoding (kill -9, out of memory) cannot remove its folder, so a starting service removes the folders of
processes that are gone (`remove_stale_uploads`).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

from jsa_retrieval.decode import DecodeError
from jsa_retrieval.errors import JsarError

Decoded = TypeVar("Decoded")
logger = logging.getLogger(__name__)
UPLOAD_PREFIX = "jsar-upload-"
STALE_AFTER_S = 24 * 3600  # a folder whose owner cannot be told is stale after this

SOUND_FORMATS = ("wav", "flac", "ogg", "mp3", "mp4", "webm")  # webm: what a browser's MediaRecorder writes
IMAGE_FORMATS = ("jpeg", "png", "gif", "bmp", "webp")
SUFFIXES = {"wav": ".wav", "flac": ".flac", "ogg": ".ogg", "mp3": ".mp3", "mp4": ".mp4", "webm": ".webm",
            "jpeg": ".jpg", "png": ".png", "gif": ".gif", "bmp": ".bmp", "webp": ".webp"}


class UploadError(JsarError, ValueError):
    """A request's file is missing, of the wrong type, or undecodable; `status` is the HTTP code to answer."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def sniff_format(head: bytes) -> str | None:
    """The container format from a file's first bytes (at least 12), or None when it is none we read."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06):
        return "mp3"  # ID3 tag or an MPEG audio frame sync with a layer set
    if head[4:8] == b"ftyp":
        return "mp4"  # MP4 / M4A / MOV
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"  # Matroska / WebM
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    return None


def decode_upload(data: bytes, accepted: tuple[str, ...], what: str, decode: Callable[[Path], Decoded]) -> Decoded:
    """`decode(path)` of the upload written to a temporary file named by its sniffed format; the file is removed
    whatever happens. An empty, unrecognised or wrong-type upload raises UploadError (415), a broken one 422."""
    if not data:
        raise UploadError(f"the uploaded {what} is empty", 400)
    found = sniff_format(data[:16])
    if found not in accepted:
        kind = f"a {found} file" if found else "not a format jsar reads"
        raise UploadError(f"the upload is {kind}; expected {what} ({', '.join(accepted)})", 415)
    with tempfile.TemporaryDirectory(prefix=f"{UPLOAD_PREFIX}{os.getpid()}-") as folder:
        path = Path(folder) / f"upload{SUFFIXES[found]}"
        path.write_bytes(data)
        try:
            return decode(path)
        except DecodeError as error:
            reason = str(error).replace(str(path), "upload").replace("\n", " ")
            raise UploadError(f"cannot decode the uploaded {what} ({found}): {reason}", 422) from None


def remove_stale_uploads(folder: Path | None = None) -> list[str]:
    """Remove upload folders left in `folder` (the temporary directory) by services that are no longer running:
    those named after a process that is gone, and unnamed (older) ones a day old. Returns the names removed."""
    folder = Path(folder or tempfile.gettempdir())
    removed = []
    for path in folder.glob(f"{UPLOAD_PREFIX}*"):
        if path.is_dir() and not path.is_symlink() and _is_stale(path):
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                removed.append(path.name)
    if removed:
        logger.warning("removed %d upload folder(s) left by a service that stopped while decoding", len(removed))
    return removed


def _is_stale(path: Path) -> bool:
    owner = path.name[len(UPLOAD_PREFIX):].split("-", 1)[0]
    if owner.isdigit():
        return not _running(int(owner))
    try:
        return time.time() - path.stat().st_mtime > STALE_AFTER_S
    except OSError:
        return False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: running
        return True
    return True
