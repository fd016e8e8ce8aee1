"""What one service may do: its limits, its token, and whether its bind address is safe without one."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from jsa_retrieval.errors import JsarError

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
    query_picture_cache_size: int = 64  # latest sound queries whose spectrogram is kept to draw the query itself
    cache_ttl_s: float = 900.0
    map_cache_bytes: int = 64 * 1024 * 1024
    decode_threads: int = 32  # threads that decode uploads, one torch thread each
    map_threads: int = 4  # threads that draw hit maps (their own pool: a page of tiles never blocks the rest)
    max_vector_body_bytes: int | None = None  # /search/vector's body limit; None: 48 bytes a number + 4 KB
    max_in_flight: int = 64  # requests in progress at once (not /health); more get 503
    max_connections: int | None = 1000  # open connections; always capped by the descriptor budget at start
    header_timeout_s: float = 10.0  # a request head must arrive within this of connecting / the last response
    body_timeout_s: float = 30.0  # longest pause while a request body arrives
    keep_alive_s: int = 5  # an idle kept-alive connection is closed after this

    def vector_body_bytes(self, dim: int) -> int:
        """/search/vector's body limit for vectors of `dim` numbers (JSON: up to ~25 characters a number)."""
        return self.max_vector_body_bytes or 48 * dim + 4096


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
