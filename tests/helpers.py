"""Helpers the tests share (imported as `from helpers import ...`; pytest puts tests/ on the path): small stores of
paired vectors and brute-force answers to check indexes against, a tiny random checkpoint, the service on a real
socket and its one-line errors, a PNG header that lies about its size."""
from __future__ import annotations

import socket
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from indexing.store import StoreMeta, StoreRecords, StoreWriter, l2_normalise
from jsa_retrieval.checkpoints import checkpoint_state
from jsa_retrieval.config import cpu_config
from jsa_retrieval.models import create_model

TOKEN = "s3cret-token"  # the service tests' bearer token


def clustered_pairs(num: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Image vectors from a 30-component Gaussian mixture; audio vectors = noisy copies (cross-modal-like pairs)."""
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.normal(size=(30, dim)))
    image = l2_normalise(centres[rng.integers(0, 30, num)] + 0.35 * rng.normal(size=(num, dim)) / np.sqrt(dim))
    audio = l2_normalise(image + 0.1 * rng.normal(size=(num, dim)) / np.sqrt(dim))
    return image, audio


def write_store(index_dir: Path, image: np.ndarray, audio: np.ndarray, fingerprint: str = "fp-test") -> None:
    num, dim = image.shape
    meta = StoreMeta(fingerprint=fingerprint, model_name="jsa", config={"dim": dim}, checkpoint="none", dim=dim)
    writer = StoreWriter(index_dir, meta, chunk_rows=1024)
    records = StoreRecords(ids=[f"c{i}" for i in range(num)], labels=[f"k{i % 9}" for i in range(num)],
                           image_paths=[f"i{i}.jpg" for i in range(num)], audio_paths=[f"a{i}.wav" for i in range(num)],
                           image_vectors=image, audio_vectors=audio)
    writer.write(records, positions=np.arange(num))
    writer.finalize()


def brute_force_top_k(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and ids (Q, k) of a full float64 sort, ties to the lower id: the oracle indexes are checked against."""
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean overlap of the first 10 columns of `found` and `exact`, over 10."""
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found[:, :10], exact[:, :10])]))


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random JSA model on 64-px images and 1-s audio, saved in the trainer's format at `path`."""
    config = cpu_config()
    config.data.image_size, config.data.audio_seconds = 64, 1.0
    config.model.encoder_width, config.model.embed_dim, config.model.decoder_hidden = 8, 32, 32
    torch.manual_seed(seed)
    model = create_model(config, "jsa")
    torch.save(checkpoint_state(model, config), path)
    return path


@contextmanager
def live_server(app):
    """The app on a real socket (uvicorn in a thread) for clients that are not TestClient."""
    import uvicorn

    from indexing.service.app import server_config

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(server_config(app, "127.0.0.1", port))  # what `jsar serve` runs: bounded connections
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def upload(client, route, content, k=None, name="query.bin", **kwargs):
    """POST `content` as the file part (and `k`) to `route` of a TestClient."""
    return client.post(route, files={"file": (name, content)}, data={} if k is None else {"k": str(k)}, **kwargs)


def assert_one_line_error(response, status):
    """The response has `status` and one line of error, no traceback; returns the line."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error and "\n" not in error and "Traceback" not in error
    return error


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels and whose data is missing: only a decoder that reads
    the pixels would notice, so refusing it shows the size was checked from the header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
