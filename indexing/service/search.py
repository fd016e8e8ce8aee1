"""The search service behind the HTTP routes: the micro-batchers that feed the `Engine`, the searches remembered
under a query id, and their hits' map pictures, drawn on demand (all hits of a search at once) and cached within a
byte budget."""
from __future__ import annotations

import asyncio
import functools
import io
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from cachetools import TTLCache
from starlette.exceptions import HTTPException

from indexing.engine import Engine, Hit
from jsa_retrieval.pictures import spectrogram_picture

from .batcher import MicroBatcher
from .config import ServeConfig
from .uploads import decode_upload


@dataclass
class BatchTiming:
    """Milliseconds of the micro-batch a search rode in: its encoder pass, and its FAISS search with the hits'
    records (shared by every search of the batch)."""

    encode_ms: float
    search_ms: float


@dataclass
class Query:
    """A search remembered under its id: enough to draw its hits' pictures later."""

    kind: str  # 'audio' (hits are images) | 'image' (hits are sounds)
    side: Any  # the query's AudioSide (batch of one, CPU) for an audio query; None otherwise
    hits: list[Hit]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def hits_by_k(search: Callable[[np.ndarray, int], list[list[Hit]]], vectors: np.ndarray,
              ks: list[int]) -> list[list[Hit]]:
    """One FAISS search per distinct k over all queries that asked for it, so each query gets exactly the hits a
    search of its own would (an approximate index's top 10 need not be the first 10 of its top 50)."""
    found: list[list[Hit]] = [[] for _ in ks]
    for k in sorted(set(ks)):
        rows = [i for i, wanted in enumerate(ks) if wanted == k]
        for i, hits in zip(rows, search(vectors[rows], k)):
            found[i] = hits
    return found


