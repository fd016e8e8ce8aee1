"""Connections bounded in number and in time, so clients that connect and never speak (or speak one byte a
minute) cannot use up the process's file descriptors and take `/health` and search down with them.

- A budget of connections is taken at start from the descriptor limit (`ulimit -n`) less what the process has
  open and a reserve for its own files; a limit too low to serve is refused in one line.
- At the budget, a new connection closes the oldest connection that has no request in progress (one that never
  spoke, or sits between requests), so a flood of idle sockets cannot keep a real client out; with every
  connection busy, the new one gets a 503. The first time this happens it is logged, once.
- A request head must arrive within `header_timeout_s` of the connection (or of the previous response), and a
  body may pause at most `body_timeout_s` between chunks; connections that miss are closed.
- asyncio accepts up to `backlog` sockets per turn of the event loop, and a socket evicted to make room is only
  closed two or three turns after the one that displaced it was accepted; so `ACCEPT_TURNS_IN_FLIGHT` turns of
  accepts are held back from the budget. Measured (1,100 idle sockets under `ulimit -n 1024`, three busy
  loops on 2 cores): 2.1 turns above the budget with a 128 batch (978 descriptors of 1,024: CI once ran out),
  2 turns with the 64 batch `app.server_config` uses (707 of 1,024).

The protocol is uvicorn's h11 protocol with these checks added (`uvicorn.Config(http=...)`).
"""
from __future__ import annotations

import functools
import logging
import os
import resource
from dataclasses import dataclass, field
from typing import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import ServeError

logger = logging.getLogger(__name__)

SERVICE_UNAVAILABLE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
                       b"content-length: 54\r\n\r\n" + b'{"error": "too many connections in progress; retry"}  ')


@dataclass
class ConnectionLimits:
    """How many connections, and how long each may stay silent. `on_close(reason)` counts what was closed."""

    max_connections: int
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: int = 5
    backlog: int = 128
    on_close: Callable[[str], None] | None = None
    _logged: set = field(default_factory=set, repr=False)

    def closed(self, reason: str, message: str) -> None:
        if self.on_close is not None:
            self.on_close(reason)
        if reason not in self._logged:  # once per reason, not once per socket
            self._logged.add(reason)
            logger.warning("%s (logged once; counted in /metrics as jsar_connections_closed_total)", message)


def open_descriptors() -> int:
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return 0


ACCEPT_TURNS_IN_FLIGHT = 4  # turns of accepted sockets not yet matched by closed ones (measured: 2-2.1)


def connection_budget(wanted: int | None, reserve: int, backlog: int) -> int:
    """Connections this process can hold under its descriptor limit, leaving `reserve` for its own files (upload
    spools, temporary files, the store) and `ACCEPT_TURNS_IN_FLIGHT` turns of `backlog` accepted sockets whose
    evicted partners are not closed yet; at most `wanted`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    free = soft - open_descriptors() - reserve - ACCEPT_TURNS_IN_FLIGHT * backlog
    if free < 16:
        raise ServeError(f"the descriptor limit (ulimit -n {soft}) leaves {max(free, 0)} connections after the "
                         f"service's own files: raise it (ulimit -n 4096)")
    if wanted is not None and wanted > free:
        logger.warning("at most %d connections under the descriptor limit (ulimit -n %d), not %d", free, soft, wanted)
    return free if wanted is None else min(wanted, free)


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with the connection cap (closing the oldest idle connection) and read timeouts."""

    def __init__(self, *args, limits: ConnectionLimits, **kwargs):
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.opened_at = 0.0
        self._timer = None
        self._timer_kind: str | None = None

    # ------------------------------------------------------------------ asyncio protocol
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.opened_at = self.loop.time()
        self._watch()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ limits
    def idle(self) -> bool:
        """No request in progress: nothing (or part of a head) received since connecting or the last response."""
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def _make_room(self) -> None:
        idle = [connection for connection in self.connections if connection is not self
                and isinstance(connection, BoundedH11Protocol) and connection.idle()
                and not connection.transport.is_closing()]
        if idle:
            min(idle, key=lambda connection: connection.opened_at).transport.close()
            self.limits.closed("evicted", f"{self.limits.max_connections} connections open: closing the oldest "
                                          "idle connection for each new one")
        else:
            self.transport.write(SERVICE_UNAVAILABLE)
            self.transport.close()
            self.limits.closed("refused", f"{self.limits.max_connections} connections open, all busy: refusing "
                                          "new connections with 503")

    def _watch(self) -> None:
        """Arm the timer the connection's state calls for: a head deadline (not moved by trickling bytes) while
        idle, a silence limit (moved by each chunk) while a body arrives, none while the app works."""
        if self.transport is None or self.transport.is_closing():
            return self._cancel()
        if self.idle():
            if self._timer_kind != "head":
                self._arm("head", self.limits.header_timeout_s)
        elif self.conn.their_state is h11.SEND_BODY:
            self._arm("body", self.limits.body_timeout_s)
        else:
            self._cancel()

    def _arm(self, kind: str, seconds: float) -> None:
        self._cancel()
        self._timer_kind = kind
        self._timer = self.loop.call_later(seconds, self._expire, kind)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_kind = None, None

    def _expire(self, kind: str) -> None:
        self._timer, self._timer_kind = None, None
        if kind == "body" and self.flow is not None and self.flow.read_paused:  # we stopped reading, not they
            return self._arm("body", self.limits.body_timeout_s)
        if self.transport.is_closing():
            return
        self.transport.close()
        what = "no request head" if kind == "head" else "a request body stalled"
        seconds = self.limits.header_timeout_s if kind == "head" else self.limits.body_timeout_s
        self.limits.closed(f"{kind}_timeout", f"closing connections with {what} within {seconds:g} s")


def protocol_factory(limits: ConnectionLimits) -> Callable[..., BoundedH11Protocol]:
    """What `uvicorn.Config(http=...)` takes: builds one bounded protocol per connection."""
    return functools.partial(BoundedH11Protocol, limits=limits)
