"""`jsar serve`: the search engine as a long-lived HTTP service (FastAPI), as clip-retrieval's back end serves its
k-NN endpoint, plus what no retrieval service offers: each hit's localization map.

    app = create_app(Engine.open("index_dir"), ServeConfig(token=None))
    uvicorn.run(app, host="127.0.0.1", port=8000)

The model and both FAISS indexes are loaded once. Uploads are decoded in the request thread pool; encoding and
FAISS search go through micro-batchers (one encoder pass and one search per batch of concurrent requests), the
same `Engine` batch methods `jsar query` uses. A search is remembered for a bounded time under a query id, and
its hits' maps are drawn on demand, all hits of a query in one encoder pass, and cached within a byte budget.

Safety: URLs carry store ids, never paths, so only files recorded in the store are ever served; uploads are
size-limited and recognised by content; every bad request is a 4xx with a one-line JSON error.
"""
from __future__ import annotations

import hmac
import io
import ipaddress
import logging
import mimetypes
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import parse_qs, quote

import numpy as np
import torch
from cachetools import TTLCache
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from indexing.engine import Engine, Hit
from jsa_retrieval import __version__
from jsa_retrieval.errors import JsarError

from .batcher import MicroBatcher
from .uploads import IMAGE_FORMATS, SOUND_FORMATS, UploadError, decode_upload

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_COOKIE = "jsar_token"
OPEN_PATHS = ("/health",)  # the only path answered without the token
LOOPBACK_NAMES = ("localhost",)


class ServeError(JsarError, ValueError):
    """The service cannot start as asked (e.g. a public bind without a token)."""


@dataclass
class ServeConfig:
    """Limits and safety settings of one service."""

    token: str | None = None  # required on every endpoint but /health when set
    max_upload_bytes: int = 50 * 1024 * 1024
    max_k: int = 100
    max_batch: int = 32
    batch_wait_s: float = 0.0  # extra time a batch stays open for more requests (0: only what queued)
    query_cache_size: int = 1024  # searches remembered for their maps
    cache_ttl_s: float = 900.0
    map_cache_bytes: int = 64 * 1024 * 1024


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: binds nobody else can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise ServeError(f"--host {host} makes the service reachable from other machines: give --token "
                         "(or set JSAR_TOKEN), or bind 127.0.0.1")


