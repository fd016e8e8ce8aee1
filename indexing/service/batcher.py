"""Micro-batching: concurrent requests share one encoder pass and one FAISS search.

Requests arrive on the event loop (or any thread) and wait on a future; one worker thread takes everything
that queued while it was busy (up to `max_batch`) and runs it as one batch. Under light load a batch is one
request and adds no delay; under heavy load batches grow, so throughput grows with load. Each batcher runs its
model passes on its one thread, so concurrent searches of one kind never run forward passes side by side (the
service has one batcher per kind, and map drawing runs in the request thread pool).
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    """Runs `run_batch(items) -> results` (one result per item, same order) over whatever requests are waiting.

    `max_wait_s` > 0 holds a batch open that long for more requests (more batching, more latency); the default 0
    batches only what queued during the previous batch. `on_batch(size)` observes batch sizes (metrics);
    `initializer()` runs first on the worker thread (per-thread settings such as torch's thread count).
    """

    def __init__(self, run_batch: Callable[[list[Item]], Sequence[Result]], max_batch: int = 32,
                 max_wait_s: float = 0.0, name: str = "jsar-batcher",
                 on_batch: Callable[[int], None] | None = None, initializer: Callable[[], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self.initializer = initializer
        self._queue: queue.Queue = queue.Queue()
        self._closed = threading.Event()
        self._worker = threading.Thread(target=self._work, name=name, daemon=True)
        self._worker.start()

    def submit_future(self, item: Item) -> Future:
        """Queue one item; the future resolves to its result or raises what the batch raised."""
        if self._closed.is_set():
            raise RuntimeError("the batcher is closed")
        future: Future = Future()
        self._queue.put((item, future))
        return future

    async def submit(self, item: Item) -> Result:
        """Await one item's result from the event loop without blocking it."""
        return await asyncio.wrap_future(self.submit_future(item))

    def close(self) -> None:
        """Stop the worker after the batch in progress; waiting requests fail instead of hanging."""
        self._closed.set()
        self._queue.put(None)
        self._worker.join(timeout=10)

    def _take_batch(self) -> list[tuple[Item, Future]] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                entry = self._queue.get(timeout=self.max_wait_s) if self.max_wait_s > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is None:
                self._queue.put(None)  # let the loop see the stop after this batch
                break
            batch.append(entry)
        return batch

    def _work(self) -> None:
        if self.initializer is not None:
            self.initializer()
        while True:
            batch = self._take_batch()
            if batch is None:
                break
            batch = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                results = list(self.run_batch([item for item, _ in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
            except BaseException as error:  # every waiting request gets the error; the worker keeps serving
                logger.debug("batch of %d failed: %s", len(batch), error)
                for _, future in batch:
                    future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result)
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            if entry is not None:
                entry[1].set_exception(RuntimeError("the batcher is closed"))
