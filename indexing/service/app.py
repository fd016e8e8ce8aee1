"""`jsar serve`: the search engine as a long-lived HTTP service (FastAPI), as clip-retrieval's back end serves its
k-NN endpoint, plus what no retrieval service offers: each hit's localization map.

    app = create_app(Engine.open("index_dir"), ServeConfig(token=None))
    uvicorn.run(app, host="127.0.0.1", port=8000)

The model and both FAISS indexes are loaded once. Uploads are decoded in the request thread pool; encoding and
FAISS search go through micro-batchers (one encoder pass and one search per batch of concurrent requests), the
same `Engine` batch methods `jsar query` uses (`search.SearchService`). A search is remembered for a bounded
time under a query id, and its hits' maps are drawn on demand, all hits of a query in one encoder pass, and
cached within a byte budget. The routes live in `routes`, the token check in `auth`, the body limits in
`limits`, the connection limits in `connections`.

Safety: URLs carry store ids, never paths, so only files recorded in the store are ever served; uploads are
size-limited and recognised by content; every bad request is a 4xx with a one-line JSON error; connections are
bounded in number and time (`connections`), and `/health` answers whatever else is in progress.
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from indexing.engine import Engine
from jsa_retrieval import __version__
from jsa_retrieval.errors import JsarError

from .config import ServeConfig, ServeError, check_bind, is_loopback
from .limits import RequestLimits, ServiceMetrics, json_error
from .routes import open_router, page_router, router
from .search import SearchService
from .uploads import UploadError, remove_stale_uploads

__all__ = ["ServeConfig", "ServeError", "check_bind", "is_loopback", "create_app", "open_service", "run"]

logger = logging.getLogger(__name__)


def create_app(engine: Engine, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app over an opened Engine (routes, OpenAPI page at /docs, the web page at /)."""
    config = config or ServeConfig()
    metrics = ServiceMetrics()
    service = SearchService(engine, config, lambda batcher, size: metrics.batch_size.labels(batcher).observe(size))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        remove_stale_uploads()  # left by a service killed while decoding
        yield
        service.close()

    app = FastAPI(title="jsar", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,  # served by `routes`, behind the token
                  description="Search sounds by picture and pictures by sound; see where each sound comes from.")
    app.state.service = service
    app.state.metrics = metrics
    app.add_middleware(RequestLimits, max_bytes=config.max_upload_bytes, metrics=metrics,
                       route_limits={"/search/vector": config.vector_body_bytes(engine.indexes.store.dim)},
                       max_in_flight=config.max_in_flight)
    _add_error_handlers(app)
    app.include_router(open_router)
    app.include_router(page_router)
    app.include_router(router)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as a 4xx with a one-line JSON `error` (a 500 is answered and logged, once, by RequestLimits)."""

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


def open_service(index_dir: Path, host: str = "127.0.0.1", token: str | None = None,
                 checkpoint: Path | None = None, device: str | None = None,
                 config: ServeConfig | None = None) -> FastAPI:
    """Check the bind is safe, then load the store's model and indexes once and build the app.

    `token` overrides `config.token`; with neither, the service has no token (loopback binds only)."""
    config = config or ServeConfig()
    if token is not None:
        config = replace(config, token=token)
    check_bind(host, config.token)
    return create_app(_on_passing_thread(Engine.open, index_dir, checkpoint=checkpoint, device=device, gpu=None),
                      config)


def _on_passing_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """function(*args, **kwargs) on a thread that ends with it, so that the OpenMP team torch makes there (loading
    a model runs parallel regions) ends too, and the encoder thread's team is the only one (`SearchService`)."""
    with ThreadPoolExecutor(1, thread_name_prefix="jsar-load") as pool:
        return pool.submit(function, *args, **kwargs).result()


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until interrupted (uvicorn, one process: the model and indexes are in memory once), with the
    connections bounded by the descriptor budget and the config's timeouts (`connections`)."""
    import uvicorn

    uvicorn.Server(server_config(app, host, port)).run()


def server_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning"):
    """uvicorn's settings for `app`: the connection budget (checked against `ulimit -n` now), read timeouts,
    keep-alive, and the accept batch."""
    import uvicorn

    from .connections import ConnectionLimits, connection_budget, protocol_factory

    config: ServeConfig = app.state.service.config
    backlog = 64  # the listen queue and asyncio's accept batch; a smaller batch leaves more of the budget to serve
    reserve = 64 + 2 * config.max_in_flight  # the process's own files, and a spool + temporary file per request
    limits = ConnectionLimits(connection_budget(config.max_connections, reserve, backlog), config.header_timeout_s,
                              config.body_timeout_s, config.keep_alive_s, backlog,
                              on_close=app.state.metrics.connection_closed)
    logger.info("serving at most %d connections", limits.max_connections)
    # limit_concurrency: uvicorn's own 503 once connections or tasks pass it; the cap above keeps connections
    # at max_connections, so it stands behind that cap and the in-flight bound rather than replacing them
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                          http=protocol_factory(limits), limit_concurrency=limits.max_connections + 1,
                          timeout_keep_alive=config.keep_alive_s, backlog=backlog)