# ------------------------------------------------------------------------------------------------ searching
@dataclass
class Query:
    """A search remembered under its id: enough to draw its hits' pictures later."""

    kind: str  # 'audio' (hits are images) | 'image' (hits are sounds)
    side: Any  # the query's AudioSide (batch of one, CPU) for an audio query; None otherwise
    hits: list[Hit]
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def side_row(side: Any, row: int) -> Any:
    """Row `row` of an AudioSide / ImageSide as a batch of one on the CPU."""
    return replace(side, **{f.name: getattr(side, f.name)[row:row + 1].cpu() for f in fields(side)
                            if isinstance(getattr(side, f.name), torch.Tensor)})


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
        store = engine.indexes.store
        self.rows = {item_id: row for row, item_id in enumerate(store.ids())}
        self.queries: TTLCache = TTLCache(config.query_cache_size, config.cache_ttl_s)
        self.maps: TTLCache = TTLCache(config.map_cache_bytes, config.cache_ttl_s, getsizeof=len)
        self._cache_lock = threading.Lock()
        self.audio_batcher = MicroBatcher(self._audio_batch, config.max_batch, config.batch_wait_s, "jsar-audio",
                                          lambda size: on_batch("audio", size))
        self.image_batcher = MicroBatcher(self._image_batch, config.max_batch, config.batch_wait_s, "jsar-image",
                                          lambda size: on_batch("image", size))
        self.vector_batcher = MicroBatcher(self._vector_batch, config.max_batch, config.batch_wait_s, "jsar-vector",
                                           lambda size: on_batch("vector", size))

    def close(self) -> None:
        for batcher in (self.audio_batcher, self.image_batcher, self.vector_batcher):
            batcher.close()

    def _audio_batch(self, items: list[tuple[torch.Tensor, int]]) -> list[tuple[list[Hit], Any]]:
        side = self.engine.encode_audio(torch.stack([spectrogram for spectrogram, _ in items]))
        hits = hits_by_k(self.engine.image_hits, side.vector.cpu().numpy(), [k for _, k in items])
        return [(hits[i], side_row(side, i)) for i in range(len(items))]

    def _image_batch(self, items: list[tuple[torch.Tensor, int]]) -> list[list[Hit]]:
        side = self.engine.encode_image(torch.stack([image for image, _ in items]))
        return hits_by_k(self.engine.sound_hits, side.vector.cpu().numpy(), [k for _, k in items])

    def _vector_batch(self, items: list[tuple[str, np.ndarray, int]]) -> list[list[Hit]]:
        found: list[list[Hit]] = [[] for _ in items]
        for direction, search in (("audio_to_image", self.engine.image_hits), ("image_to_audio", self.engine.sound_hits)):
            rows = [i for i, item in enumerate(items) if item[0] == direction]
            if rows:
                hits = hits_by_k(search, np.stack([items[i][1] for i in rows]), [items[i][2] for i in rows])
                for i, found_hits in zip(rows, hits):
                    found[i] = found_hits
        return found

    def remember(self, query: Query) -> str:
        query_id = uuid.uuid4().hex
        with self._cache_lock:
            self.queries[query_id] = query
        return query_id

    def map_png(self, query_id: str, item_id: str) -> bytes:
        """The picture of one hit of a remembered search; the first request draws all of that search's hits."""
        key = (query_id, item_id)
        with self._cache_lock:
            png = self.maps.get(key)
            query = self.queries.get(query_id)
        if png is not None:
            return png
        if query is None:
            raise HTTPException(404, f"no search {query_id!r} (unknown or expired): search again")
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


