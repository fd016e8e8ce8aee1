"""ASGI middleware around every request: the upload size limit, and the metrics of what was answered.

A body over the limit is refused from its Content-Length before it is read, or when the running count passes
the limit for a chunked body.
"""
from __future__ import annotations

import time

from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

from .uploads import UploadError


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


def json_error(status: int, message: str) -> JSONResponse:
    """The service's one error shape: `{"error": "one line"}`."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


class BodyLimit:
    """The upload size limit (413) and the request metrics, around the whole app."""

    def __init__(self, app, max_bytes: int, metrics: ServiceMetrics):
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = {"status": 500, "too_large": False, "replaced": False}

        async def send_observed(message):
            if message["type"] == "http.response.start":
                if state["too_large"]:  # the app failed on the body we cut off: answer 413 instead
                    state["replaced"] = True
                    return await _send_response(send, json_error(413, self._too_large()))
                state["status"] = message["status"]
            elif state["replaced"]:
                return None
            await send(message)

        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_bytes:
                state["status"] = 413
                return await json_error(413, self._too_large())(scope, receive, send)
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
