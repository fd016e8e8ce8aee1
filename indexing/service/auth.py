"""The token, as a FastAPI dependency of every route but the open ones (/health, the favicon).

A client sends it as `Authorization: Bearer T`. A browser opens the page once with `?token=T`: only the page
takes the token from its address (`page_token`), answers with an HttpOnly, SameSite=Strict cookie that carries
it from then on, and removes it from the address bar; every other route refuses a token in the query, so it
does not end up in logs, history or Referer headers. Tokens are compared as UTF-8 bytes, so a non-ASCII token
is the same in a header (raw UTF-8), in the query (percent-encoded) and in the cookie (percent-encoded).
"""
from __future__ import annotations

import hmac
from urllib.parse import quote, unquote_to_bytes

from fastapi import Request
from starlette.exceptions import HTTPException

TOKEN_COOKIE = "jsar_token"
MISSING = "missing or wrong token: send 'Authorization: Bearer TOKEN' or open the page with ?token=TOKEN"


def _service_token(request: Request) -> bytes | None:
    token = request.app.state.service.config.token
    return token.encode() if token else None


def _header_or_cookie_token(request: Request) -> bytes | None:
    bearer = request.headers.get("authorization", "").encode("latin-1")  # Starlette decodes raw bytes as latin-1
    if bearer[:7].lower() == b"bearer ":
        return bearer[7:].strip()
    cookie = request.cookies.get(TOKEN_COOKIE)
    return unquote_to_bytes(cookie) if cookie is not None else None


def _query_token(request: Request) -> bytes | None:
    for part in request.scope.get("query_string", b"").split(b"&"):
        name, _, value = part.partition(b"=")
        if unquote_to_bytes(name.replace(b"+", b" ")) == b"token":
            return unquote_to_bytes(value.replace(b"+", b" "))
    return None


def _same(given: bytes | None, token: bytes) -> bool:
    return given is not None and hmac.compare_digest(given, token)


async def require_token(request: Request) -> None:
    """401 unless the request's header or cookie carries the service's token (no check without a token)."""
    token = _service_token(request)
    if token and not _same(_header_or_cookie_token(request), token):
        raise HTTPException(401, MISSING)


async def page_token(request: Request) -> bool:
    """The page's check: the header, the cookie, or `?token=`. True when the cookie must be set (the token came
    in the query)."""
    token = _service_token(request)
    if not token or _same(_header_or_cookie_token(request), token):
        return False
    if _same(_query_token(request), token):
        return True
    raise HTTPException(401, MISSING)


def cookie_header(token: str) -> str:
    """The Set-Cookie value that carries the token for the page's own requests (percent-encoded: ASCII)."""
    return f"{TOKEN_COOKIE}={quote(token, safe='')}; HttpOnly; SameSite=Strict; Path=/"