def _png_bytes(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def hit_json(hit: Hit, query_id: str | None) -> dict[str, Any]:
    """A hit as the API shows it: ids and URLs, never file paths; a map URL when its search was remembered."""
    item = quote(hit.id, safe="")
    return {"rank": hit.rank, "id": hit.id, "label": hit.label, "score": hit.score,
            "image_url": f"/items/{item}/image", "audio_url": f"/items/{item}/audio",
            "map_url": f"/maps/{query_id}/{item}.png" if query_id else None}


def search_json(query_id: str | None, kind: str, k: int, hits: list[Hit], started: float) -> dict[str, Any]:
    return {"query_id": query_id, "kind": kind, "k": k, "hits": [hit_json(hit, query_id) for hit in hits],
            "took_ms": round((time.perf_counter() - started) * 1000, 2)}


# ------------------------------------------------------------------------------------------- metrics, guard
class ServiceMetrics:
    """Prometheus series of one app (own registry, so several apps in one process do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("jsar_requests_total", "HTTP requests answered", ["route", "method", "status"],
                                registry=self.registry)
        self.errors = Counter("jsar_errors_total", "HTTP requests answered with 4xx or 5xx", ["route", "status"],
                              registry=self.registry)
        self.latency = Histogram("jsar_request_seconds", "Time to answer a request", ["route"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10))
        self.batch_size = Histogram("jsar_batch_size", "Requests per micro-batch", ["batcher"], registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, open fds

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()


def _json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


class Guard:
    """ASGI middleware around every request: the token, the upload size limit, and the metrics.

    The token may come as `Authorization: Bearer T`, as the `jsar_token` cookie, or as `?token=T` (which then
    sets the cookie, so a page opened with it can load its images). A body over the limit is refused from its
    Content-Length before it is read, or when the running count passes the limit for a chunked body.
    """

    def __init__(self, app, token: str | None, max_bytes: int, metrics: ServiceMetrics):
        self.app, self.token, self.max_bytes, self.metrics = app, token, max_bytes, metrics

    def _token_in(self, scope) -> tuple[str | None, bool]:
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        bearer = headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            return bearer[7:].strip(), False
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == TOKEN_COOKIE:
                return value, False
        from_query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        return (from_query[0], True) if from_query else (None, False)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = {"status": 500, "too_large": False, "replaced": False}
        set_cookie = False

        async def send_observed(message):
            if message["type"] == "http.response.start":
                if state["too_large"]:  # the app failed on the body we cut off: answer 413 instead
                    state["replaced"] = True
                    return await _send_response(send, _json_error(413, self._too_large()))
                state["status"] = message["status"]
                if set_cookie:
                    message = dict(message, headers=list(message.get("headers", [])) + [(
                        b"set-cookie", f"{TOKEN_COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode())])
            elif state["replaced"]:
                return None
            await send(message)

        async def respond(response: Response):
            state["status"] = response.status_code
            await response(scope, receive, send)

        try:
            if self.token and scope["path"] not in OPEN_PATHS:
                given, set_cookie = self._token_in(scope)
                if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
                    return await respond(_json_error(401, "missing or wrong token: send 'Authorization: Bearer "
                                                          "TOKEN' or open the page with ?token=TOKEN"))
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                return await respond(_json_error(413, self._too_large()))
            received = 0

            async def receive_counted():
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    state["too_large"] = True
                    raise UploadError(self._too_large(), 413)
                return message

            await self.app(scope, receive_counted, send_observed)
            if state["replaced"]:
                state["status"] = 413
        finally:
            route = scope.get("route")
            self.metrics.observe(getattr(route, "path", "unmatched"), scope["method"], state["status"],
                                 time.perf_counter() - started)

    def _too_large(self) -> str:
        return f"upload larger than the limit of {self.max_bytes / 1024 / 1024:g} MB"


async def _send_response(send, response: Response) -> None:
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


# ------------------------------------------------------------------------------------------------ the app
class VectorQuery(BaseModel):
    vector: list[float] = Field(description="A query embedding of the store's dimension (L2-normalised here).")
    direction: Literal["audio_to_image", "image_to_audio"] = Field(
        description="audio_to_image: an audio vector searched among images; image_to_audio: the reverse.")
    k: int = Field(10, ge=1)


def create_app(engine: Engine, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app over an opened Engine (routes, OpenAPI page at /docs, the web page at /)."""
    config = config or ServeConfig()
    metrics = ServiceMetrics()
    service = SearchService(engine, config, lambda batcher, size: metrics.batch_size.labels(batcher).observe(size))
    store = engine.indexes.store

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="jsar", version=__version__, lifespan=lifespan,
                  description="Search sounds by picture and pictures by sound; see where each sound comes from.")
    app.state.service = service
    app.add_middleware(Guard, token=config.token, max_bytes=config.max_upload_bytes, metrics=metrics)
    started_at = time.time()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _json_error(error.status_code, error.detail)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return _json_error(422, f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", ""))

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, error: UploadError) -> JSONResponse:
        return _json_error(error.status, str(error))

    @app.exception_handler(JsarError)
    async def domain_error(request: Request, error: JsarError) -> JSONResponse:
        return _json_error(422, str(error))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("error answering %s %s", request.method, request.url.path)
        return _json_error(500, f"internal error ({type(error).__name__}); see the service log")

    k_form = Form(10, ge=1, le=config.max_k, description="Number of hits.")

    async def read_upload(upload: UploadFile) -> bytes:
        data = await upload.read()
        await upload.close()
        return data

    @app.post("/search/audio", summary="A sound or video file -> the images whose sound source matches")
    async def search_audio(file: UploadFile = File(...), k: int = k_form) -> dict[str, Any]:
        started = time.perf_counter()
        data = await read_upload(file)
        spectrogram = await run_in_threadpool(decode_upload, data, SOUND_FORMATS, "sound", engine.audio_input)
        del data
        hits, side = await service.audio_batcher.submit((spectrogram, k))
        return search_json(service.remember(Query("audio", side, hits)), "audio", k, hits, started)

    @app.post("/search/image", summary="An image file -> the sounds that belong to it")
    async def search_image(file: UploadFile = File(...), k: int = k_form) -> dict[str, Any]:
        started = time.perf_counter()
        data = await read_upload(file)
        image = await run_in_threadpool(decode_upload, data, IMAGE_FORMATS, "image", engine.image_input)
        del data
        hits = await service.image_batcher.submit((image, k))
        return search_json(service.remember(Query("image", None, hits)), "image", k, hits, started)

    @app.post("/search/vector", summary="An embedding and a direction -> hits (clip-retrieval's k-NN service)")
    async def search_vector(query: VectorQuery) -> dict[str, Any]:
        started = time.perf_counter()
        if query.k > config.max_k:
            raise HTTPException(422, f"k: at most {config.max_k}")
        vector = np.asarray(query.vector, dtype=np.float32)
        if vector.shape != (store.dim,) or not np.isfinite(vector).all() or not np.any(vector):
            raise HTTPException(422, f"vector: {store.dim} finite numbers, not all zero, expected "
                                     f"(got {vector.size})")
        hits = await service.vector_batcher.submit((query.direction, vector, query.k))
        kind = "audio" if query.direction == "audio_to_image" else "image"
        # a sound hit's picture needs no query; an image hit's map needs the sound, which a vector does not carry
        query_id = service.remember(Query(kind, None, hits)) if kind == "image" else None
        return search_json(query_id, kind, query.k, hits, started)

    @app.get("/items/{item_id}", summary="An item's metadata")
    def item(item_id: str) -> dict[str, Any]:
        record = service.record(item_id)
        quoted = quote(record.id, safe="")
        return {"id": record.id, "label": record.label, "row": record.row,
                "image_url": f"/items/{quoted}/image", "audio_url": f"/items/{quoted}/audio"}

    @app.get("/items/{item_id}/image", summary="An item's stored image (or video)")
    def item_image(item_id: str) -> FileResponse:
        return _media(service.record(item_id).image_path)

    @app.get("/items/{item_id}/audio", summary="An item's stored sound (or video)")
    def item_audio(item_id: str) -> FileResponse:
        return _media(service.record(item_id).audio_path)

    @app.get("/maps/{query_id}/{item_id}.png", summary="A search hit's localization map over its image (sound "
             "query) or its spectrogram with the attention over time (image query)")
    def hit_map(query_id: str, item_id: str) -> Response:
        png = service.map_png(query_id, item_id)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    @app.get("/health", summary="Liveness (no token needed)")
    def health() -> dict[str, Any]:
        return {"status": "ok", "items": len(store), "model": store.meta.model_name, "dim": store.dim,
                "uptime_s": round(time.time() - started_at, 1), "version": __version__}

    @app.get("/metrics", summary="Prometheus metrics: requests, latencies, errors, batch sizes, memory")
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app


def _media(path: str) -> FileResponse:
    """A file the store records (never a path from the request)."""
    media = Path(path)
    if not media.is_file():
        raise HTTPException(404, "the stored file for this item is missing on the server")
    return FileResponse(media, media_type=mimetypes.guess_type(media.name)[0] or "application/octet-stream")


def open_service(index_dir: Path, host: str = "127.0.0.1", token: str | None = None,
                 checkpoint: Path | None = None, device: str | None = None,
                 config: ServeConfig | None = None) -> FastAPI:
    """Check the bind is safe, then load the store's model and indexes once and build the app."""
    check_bind(host, token)
    config = replace(config or ServeConfig(), token=token)
    return create_app(Engine.open(index_dir, checkpoint=checkpoint, device=device, gpu=None), config)


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (uvicorn, one process: the model and indexes are in memory once)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
