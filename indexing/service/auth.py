"""The token, as a FastAPI dependency of every route but the open ones (/health).

A client sends it as `Authorization: Bearer T`; the page's own requests carry the `jsar_token` cookie that the
page's first load with `?token=T` leaves.
"""
from __future__ import annotations

import hmac
from urllib.parse import parse_qs

from fastapi import Request
from starlette.exceptions import HTTPException

TOKEN_COOKIE = "jsar_token"
MISSING = "missing or wrong token: send 'Authorization: Bearer TOKEN' or open the page with ?token=TOKEN"


def _service_token(request: Request) -> str | None:
    return request.app.state.service.config.token


def _header_or_cookie_token(request: Request) -> str | None:
    bearer = request.headers.get("authorization", "")
    if bearer.lower().startswith("bearer "):
        return bearer[7:].strip()
    return request.cookies.get(TOKEN_COOKIE)


def _query_token(request: Request) -> str | None:
    found = parse_qs(request.scope.get("query_string", b"").decode("latin-1")).get("token")
    return found[0] if found else None


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


async def require_token(request: Request) -> None:
    """401 unless the request carries the service's token (no check when the service has none)."""
    token = _service_token(request)
    if not token:
        return
    if _same(_header_or_cookie_token(request), token):
        return
    if _same(_query_token(request), token):
        request.state.token_from_query = True
        return
    raise HTTPException(401, MISSING)


def cookie_header(token: str) -> str:
    """The Set-Cookie value that lets a page opened with ?token= load its images and searches."""
    return f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