class SearchService:
    """The engine behind the HTTP routes: batchers, remembered queries and cached map pictures."""

    def __init__(self, engine: Engine, config: ServeConfig, on_batch: Callable[[str, int], None]):
        self.engine = engine
        self.config = config
        self.started_at = time.time()
        store = engine.indexes.store
        self.facts = {"items": len(store), "model": store.meta.model_name, "dim": store.dim, "max_k": config.max_k}
        # torch's OpenMP team belongs to the thread that runs a parallel region and lives as long as it does. With a
        # second thread's team idle beside it, a lone sound's encoder pass took 9.0 ms against 5.4-5.8 ms as the
        # only team (we read it as libgomp counting more threads than cores and barely spin-waiting). So both
        # encoders run on one thread (`encoder_batcher`) with the process's torch threads, and the other threads
        # that touch torch run it on one core, which makes no team: uploads decoded (and turned into
        # spectrograms), and hit maps drawn
        self.map_pool = ThreadPoolExecutor(config.map_threads, thread_name_prefix="jsar-maps",
                                           initializer=keep_torch_threads, initargs=(1,))
        self.decode_pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="jsar-decode",
                                              initializer=keep_torch_threads, initargs=(1,))
        self.rows = {item_id: row for row, item_id in enumerate(store.ids())}
        self.queries: TTLCache = TTLCache(config.query_cache_size, config.cache_ttl_s)
        # the spectrograms of the latest sound queries, for their own picture (~0.26 MB each at 5 s)
        self.query_inputs: TTLCache = TTLCache(config.query_picture_cache_size, config.cache_ttl_s)
        self.maps: TTLCache = TTLCache(config.map_cache_bytes, config.cache_ttl_s, getsizeof=len)
        self._cache_lock = threading.Lock()
        self.on_batch = on_batch
        self.encoder_batcher = MicroBatcher(self._encoder_batch, config.max_batch, config.batch_wait_s,
                                            "jsar-encoder",
                                            initializer=functools.partial(keep_torch_threads, torch.get_num_threads()))
        self.vector_batcher = MicroBatcher(self._vector_batch, config.max_batch, config.batch_wait_s, "jsar-vector",
                                           lambda size: on_batch("vector", size))

    def close(self) -> None:
        for batcher in (self.encoder_batcher, self.vector_batcher):
            batcher.close()
        self.map_pool.shutdown(wait=False, cancel_futures=True)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    def _encoder_batch(self, items: list[tuple[str, torch.Tensor, int]]) -> list[tuple]:
        """A micro-batch of sound ('audio', spectrogram, k) and image ('image', image, k) searches: each kind's
        encoder pass and FAISS search, answers in the items' order. A kind's failure fails the whole batch."""
        answers: list[tuple] = [() for _ in items]
        for kind, run in (("audio", self._audio_batch), ("image", self._image_batch)):
            rows = [i for i, item in enumerate(items) if item[0] == kind]
            if rows:
                self.on_batch(kind, len(rows))
                for i, answer in zip(rows, run([items[i][1:] for i in rows])):
                    answers[i] = answer
        return answers

    def _audio_batch(self, items: list[tuple[torch.Tensor, int]]
                     ) -> list[tuple[list[Hit], Any, BatchTiming, torch.Tensor]]:
        began = time.perf_counter()
        side = self.engine.encode_audio(torch.stack([spectrogram for spectrogram, _ in items]))
        encoded = time.perf_counter()
        hits = hits_by_k(self.engine.image_hits, side.vector.cpu().numpy(), [k for _, k in items])
        timing = _batch_timing(began, encoded)
        # the (F, T) float16 copy that draws the query itself (`remember`), made here: torch on the event loop's
        # thread would start a second OpenMP team (see __init__)
        return [(hits[i], side.row(i).to("cpu"), timing, spectrogram[0].to(torch.float16))
                for i, (spectrogram, _) in enumerate(items)]

    def _image_batch(self, items: list[tuple[torch.Tensor, int]]) -> list[tuple[list[Hit], BatchTiming]]:
        began = time.perf_counter()
        side = self.engine.encode_image(torch.stack([image for image, _ in items]))
        encoded = time.perf_counter()
        hits = hits_by_k(self.engine.sound_hits, side.vector.cpu().numpy(), [k for _, k in items])
        timing = _batch_timing(began, encoded)
        return [(found, timing) for found in hits]

    def _vector_batch(self, items: list[tuple[str, np.ndarray, int]]) -> list[tuple[list[Hit], BatchTiming]]:
        began = time.perf_counter()
        found: list[list[Hit]] = [[] for _ in items]
        for direction, search in (("audio_to_image", self.engine.image_hits), ("image_to_audio", self.engine.sound_hits)):
            rows = [i for i, item in enumerate(items) if item[0] == direction]
            if rows:
                hits = hits_by_k(search, np.stack([items[i][1] for i in rows]), [items[i][2] for i in rows])
                for i, found_hits in zip(rows, hits):
                    found[i] = found_hits
        timing = _batch_timing(began, began)
        return [(hits, timing) for hits in found]

    async def decode(self, *args: Any) -> Any:
        """uploads.decode_upload(*args) on the decoding threads."""
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, decode_upload, *args)

    def remember(self, query: Query, spectrogram: torch.Tensor | None = None) -> str:
        """Keep `query` under a new id; a sound query's (F, T) float16 input spectrogram (from the audio batch)
        goes to the smaller cache that draws the query itself (`query_png`)."""
        query_id = uuid.uuid4().hex
        with self._cache_lock:
            self.queries[query_id] = query
            if spectrogram is not None:
                self.query_inputs[query_id] = spectrogram
        return query_id

    def query_png(self, query_id: str) -> bytes:
        """The picture of a remembered sound query, as the page and contact sheets show it first: its
        spectrogram with its target slot's attention over time. Nothing of a search is served once it expired,
        however recently its pictures were drawn."""
        key = (query_id, None)
        with self._cache_lock:
            png = self.maps.get(key)
            query = self.queries.get(query_id)
            spectrogram = self.query_inputs.get(query_id)
        if png is not None and query is not None:
            return png
        if query is None or query.side is None or spectrogram is None:
            raise HTTPException(404, f"no sound query {query_id!r} to draw (unknown, expired or not a sound): "
                                     "search again")
        attention = query.side.time_attention
        png = _png_bytes(spectrogram_picture(spectrogram.float().numpy(),
                                             None if attention is None else attention[0].numpy()))
        with self._cache_lock:
            if len(png) <= self.maps.maxsize:
                self.maps[key] = png
        return png

    def map_png(self, query_id: str, item_id: str) -> bytes:
        """The picture of one hit of a remembered search; the first request draws all of that search's hits. Not
        served once the search expired, though a picture drawn late in its life is still in the cache."""
        key = (query_id, item_id)
        with self._cache_lock:
            png = self.maps.get(key)
            query = self.queries.get(query_id)
        if query is None:
            raise HTTPException(404, f"no search {query_id!r} (unknown or expired): search again")
        if png is not None:
            return png
        if item_id not in {hit.id for hit in query.hits}:
            raise HTTPException(404, f"{item_id!r} is not a hit of search {query_id!r}")
        with query.lock:  # the tiles of one page ask at once: draw the search's pictures once
            with self._cache_lock:
                png = self.maps.get(key)
            if png is not None:
                return png
            pictures = self.engine.hit_pictures(query.kind, query.side, query.hits)
            encoded = {hit.id: _png_bytes(picture) for hit, picture in zip(query.hits, pictures)}
            with self._cache_lock:
                for hit_id, data in encoded.items():
                    if len(data) <= self.maps.maxsize:
                        self.maps[(query_id, hit_id)] = data
        return encoded[item_id]

    def record(self, item_id: str):
        row = self.rows.get(item_id)
        if row is None:
            raise HTTPException(404, f"no item {item_id!r} in this index")
        return self.engine.indexes.store.record(row)


def keep_torch_threads(count: int) -> None:
    """Run torch on `count` threads on this thread from now on. A thread's first torch call sets its count to the
    one last set on any thread, undoing a count set before it; that first call is made here."""
    torch.get_num_threads()
    torch.set_num_threads(count)


def _batch_timing(began: float, encoded: float) -> BatchTiming:
    """The batch's encoder pass from `began` to `encoded`, its search from then to now (perf_counter seconds)."""
    return BatchTiming(encode_ms=(encoded - began) * 1000, search_ms=(time.perf_counter() - encoded) * 1000)


def search_stages(started: float, decoded: float, answered: float, batch: BatchTiming) -> dict[str, float]:
    """Milliseconds of one search's stages as its route saw them (`perf_counter` readings: the route began, the
    upload was decoded, the batcher answered): decode (the upload read, decoded and made the model's input, on
    the decoding threads), queue (waiting for and handing over to the micro-batcher: the batch before it, the
    thread hops), encode and search (its batch's encoder pass and FAISS search with the hits' records)."""
    batch_ms = (answered - decoded) * 1000
    return {"decode": (decoded - started) * 1000,
            "queue": max(0.0, batch_ms - batch.encode_ms - batch.search_ms),
            "encode": batch.encode_ms, "search": batch.search_ms}


def _png_bytes(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
