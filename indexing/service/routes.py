"""The HTTP routes: searches, stored items and their media, hit maps, liveness, metrics, the page and the API page.

Every route on `router` needs the token in a header or cookie (the `require_token` dependency); `page_router`
holds the page, which also takes it from `?token=` once; `open_router` holds what anyone may ask (/health, the
favicon). The routes reach the search service through `request.app.state.service`.
"""
from __future__ import annotations

import asyncio
import importlib.util
import mimetypes
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException

from indexing.engine import Hit, sound_tags
from jsa_retrieval import __version__

from .auth import cookie_header, page_token, require_token
from .search import Query, SearchService, search_stages
from .uploads import IMAGE_FORMATS, SOUND_FORMATS

STATIC = Path(__file__).resolve().parent / "static"
SWAGGER_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")

router = APIRouter(dependencies=[Depends(require_token)])
page_router = APIRouter()
open_router = APIRouter()


def search_service(request: Request) -> SearchService:
    return request.app.state.service


class VectorQuery(BaseModel):
    vector: list[float] = Field(description="A query embedding of the store's dimension (L2-normalised here).")
    direction: Literal["audio_to_image", "image_to_audio"] = Field(
        description="audio_to_image: an audio vector searched among images; image_to_audio: the reverse.")
    k: int = Field(10, ge=1)


def hit_json(hit: Hit, query_id: str | None) -> dict[str, Any]:
    """A hit as the API shows it: ids and URLs, never file paths; a map URL when its search was remembered."""
    item = quote(hit.id, safe="")
    return {"rank": hit.rank, "id": hit.id, "label": hit.label, "score": hit.score,
            "image_url": f"/items/{item}/image", "audio_url": f"/items/{item}/audio",
            "map_url": f"/maps/{query_id}/{item}.png" if query_id else None}


def search_json(query_id: str | None, kind: str, k: int, hits: list[Hit], started: float,
                query_picture: bool = False, tags: list[dict] | None = None) -> dict[str, Any]:
    """The search's answer; `query_url` is the picture of a sound query (its spectrogram and attention strip);
    `tags` what a sound query sounds like (the audio trunk's AudioSet classes; null without a class head)."""
    return {"query_id": query_id, "kind": kind, "k": k, "tags": tags,
            "query_url": f"/queries/{query_id}.png" if query_picture and query_id else None,
            "hits": [hit_json(hit, query_id) for hit in hits],
            "took_ms": round((time.perf_counter() - started) * 1000, 2)}


def server_timing(stages: dict[str, float]) -> str:
    """A W3C Server-Timing header value, 'name;dur=milliseconds' per stage: browsers' developer tools draw it
    beside the request, and `jsar bench serve` reads it to say where a warm search's time goes."""
    return ", ".join(f"{name};dur={milliseconds:.2f}" for name, milliseconds in stages.items())


def timed_answer(answer: dict[str, Any], stages: dict[str, float]) -> JSONResponse:
    """The search's JSON with its stages, and the whole route (`total`, = took_ms), in a Server-Timing header."""
    return JSONResponse(answer, headers={"Server-Timing": server_timing({**stages, "total": answer["took_ms"]})})


def _check_k(service: SearchService, k: int) -> None:
    if k > service.config.max_k:
        raise HTTPException(422, f"k: at most {service.config.max_k}")


async def _read_upload(upload: UploadFile) -> bytes:
    data = await upload.read()
    await upload.close()
    return data


K_FORM = Form(10, ge=1, description="Number of hits.")


async def one_file(request: Request) -> None:
    """422 for a form with several `file` parts: which one was meant cannot be told."""
    files = (await request.form()).getlist("file")  # the form FastAPI has already parsed (cached on the request)
    if len(files) > 1:
        raise HTTPException(422, f"file: one file per search, got {len(files)}")


# ------------------------------------------------------------------------------------------------ searches
@router.post("/search/audio", summary="A sound or video file -> the images whose sound source matches",
             dependencies=[Depends(one_file)])
async def search_audio(file: UploadFile = File(...), k: int = K_FORM,
                       service: SearchService = Depends(search_service)) -> JSONResponse:
    started = time.perf_counter()
    _check_k(service, k)
    data = await _read_upload(file)
    spectrogram = await service.decode(data, SOUND_FORMATS, "sound", service.engine.audio_input)
    decoded = time.perf_counter()
    del data
    hits, side, batch, picture_input = await service.encoder_batcher.submit(("audio", spectrogram, k))
    del spectrogram
    stages = search_stages(started, decoded, time.perf_counter(), batch)
    query_id = service.remember(Query("audio", side, hits), picture_input)
    tags = sound_tags(service.engine.model, side)  # numpy on a (1, classes) CPU row: no torch compute here
    return timed_answer(search_json(query_id, "audio", k, hits, started, query_picture=True, tags=tags), stages)


@router.post("/search/image", summary="An image file -> the sounds that belong to it",
             dependencies=[Depends(one_file)])
async def search_image(file: UploadFile = File(...), k: int = K_FORM,
                       service: SearchService = Depends(search_service)) -> JSONResponse:
    started = time.perf_counter()
    _check_k(service, k)
    data = await _read_upload(file)
    image = await service.decode(data, IMAGE_FORMATS, "image", service.engine.image_input)
    decoded = time.perf_counter()
    del data
    hits, batch = await service.encoder_batcher.submit(("image", image, k))
    stages = search_stages(started, decoded, time.perf_counter(), batch)
    return timed_answer(search_json(service.remember(Query("image", None, hits)), "image", k, hits, started), stages)


