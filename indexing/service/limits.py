"""ASGI middleware around every request: the body size limits, the bound on requests in progress, the one
place an unexpected error is logged, and the metrics of what was answered.

A body over its route's limit (the upload limit; a few KB for /search/vector) is refused from its
Content-Length before it is read, or when the running count passes the limit for a chunked body.
"""
from __future__ import annotations

import logging
import time

from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

from starlette.requests import ClientDisconnect

from .uploads import UploadError

logger = logging.getLogger(__name__)
UNBOUNDED_PATHS = ("/health", "/favicon.ico", "/favicon.svg")  # answered whatever else is in progress


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
        self.connections_closed = Counter("jsar_connections_closed", "Connections closed by the service's limits",
                                          ["reason"], registry=self.registry)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, open fds

    def connection_closed(self, reason: str) -> None:
        self.connections_closed.labels(reason).inc()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status >= 400:
            self.errors.labels(route, str(status)).inc()


def json_error(status: int, message: str) -> JSONResponse:
    """The service's one error shape: `{"error": "one line"}`."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


class RequestLimits:
    """Body size limits (413), requests in progress (503), unexpected errors (500, logged once with their
    traceback) and the request metrics, around the whole app. `route_limits` maps a path to its own body limit."""

    def __init__(self, app, max_bytes: int, metrics: ServiceMetrics, route_limits: dict[str, int] | None = None,
                 max_in_flight: int = 64):
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics
        self.route_limits = route_limits or {}
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        limit = self.route_limits.get(scope["path"], self.max_bytes)
        state = {"status": 500, "too_large": False, "replaced": False, "started": False}
        counted = scope["path"] not in UNBOUNDED_PATHS

        async def send_observed(message):
            if message["type"] == "http.response.start":
                if state["too_large"]:  # the app failed on the body we cut off: answer 413 instead
                    state["replaced"] = True
                    return await _send_response(send, json_error(413, _too_large(limit)))
                state["status"], state["started"] = message["status"], True
            elif state["replaced"]:
                return None
            await send(message)

        async def answer(response: Response) -> None:
            state["status"] = response.status_code
            await response(scope, receive, send)

        if counted:
            self.in_flight += 1
        try:
            if counted and self.in_flight > self.max_in_flight:
                return await answer(json_error(503, f"{self.max_in_flight} requests in progress; retry shortly"))
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                return await answer(json_error(413, _too_large(limit)))
            received = 0

            async def receive_counted():
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > limit:
                    state["too_large"] = True
                    raise UploadError(_too_large(limit), 413)
                return message

            try:
                await self.app(scope, receive_counted, send_observed)
            except ClientDisconnect:
                state["status"] = 499  # the client went away (or was timed out): nobody to answer
            except Exception:
                logger.exception("error answering %s %s", scope["method"], scope["path"])
                if not state["started"]:
                    await _send_response(send, json_error(500, "internal error; see the service log"))
                    state["status"] = 500
            if state["replaced"]:
                state["status"] = 413
        finally:
            if counted:
                self.in_flight -= 1
            route = scope.get("route")
            self.metrics.observe(getattr(route, "path", "unmatched"), scope["method"], state["status"],
                                 time.perf_counter() - started)


def _too_large(limit: int) -> str:
    if limit < 1024 * 1024:
        return f"request body larger than the limit of {limit / 1024:g} KB"
    return f"upload larger than the limit of {limit / 1024 / 1024:g} MB"


async def _send_response(send, response: Response) -> None:
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})
