"""`jsar serve`: the search engine as a long-lived HTTP service (FastAPI), as clip-retrieval's back end serves its
k-NN endpoint, plus what no retrieval service offers: each hit's localization map.

    app = create_app(Engine.open("index_dir"), ServeConfig(token=None))
    uvicorn.run(app, host="127.0.0.1", port=8000)

The model and both FAISS indexes are loaded once. Uploads are decoded in the request thread pool; encoding and
FAISS search go through micro-batchers (one encoder pass and one search per batch of concurrent requests), the
same `Engine` batch methods `jsar query` uses (`search.SearchService`). A search is remembered for a bounded
time under a query id, and its hits' maps are drawn on demand, all hits of a query in one encoder pass, and
cached within a byte budget. The routes live in `routes`, the token check in `auth`, the size limit in `limits`.

Safety: URLs carry store ids, never paths, so only files recorded in the store are ever served; uploads are
size-limited and recognised by content; every bad request is a 4xx with a one-line JSON error.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from indexing.engine import Engine
from jsa_retrieval import __version__
from jsa_retrieval.errors import JsarError

from .config import ServeConfig, ServeError, check_bind, is_loopback
from .limits import BodyLimit, ServiceMetrics, json_error
from .routes import open_router, router
from .search import SearchService
from .uploads import UploadError

__all__ = ["ServeConfig", "ServeError", "check_bind", "is_loopback", "create_app", "open_service", "run"]

logger = logging.getLogger(__name__)


def create_app(engine: Engine, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app over an opened Engine (routes, OpenAPI page at /docs, the web page at /)."""
    config = config or ServeConfig()
    metrics = ServiceMetrics()
    service = SearchService(engine, config, lambda batcher, size: metrics.batch_size.labels(batcher).observe(size))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="jsar", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,  # served by `routes`, behind the token
                  description="Search sounds by picture and pictures by sound; see where each sound comes from.")
    app.state.service = service
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes, metrics=metrics)
    _add_error_handlers(app)
    app.include_router(open_router)
    app.include_router(router)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as a 4xx/5xx with a one-line JSON `error`."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return json_error(error.status_code, error.detail)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return json_error(422, f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", ""))

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, error: UploadError) -> JSONResponse:
        return json_error(error.status, str(error))

    @app.exception_handler(JsarError)
    async def domain_error(request: Request, error: JsarError) -> JSONResponse:
        return json_error(422, str(error))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("error answering %s %s", request.method, request.url.path)
        return json_error(500, f"internal error ({type(error).__name__}); see the service log")


def open_service(index_dir: Path, host: str = "127.0.0.1", token: str | None = None,
                 checkpoint: Path | None = None, device: str | None = None,
                 config: ServeConfig | None = None) -> FastAPI:
    """Check the bind is safe, then load the store's model and indexes once and build the app.

    `token` overrides `config.token`; with neither, the service has no token (loopback binds only)."""
    config = config or ServeConfig()
    if token is not None:
        config = replace(config, token=token)
    check_bind(host, config.token)
    return create_app(Engine.open(index_dir, checkpoint=checkpoint, device=device, gpu=None), config)


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (uvicorn, one process: the model and indexes are in memory once)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