@router.post("/search/vector", summary="An embedding and a direction -> hits (clip-retrieval's k-NN service)",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": VectorQuery.model_json_schema()}}}})
async def search_vector(request: Request, service: SearchService = Depends(search_service)) -> JSONResponse:
    """The body is a few KB at most (a per-route limit, 413 beyond), parsed in a worker thread, not on the loop
    that answers every other client."""
    query = await run_in_threadpool(_vector_query, await request.body())
    started = time.perf_counter()
    _check_k(service, query.k)
    dim = service.engine.indexes.store.dim
    vector = np.asarray(query.vector, dtype=np.float32)
    if vector.shape != (dim,) or not np.isfinite(vector).all() or not np.any(vector):
        raise HTTPException(422, f"vector: {dim} finite numbers, not all zero, expected (got {vector.size})")
    checked = time.perf_counter()
    hits, batch = await service.vector_batcher.submit((query.direction, vector, query.k))
    stages = search_stages(started, checked, time.perf_counter(), batch)
    del stages["decode"], stages["encode"]  # a vector is neither decoded nor encoded
    kind = "audio" if query.direction == "audio_to_image" else "image"
    # a sound hit's picture needs no query; an image hit's map needs the sound, which a vector does not carry
    query_id = service.remember(Query(kind, None, hits)) if kind == "image" else None
    return timed_answer(search_json(query_id, kind, query.k, hits, started), stages)


# ------------------------------------------------------------------------------------------------ items, maps
@router.get("/items/{item_id}", summary="An item's metadata")
def item(item_id: str, service: SearchService = Depends(search_service)) -> dict[str, Any]:
    record = service.record(item_id)
    quoted = quote(record.id, safe="")
    return {"id": record.id, "label": record.label, "row": record.row,
            "image_url": f"/items/{quoted}/image", "audio_url": f"/items/{quoted}/audio"}


@router.get("/items/{item_id}/image", summary="An item's stored image (or video)")
def item_image(item_id: str, service: SearchService = Depends(search_service)) -> FileResponse:
    return _media(service.record(item_id).image_path)


@router.get("/items/{item_id}/audio", summary="An item's stored sound (or video)")
def item_audio(item_id: str, service: SearchService = Depends(search_service)) -> FileResponse:
    return _media(service.record(item_id).audio_path)


def _media(path: str) -> FileResponse:
    """A file the store records (never a path from the request)."""
    media = Path(path)
    if not media.is_file():
        raise HTTPException(404, "the stored file for this item is missing on the server")
    return FileResponse(media, media_type=mimetypes.guess_type(media.name)[0] or "application/octet-stream")


def _vector_query(body: bytes) -> VectorQuery:
    try:
        return VectorQuery.model_validate_json(body)
    except ValidationError as error:
        raise RequestValidationError(error.errors()) from None


@router.get("/maps/{query_id}/{item_id}.png", summary="A search hit's localization map over its image (sound "
            "query) or its spectrogram with the attention over time (image query)")
async def hit_map(query_id: str, item_id: str, service: SearchService = Depends(search_service)) -> Response:
    """Drawn on the service's own map threads, so a page's worth of tiles leaves the request pool free."""
    png = await asyncio.get_running_loop().run_in_executor(service.map_pool, service.map_png, query_id, item_id)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})


@router.get("/queries/{query_id}.png", summary="A sound search's query: its spectrogram with the attention of its "
            "target slot over time (kept for the latest sound searches)")
async def query_picture(query_id: str, service: SearchService = Depends(search_service)) -> Response:
    png = await asyncio.get_running_loop().run_in_executor(service.map_pool, service.query_png, query_id)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})


# ------------------------------------------------------------------------------------------------ the service
@open_router.head("/health", include_in_schema=False)
@open_router.get("/health", summary="Liveness (no token needed)")
async def health(service: SearchService = Depends(search_service)) -> dict[str, Any]:
    """Answered on the event loop from values known at start: no thread pool, no store read, whatever else runs."""
    return {"status": "ok", **service.facts, "uptime_s": round(time.time() - service.started_at, 1),
            "version": __version__}


@open_router.get("/favicon.svg", include_in_schema=False)
@open_router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=86400"})


@router.get("/metrics", summary="Prometheus metrics: requests, latencies, errors, batch sizes, memory")
def prometheus_metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@page_router.get("/", include_in_schema=False)
def page(request: Request, set_cookie: bool = Depends(page_token)) -> FileResponse:
    """The page; opened with ?token=, it leaves the cookie (its script then drops the token from the address)."""
    response = FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})
    if set_cookie:
        response.headers.append("set-cookie", cookie_header(request.app.state.service.config.token))
    return response


@router.get("/openapi.json", include_in_schema=False)
def openapi_schema(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


def swagger_folder() -> Path | None:
    """Swagger UI's files as the fastapi-offline package ships them, or None when it is not installed."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "static"
    return folder if all((folder / name).is_file() for name in SWAGGER_FILES) else None


@router.get("/docs", include_in_schema=False)
def api_page(request: Request) -> HTMLResponse:
    """Swagger UI from files served here (no CDN: it works offline); off when those files are not installed."""
    if swagger_folder() is None:
        raise HTTPException(404, "the API page needs Swagger UI's files (pip install fastapi-offline); the schema "
                                 "is at /openapi.json")
    return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{request.app.title} - API",
                               swagger_js_url="/docs/swagger-ui-bundle.js", swagger_css_url="/docs/swagger-ui.css",
                               swagger_favicon_url="/favicon.svg")


@router.get("/docs/{name}", include_in_schema=False)
def swagger_file(name: str) -> FileResponse:
    folder = swagger_folder()
    if folder is None or name not in SWAGGER_FILES:
        raise HTTPException(404, f"no file {name!r}")
    return FileResponse(folder / name, headers={"Cache-Control": "public, max-age=86400"})
