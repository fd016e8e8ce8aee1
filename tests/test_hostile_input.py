"""`jsar serve` under hostile clients and files: idle and slow sockets, oversized bodies, odd rates and huge
images, tokens in the wrong place, stale uploads, double parts, errors that must be logged once."""
from __future__ import annotations

import io
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.request import Request, urlopen

import numpy as np
import pytest
import soundfile

pytest.importorskip("fastapi", reason="the service needs the [serve] extra (fastapi, uvicorn, python-multipart)")
from fastapi.testclient import TestClient  # noqa: E402

from indexing.service import routes  # noqa: E402
from indexing.service.app import ServeConfig, create_app  # noqa: E402
from indexing.service.client import search_file  # noqa: E402
from indexing.service.uploads import remove_stale_uploads  # noqa: E402
from helpers import TOKEN, assert_one_line_error, live_server, png_header, upload  # noqa: E402


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine, ServeConfig())) as test_client:
        yield test_client


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wav_bytes(rate: int, seconds: float = 0.5) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.2 * np.sin(np.arange(int(rate * seconds)) / 5)).astype(np.float32), rate,
                    format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ files
def test_odd_and_refused_sample_rates_and_huge_images_get_answers_not_500s(client):
    assert upload(client, "/search/audio", wav_bytes(4001), k=2).status_code == 200  # resampled, small kernel
    error = assert_one_line_error(upload(client, "/search/audio", wav_bytes(5_000_001, 0.0001)), 422)
    assert "5,000,001 Hz is outside" in error
    error = assert_one_line_error(upload(client, "/search/image", png_header(13_000, 13_000)), 422)
    assert "13000 x 13000 pixels is larger than" in error


# ------------------------------------------------------------------------------------------------ bodies
def test_vector_search_has_its_own_small_body_limit(client, engine):
    vector = engine.indexes.store.read_rows("audio_vectors", [1])[0].tolist()
    padded = json.dumps({"vector": vector, "direction": "audio_to_image", "k": 2, "pad": "x" * 100_000})
    error = assert_one_line_error(client.post("/search/vector", content=padded,
                                              headers={"Content-Type": "application/json"}), 413)
    assert "KB" in error

    def chunks():  # no Content-Length: stopped by the running count
        yield b'{"vector": ['
        for _ in range(200):
            yield b"0.5, " * 200

    assert_one_line_error(client.post("/search/vector", content=chunks(),
                                      headers={"Content-Type": "application/json"}), 413)
    answer = client.post("/search/vector", json={"vector": vector, "direction": "audio_to_image", "k": 2})
    assert answer.status_code == 200 and len(answer.json()["hits"]) == 2
    assert "JSON" in assert_one_line_error(client.post("/search/vector", content=b"{not json",
                                                       headers={"Content-Type": "application/json"}), 422)


def test_two_file_parts_are_422_not_the_last_one_wins(client, tiny_index):
    wav = (tiny_index[1] / "audio" / "synth_000001.wav").read_bytes()
    response = client.post("/search/audio", files=[("file", ("a.wav", wav)), ("file", ("b.wav", wav))],
                           data={"k": "2"})
    assert "one file per search, got 2" in assert_one_line_error(response, 422)


# ------------------------------------------------------------------------------------------------ liveness
def test_health_answers_while_every_map_thread_and_the_request_pool_are_busy(engine):
    app = create_app(engine, ServeConfig())
    release = threading.Event()
    app.state.service.map_png = lambda query_id, item_id: release.wait(60) and b""  # a slow drawing
    with live_server(app) as url:
        def ask_map(index):
            try:
                urlopen(f"{url}/maps/q{index}/synth_000001.png", timeout=60).read()
            except OSError:
                pass

        askers = [threading.Thread(target=ask_map, args=(i,), daemon=True) for i in range(48)]  # > 40 pool threads
        for asker in askers:
            asker.start()
        time.sleep(1.0)
        try:
            with urlopen(f"{url}/health", timeout=10) as response:  # generous bound: it must not wait for maps
                assert response.status == 200 and json.loads(response.read())["status"] == "ok"
            head = urlopen(Request(f"{url}/health", method="HEAD"), timeout=10)
            assert head.status == 200 and head.read() == b""
        finally:
            release.set()


