"""`jsar query --server URL`: ask a running `jsar serve` instead of loading the model and indexes (stdlib only,
so the client needs nothing beyond jsar itself)."""
from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urljoin
from urllib.request import Request, urlopen

from jsa_retrieval.errors import JsarError
from jsa_retrieval.files import hit_picture_name


class ServiceError(JsarError, OSError):
    """The service is unreachable or refused the request; the message says which, in one line."""


def multipart_body(fields: dict[str, str], file_field: str, file_name: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with text `fields` and one file; returns (body, Content-Type)."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{file_name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def parse_server_timing(header: str | None) -> dict[str, float]:
    """{name: milliseconds} of a Server-Timing header ('decode;dur=2.41, encode;dur=7.90'); entries without a
    duration, or with one that is not a number, are left out."""
    stages: dict[str, float] = {}
    for entry in (header or "").split(","):
        name, *params = [part.strip() for part in entry.split(";")]
        for param in params:
            key, _, value = param.partition("=")
            if name and key.strip() == "dur":
                try:
                    stages[name] = float(value)
                except ValueError:
                    pass
    return stages


def request_json(server: str, route: str, body: bytes | None = None, content_type: str | None = None,
                 token: str | None = None, timeout: float = 120.0) -> Any:
    """JSON answer of `route` on `server` (POST when there is a body); errors become one-line ServiceErrors."""
    return json.loads(request_bytes(server, route, body, content_type, token, timeout))


def request_bytes(server: str, route: str, body: bytes | None = None, content_type: str | None = None,
                  token: str | None = None, timeout: float = 120.0) -> bytes:
    url = urljoin(server.rstrip("/") + "/", route.lstrip("/"))
    headers: dict[str, str | bytes] = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    if token:
        headers["Authorization"] = b"Bearer " + token.encode()  # raw UTF-8: a non-ASCII token as the query has it
    try:
        with urlopen(Request(url, data=body, headers=headers), timeout=timeout) as response:
            return response.read()
    except HTTPError as error:
        try:
            message = json.loads(error.read()).get("error", error.reason)
        except (ValueError, AttributeError):
            message = error.reason
        raise ServiceError(f"{server} answered {error.code}: {message}") from None
    except (URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServiceError(f"no jsar service at {server} ({reason}); start one with `jsar serve --index DIR`") from None


def search_file(server: str, path: Path, kind: str, k: int = 10, token: str | None = None) -> dict[str, Any]:
    """Search a running service with a sound/video (`kind` 'audio') or image ('image') file; its JSON answer."""
    if kind not in ("audio", "image"):
        raise ValueError(f"kind must be 'audio' or 'image', got {kind!r}")
    body, content_type = multipart_body({"k": str(k)}, "file", Path(path).name, Path(path).read_bytes())
    answer = request_json(server, f"search/{kind}", body, content_type, token)
    base = server.rstrip("/") + "/"
    for hit in answer["hits"]:  # the service answers with its own paths; a client wants whole URLs
        for key in ("image_url", "audio_url", "map_url"):
            if hit.get(key):
                hit[key] = urljoin(base, hit[key].lstrip("/"))
    return answer


def save_pictures(server: str, answer: dict[str, Any], out_dir: Path, token: str | None = None) -> Path:
    """Each hit's map picture from the service into OUT_DIR (hit_RR_ID.png, as `jsar query --out` names them)
    and the answer as results.json; returns the JSON path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for hit in answer["hits"]:
        if hit.get("map_url"):
            path = out_dir / hit_picture_name(hit["rank"], hit["id"])
            path.write_bytes(request_bytes(server, hit["map_url"], token=token))
            hit["picture"] = str(path)
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(answer, indent=2) + "\n")
    return json_path