def test_head_health_and_the_favicon_need_no_token(engine):
    with TestClient(create_app(engine, ServeConfig(token=TOKEN))) as guarded:
        assert guarded.head("/health").status_code == 200
        icon = guarded.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        assert b"<svg" in icon.content


def test_requests_past_the_in_flight_bound_get_503_and_health_still_answers(engine):
    with TestClient(create_app(engine, ServeConfig(max_in_flight=0))) as busy:
        assert "requests in progress" in assert_one_line_error(busy.get("/items/synth_000001"), 503)
        assert busy.get("/health").status_code == 200


# ------------------------------------------------------------------------------------------------ connections
def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except socket.timeout:
        return received + b"<still open>"
    except ConnectionResetError:
        pass
    return received


def test_silent_and_trickling_connections_are_closed_after_the_read_timeout(engine):
    with live_server(create_app(engine, ServeConfig(header_timeout_s=0.5, body_timeout_s=0.5))) as url:
        port = int(url.rsplit(":", 1)[1])
        silent = socket.create_connection(("127.0.0.1", port))
        trickle = socket.create_connection(("127.0.0.1", port))
        trickle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        for _ in range(4):  # a byte now and then never moves the head's deadline
            time.sleep(0.25)
            try:
                trickle.sendall(b"X")
            except OSError:
                break
        assert read_until_closed(silent, 10) == b""
        assert b"<still open>" not in read_until_closed(trickle, 10)
        body = socket.create_connection(("127.0.0.1", port))
        body.sendall(b"POST /search/vector HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"vec")
        assert b"<still open>" not in read_until_closed(body, 10)
        assert urlopen(f"{url}/health", timeout=10).status == 200
        metrics = urlopen(f"{url}/metrics", timeout=10).read().decode()
        assert 'jsar_connections_closed_total{reason="head_timeout"} 2.0' in metrics
        assert 'jsar_connections_closed_total{reason="body_timeout"} 1.0' in metrics


def test_past_the_connection_cap_the_oldest_idle_connection_is_closed(engine, caplog):
    with live_server(create_app(engine, ServeConfig(max_connections=20))) as url:
        port = int(url.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        time.sleep(0.5)
        assert urlopen(f"{url}/health", timeout=10).status == 200
        assert read_until_closed(idle[0], 10) == b""  # the oldest: closed to make room
        assert b"<still open>" in read_until_closed(idle[-1], 0.2)  # the newest: still open
        for sock in idle:
            sock.close()
    assert sum("oldest idle connection" in record.getMessage() for record in caplog.records) == 1


def _scaled_socket_counts() -> tuple[int, int]:
    """(idle sockets, the service's descriptor limit): 1,100 under 1,024, or both scaled down alike when this
    process may not open that many."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if room >= 1300 and soft < 1300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(room, 4096), hard))
    elif room < 1300:
        scale = (room - 200) / 1100
        return int(1100 * scale), max(256, int(1024 * scale))
    return 1100, 1024


def test_1100_idle_sockets_under_ulimit_1024_leave_health_and_search_working(tiny_index, tmp_path):
    sockets_wanted, limit = _scaled_socket_counts()
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        service = subprocess.Popen(
            [sys.executable, "-c", "from jsa_retrieval.cli import main; main()", "serve", "--index",
             str(tiny_index[0]), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
    idle: list[socket.socket] = []
    try:
        deadline = time.time() + 120
        while True:
            assert service.poll() is None, log_path.read_text()[-2000:]
            try:
                urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "the service did not start"
                time.sleep(0.2)
        for _ in range(sockets_wanted):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        started = time.perf_counter()
        with urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert response.status == 200
        assert time.perf_counter() - started < 5.0  # goal 1 s; a generous bound on a shared machine
        answer = search_file(f"http://127.0.0.1:{port}", tiny_index[1] / "audio" / "synth_000002.wav", "audio", k=3)
        assert len(answer["hits"]) == 3
    finally:
        for sock in idle:
            sock.close()
        service.terminate()
        service.wait(timeout=30)
    log = log_path.read_text()
    assert "Too many open files" not in log and "out of system resource" not in log
    assert log.count("oldest idle connection") == 1  # logged once, not once per socket


# ------------------------------------------------------------------------------------------------ uploads
def test_upload_folders_of_stopped_services_are_removed_at_start(engine, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True)
    dead = tmp_path / f"jsar-upload-{finished.stdout.strip()}-abc123"
    alive = tmp_path / f"jsar-upload-{os.getpid()}-def456"
    old_style = tmp_path / "jsar-upload-k2j4h5g6"
    unrelated = tmp_path / "someone-elses-folder"
    for folder in (dead, alive, old_style, unrelated):
        folder.mkdir()
        (folder / "upload.wav").write_bytes(b"private sound")
    os.utime(old_style, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    with TestClient(create_app(engine, ServeConfig())) as started:
        assert started.get("/health").status_code == 200
    assert not dead.exists() and not old_style.exists()
    assert alive.exists() and unrelated.exists()
    assert remove_stale_uploads(tmp_path) == []


# ------------------------------------------------------------------------------------------------ the token
def test_the_token_in_the_query_opens_only_the_page_which_leaves_a_strict_cookie(engine):
    with TestClient(create_app(engine, ServeConfig(token=TOKEN))) as guarded:
        assert_one_line_error(guarded.get(f"/items/synth_000001?token={TOKEN}"), 401)
        assert_one_line_error(guarded.get(f"/metrics?token={TOKEN}"), 401)
        page = guarded.get(f"/?token={TOKEN}")
        assert page.status_code == 200 and page.headers["referrer-policy"] == "no-referrer"
        cookie = page.headers["set-cookie"]
        assert f"jsar_token={TOKEN}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert guarded.get("/items/synth_000001").status_code == 200  # the cookie carries it now
        assert "history.replaceState" in page.text  # the page drops ?token= from the address bar


@pytest.mark.parametrize("token", ["clé-sécrète-ü", "トークン", "plain-ascii"])
def test_a_non_ascii_token_is_the_same_in_header_query_and_cookie(engine, token):
    from urllib.parse import quote

    with TestClient(create_app(engine, ServeConfig(token=token))) as guarded:
        header = {"Authorization": b"Bearer " + token.encode()}
        assert guarded.get("/items/synth_000001", headers=header).status_code == 200
        assert_one_line_error(guarded.get("/items/synth_000001", headers={"Authorization": b"Bearer x"}), 401)
        page = guarded.get(f"/?token={quote(token)}")
        assert page.status_code == 200
        assert guarded.get("/items/synth_000001").status_code == 200  # through the cookie
        guarded.cookies.clear()
        assert_one_line_error(guarded.get("/"), 401)


def test_query_server_client_sends_a_non_ascii_token(engine, tiny_index):
    token = "clé-ü"
    with live_server(create_app(engine, ServeConfig(token=token))) as url:
        answer = search_file(url, tiny_index[1] / "audio" / "synth_000003.wav", "audio", k=2, token=token)
    assert len(answer["hits"]) == 2


# ------------------------------------------------------------------------------------------------ errors, docs
def test_a_500_is_one_line_and_its_traceback_is_logged_once(engine):
    app = create_app(engine, ServeConfig())

    def broken(item_id):
        raise RuntimeError("the store went away")

    app.state.service.record = broken
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Collect()
    loggers = [logging.getLogger(name) for name in ("indexing.service", "uvicorn.error", "uvicorn", "")]
    for each in loggers:
        each.addHandler(handler)
    try:
        with live_server(app) as url:
            try:
                urlopen(f"{url}/items/synth_000001", timeout=10)
                raise AssertionError("expected a 500")
            except OSError as error:
                assert error.code == 500
                assert json.loads(error.read())["error"] == "internal error; see the service log"
            time.sleep(0.3)
    finally:
        for each in loggers:
            each.removeHandler(handler)
    tracebacks = {id(record) for record in records if record.exc_info}
    assert len(tracebacks) == 1 and any("the store went away" in str(r.exc_info[1]) for r in records if r.exc_info)


def test_the_api_page_loads_swagger_from_the_service_not_a_cdn(client, monkeypatch):
    if routes.swagger_folder() is not None:
        page = client.get("/docs")
        assert page.status_code == 200 and "/docs/swagger-ui-bundle.js" in page.text
        assert "cdn" not in page.text.lower() and "https://" not in page.text
        script = client.get("/docs/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 100_000
        assert client.get("/docs/secret.txt").status_code == 404
    monkeypatch.setattr(routes, "swagger_folder", lambda: None)
    assert "pip install fastapi-offline" in assert_one_line_error(client.get("/docs"), 404)
    assert client.get("/openapi.json").status_code == 200
