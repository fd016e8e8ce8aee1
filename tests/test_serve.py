"""`jsar serve` over a tiny index: every endpoint, the token, path traversal, bad uploads, batching, the client."""
from __future__ import annotations

import io
import json
import re
import socket
import tempfile
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("fastapi", reason="the service needs the [serve] extra (fastapi, uvicorn, python-multipart)")
from fastapi.testclient import TestClient  # noqa: E402

from jsa_retrieval.cli import cli  # noqa: E402
from indexing.service.app import ServeConfig, ServeError, check_bind, create_app, open_service  # noqa: E402
from indexing.service.batcher import MicroBatcher  # noqa: E402
from indexing.service.client import parse_server_timing  # noqa: E402
from indexing.service.routes import server_timing  # noqa: E402
from helpers import TOKEN, assert_one_line_error, live_server, upload  # noqa: E402


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine, ServeConfig(max_upload_bytes=200_000))) as test_client:
        yield test_client


# ------------------------------------------------------------------------------------------------ searches
def test_audio_search_gives_the_engines_hits_with_urls_not_paths(client, engine, tiny_index):
    _, data = tiny_index
    wav = data / "audio" / "synth_000003.wav"
    response = upload(client, "/search/audio", wav.read_bytes(), k=5, name="dog.wav")
    assert response.status_code == 200, response.text
    answer = response.json()
    local = engine.search_audio(wav, k=5)
    assert [hit["id"] for hit in answer["hits"]] == [hit.id for hit in local.hits]
    np.testing.assert_allclose([hit["score"] for hit in answer["hits"]], [hit.score for hit in local.hits], atol=1e-5)
    assert [hit["rank"] for hit in answer["hits"]] == [1, 2, 3, 4, 5] and answer["kind"] == "audio"
    assert str(data) not in response.text and "frames" not in response.text
    first = answer["hits"][0]
    assert first["image_url"] == f"/items/{first['id']}/image"
    assert first["map_url"] == f"/maps/{answer['query_id']}/{first['id']}.png"


def test_a_sound_search_comes_with_the_picture_of_its_query(client, engine, tiny_index):
    _, data = tiny_index
    wav = data / "audio" / "synth_000005.wav"
    answer = upload(client, "/search/audio", wav.read_bytes(), k=3, name="q.wav").json()
    assert answer["query_url"] == f"/queries/{answer['query_id']}.png"
    response = client.get(answer["query_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    served = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=int)
    expected = np.asarray(engine.query_picture("audio", wav, engine.embed_audio(wav)), dtype=int)
    assert served.shape == expected.shape  # spectrogram above, the attention strip below, as in contact sheets
    assert np.abs(served - expected).mean() < 2  # the kept spectrogram is float16
    assert client.get(answer["query_url"]).content == response.content  # cached once drawn
    image = upload(client, "/search/image", (data / "frames" / "synth_000005.jpg").read_bytes(), k=2).json()
    assert image["query_url"] is None  # the page shows a picture query from the file it sent
    assert_one_line_error(client.get(f"/queries/{image['query_id']}.png"), 404)
    assert_one_line_error(client.get(f"/queries/{'0' * 32}.png"), 404)


def webm_opus(seconds: float = 1.0, rate: int = 48000) -> bytes:
    """What a browser's MediaRecorder sends: Opus in WebM."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=rate)
        stream.layout = "mono"
        wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
        for start in range(0, wave.size, 960):
            frame = av.AudioFrame.from_ndarray(wave[None, start:start + 960], format="flt", layout="mono")
            frame.rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def test_a_browser_recording_in_webm_opus_is_searched(client):
    response = upload(client, "/search/audio", webm_opus(), k=3, name="recording.webm")
    assert response.status_code == 200, response.text
    assert len(response.json()["hits"]) == 3


def test_audio_hit_map_is_the_engines_overlay_of_that_hit(client, engine, tiny_index):
    _, data = tiny_index
    wav = data / "audio" / "synth_000005.wav"
    answer = upload(client, "/search/audio", wav.read_bytes(), k=3).json()
    local = engine.search_audio(wav, k=3)
    expected = engine.hit_pictures("audio", local.query_side, local.hits)
    for hit, picture in zip(answer["hits"], expected):
        response = client.get(hit["map_url"])
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        served = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=int)
        assert served.shape == (64, 64, 3)
        assert np.abs(served - np.asarray(picture, dtype=int)).max() <= 2  # batch-of-3 vs batch-of-1 rounding


def test_one_thread_runs_torch_on_all_cores_the_others_on_one(engine, tiny_index, monkeypatch):
    """torch's OpenMP team is per thread; a second team idle beside the encoder's slowed a lone sound's pass from
    5.4 to 9 ms, and a new thread takes the thread count last set anywhere, so the service sets its own."""
    import torch

    _, data = tiny_index
    calls = []

    def recorded(name, method):
        def record(*args, **kwargs):
            calls.append((name, threading.get_ident(), torch.get_num_threads()))
            return method(*args, **kwargs)
        return record

    for name in ("encode_audio", "encode_image", "hit_pictures", "audio_input", "image_input"):
        monkeypatch.setattr(engine, name, recorded(name, getattr(engine, name)))
    cores = torch.get_num_threads()
    with TestClient(create_app(engine, ServeConfig())) as service:
        for i in range(3):
            answer = upload(service, "/search/audio", (data / "audio" / f"synth_00000{i}.wav").read_bytes(), k=2).json()
            upload(service, "/search/image", (data / "frames" / f"synth_00000{i}.jpg").read_bytes(), k=2)
        assert service.get(answer["hits"][0]["map_url"]).status_code == 200
        assert service.get(answer["query_url"]).status_code == 200
    maps = [ident for name, ident, _ in calls if name == "hit_pictures"]
    encoders = [(ident, threads) for name, ident, threads in calls if name.startswith("encode_") and ident not in maps]
    assert len(encoders) == 6 and set(encoders) == {(encoders[0][0], cores)}  # one thread, all the cores
    others = [(name, threads) for name, ident, threads in calls if not name.startswith("encode_") or ident in maps]
    assert {name for name, _ in others} == {"hit_pictures", "encode_image", "audio_input", "image_input"}
    assert {threads for _, threads in others} == {1}


def test_each_search_says_where_its_time_went_in_a_server_timing_header(client, engine, tiny_index):
    _, data = tiny_index
    sound = upload(client, "/search/audio", (data / "audio" / "synth_000003.wav").read_bytes(), k=3, name="a.wav")
    stages = parse_server_timing(sound.headers["server-timing"])
    assert list(stages) == ["decode", "queue", "encode", "search", "total"]
    assert stages["decode"] > 0 and stages["encode"] > 0 and stages["search"] > 0 and stages["queue"] >= 0
    assert stages["decode"] + stages["queue"] + stages["encode"] + stages["search"] <= stages["total"] + 0.01
    assert stages["total"] == pytest.approx(sound.json()["took_ms"], abs=0.01)
    picture = upload(client, "/search/image", (data / "frames" / "synth_000004.jpg").read_bytes(), k=2, name="x.jpg")
    assert list(parse_server_timing(picture.headers["server-timing"])) == ["decode", "queue", "encode", "search",
                                                                           "total"]
    vector = engine.indexes.store.read_rows("audio_vectors", [1])[0]
    answer = client.post("/search/vector", json={"vector": vector.tolist(), "direction": "audio_to_image", "k": 2})
    assert list(parse_server_timing(answer.headers["server-timing"])) == ["queue", "search", "total"]


def test_server_timing_headers_are_written_and_read_back():
    header = server_timing({"decode": 2.414, "encode": 7.9})
    assert header == "decode;dur=2.41, encode;dur=7.90"
    assert parse_server_timing(header) == {"decode": 2.41, "encode": 7.9}
    assert parse_server_timing('cache;desc="hit", db;dur=x, app;dur=1.5;desc=a') == {"app": 1.5}
    assert parse_server_timing(None) == {}


def test_image_search_gives_sound_hits_drawn_with_their_time_attention(client, engine, tiny_index):
    _, data = tiny_index
    image = data / "frames" / "synth_000004.jpg"
    answer = upload(client, "/search/image", image.read_bytes(), k=4, name="x.jpg").json()
    assert [hit["id"] for hit in answer["hits"]] == [hit.id for hit in engine.search_image(image, k=4).hits]
    strip = Image.open(io.BytesIO(client.get(answer["hits"][0]["map_url"]).content))
    assert strip.height == 160 + 32  # spectrogram above, attention strip below (pictures.spectrogram_picture)


def test_a_sound_hit_whose_attention_is_near_zero_in_places_is_still_drawn():
    from jsa_retrieval.pictures import spectrogram_picture

    spectrogram = np.random.default_rng(0).normal(size=(33, 101)).astype(np.float32)
    picture = spectrogram_picture(spectrogram, np.array([0.9, 0.001, 0.0, 0.099], dtype=np.float32))
    strip = np.asarray(picture)[160:]
    assert picture.size == (101, 192) and (strip[:, :25] != 255).any() and (strip[:, 26:75] == 255).all()


def test_vector_search_answers_like_the_indexes(client, engine):
    store = engine.indexes.store
    vector = store.read_rows("audio_vectors", [6])[0]
    response = client.post("/search/vector", json={"vector": vector.tolist(), "direction": "audio_to_image", "k": 4})
    assert response.status_code == 200, response.text
    expected = engine.image_hits(vector[None], 4)[0]
    assert [hit["id"] for hit in response.json()["hits"]] == [hit.id for hit in expected]
    assert response.json()["hits"][0]["map_url"] is None  # no sound to draw an image hit's map with
    sounds = client.post("/search/vector", json={"vector": store.read_rows("image_vectors", [2])[0].tolist(),
                                                 "direction": "image_to_audio", "k": 2}).json()
    assert len(sounds["hits"]) == 2 and client.get(sounds["hits"][0]["map_url"]).status_code == 200
    assert "32" in assert_one_line_error(client.post("/search/vector", json={"vector": [1.0, 2.0],
                                                                             "direction": "audio_to_image"}), 422)
    assert_one_line_error(client.post("/search/vector", json={"vector": vector.tolist(), "direction": "sideways"}), 422)


def test_items_metadata_and_their_stored_media(client, engine):
    record = engine.indexes.store.record(3)
    meta = client.get(f"/items/{record.id}").json()
    assert meta["id"] == record.id and meta["label"] == record.label and meta["row"] == 3
    assert client.get(meta["image_url"]).content == open(record.image_path, "rb").read()
    audio = client.get(meta["audio_url"])
    assert audio.content == open(record.audio_path, "rb").read() and audio.headers["content-type"] in (
        "audio/x-wav", "audio/wav")


def test_unknown_or_foreign_map_requests_are_404(client, tiny_index):
    _, data = tiny_index
    answer = upload(client, "/search/audio", (data / "audio" / "synth_000001.wav").read_bytes(), k=2).json()
    other = next(f"synth_{i:06d}" for i in range(16) if f"synth_{i:06d}" not in {h["id"] for h in answer["hits"]})
    assert_one_line_error(client.get(f"/maps/{answer['query_id']}/{other}.png"), 404)
    assert_one_line_error(client.get(f"/maps/0000/{answer['hits'][0]['id']}.png"), 404)


# ------------------------------------------------------------------------------------------------ safety
CRAFTED = ["../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "/etc/passwd",
           "..%252F..%252Fetc%252Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "....//....//etc/passwd",
           "synth_000001.jpg", "frames%2Fsynth_000001.jpg", "..\\..\\etc\\passwd", "%00", "synth_000001%00"]


@pytest.mark.parametrize("crafted", CRAFTED)
def test_crafted_ids_get_404_and_never_a_file(client, tiny_index, crafted):
    _, data = tiny_index
    query_id = upload(client, "/search/audio", (data / "audio" / "synth_000001.wav").read_bytes(), k=1).json()["query_id"]
    for route in (f"/items/{crafted}", f"/items/{crafted}/image", f"/items/{crafted}/audio",
                  f"/maps/{query_id}/{crafted}.png", f"/maps/{crafted}/synth_000001.png"):
        response = client.get(route)
        assert response.status_code == 404, (route, response.status_code)
        assert "root:" not in response.text and not response.content.startswith(b"\xff\xd8")


def test_absolute_paths_of_stored_files_are_not_ids(client, engine):
    record = engine.indexes.store.record(0)
    assert client.get(f"/items/{record.image_path}/image").status_code == 404
    assert client.get("/items/" + record.image_path.replace("/", "%2F") + "/image").status_code == 404


def test_token_is_checked_everywhere_but_health(engine, tiny_index):
    _, data = tiny_index
    wav = (data / "audio" / "synth_000002.wav").read_bytes()
    with TestClient(create_app(engine, ServeConfig(token=TOKEN))) as guarded:
        assert guarded.get("/health").status_code == 200
        for method, route in (("get", "/"), ("get", "/metrics"), ("get", "/items/synth_000001"),
                              ("get", "/items/synth_000001/image"), ("get", "/maps/q/synth_000001.png"),
                              ("get", "/docs"), ("get", "/openapi.json")):
            assert_one_line_error(getattr(guarded, method)(route), 401)
        assert_one_line_error(upload(guarded, "/search/audio", wav), 401)
        assert_one_line_error(upload(guarded, "/search/audio", wav, headers={"Authorization": "Bearer wrong"}), 401)
        assert upload(guarded, "/search/audio", wav, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        page = guarded.get(f"/?token={TOKEN}")  # opening the page with the token leaves a cookie for its requests
        assert page.status_code == 200 and "jsar" in page.text
        assert guarded.get("/items/synth_000001").status_code == 200


def test_public_bind_needs_a_token():
    with pytest.raises(ServeError, match="--token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ServeError):
        check_bind("192.168.1.5", "")
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    check_bind("0.0.0.0", TOKEN)


def test_open_service_keeps_the_configs_token_when_no_token_argument_is_given(tiny_index):
    app = open_service(tiny_index[0], host="0.0.0.0", config=ServeConfig(token=TOKEN, max_k=7))
    assert app.state.service.config.token == TOKEN and app.state.service.config.max_k == 7
    assert open_service(tiny_index[0], token="other", config=ServeConfig(token=TOKEN)).state.service.config.token == "other"
    with pytest.raises(ServeError, match="--token"):
        open_service(tiny_index[0], host="0.0.0.0", config=ServeConfig())


def test_cli_serve_refuses_a_public_bind_without_token_in_one_line(tiny_index, monkeypatch):
    monkeypatch.delenv("JSAR_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--index", str(tiny_index[0]), "--host", "0.0.0.0"])
    assert result.exit_code != 0 and "--token" in str(result.exception)


def test_oversize_uploads_are_413(client):
    big = b"RIFF" + b"\0" * 300_000
    assert "limit" in assert_one_line_error(upload(client, "/search/audio", big), 413)

    def chunks():  # no Content-Length: the running count must stop it
        for _ in range(40):
            yield b"x" * 10_000

    response = client.post("/search/audio", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert_one_line_error(response, 413)


def test_broken_empty_and_wrong_type_uploads_are_4xx_one_line(client, tiny_index):
    _, data = tiny_index
    image = (data / "frames" / "synth_000001.jpg").read_bytes()
    wav = (data / "audio" / "synth_000001.wav").read_bytes()
    assert "decode" in assert_one_line_error(upload(client, "/search/audio", b"RIFF\x10\0\0\0WAVEfmt garbage"), 422)
    assert_one_line_error(upload(client, "/search/image", image[:200]), 422)  # a truncated JPEG
    assert_one_line_error(upload(client, "/search/audio", b"\x1a\x45\xdf\xa3" + b"\0" * 64), 422)  # broken webm
    assert "jpeg" in assert_one_line_error(upload(client, "/search/audio", image), 415)
    assert_one_line_error(upload(client, "/search/image", wav), 415)
    assert_one_line_error(upload(client, "/search/audio", b"hello, this is text"), 415)
    assert_one_line_error(upload(client, "/search/audio", b""), 400)
    assert_one_line_error(client.post("/search/audio", data={"k": "3"}), 422)  # no file
    assert_one_line_error(upload(client, "/search/audio", wav, k=0), 422)
    assert_one_line_error(upload(client, "/search/audio", wav, k="many"), 422)
    assert_one_line_error(upload(client, "/search/audio", wav, k=10_000), 422)
    assert_one_line_error(client.post("/search/audio", json={"file": "x"}), 422)
    broken_form = client.post("/search/audio", content=b"--b\r\nbroken", headers={
        "Content-Type": "multipart/form-data; boundary=b"})
    assert_one_line_error(broken_form, broken_form.status_code)
    assert broken_form.status_code in (400, 422)
    assert client.get("/no/such/route").status_code == 404


def test_upload_temporary_files_are_removed(client, tiny_index, tmp_path, monkeypatch):
    _, data = tiny_index
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    wav = (data / "audio" / "synth_000001.wav").read_bytes()
    for content in (wav, b"RIFF\x10\0\0\0WAVEfmt garbage", wav):
        upload(client, "/search/audio", content, k=2)
    upload(client, "/search/image", (data / "frames" / "synth_000001.jpg").read_bytes()[:300])
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith("jsar-upload-")]


def test_health_and_metrics_count_requests_latencies_and_errors(client, tiny_index):
    _, data = tiny_index
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["items"] == 16 and health["dim"] == 32
    upload(client, "/search/audio", (data / "audio" / "synth_000001.wav").read_bytes(), k=2)
    upload(client, "/search/audio", b"not audio at all")
    text = client.get("/metrics").text
    ok = re.search(r'jsar_requests_total\{method="POST",route="/search/audio",status="200"\} (\d+)', text)
    assert ok and int(float(ok.group(1))) >= 1
    assert re.search(r'jsar_errors_total\{route="/search/audio",status="415"\} [1-9]', text)
    assert 'jsar_request_seconds_bucket{le="0.005",route="/search/audio"}' in text
    assert "process_resident_memory_bytes" in text and "jsar_batch_size_count" in text


def test_openapi_page_and_web_page_are_served(client):
    assert {"/search/audio", "/search/image", "/search/vector", "/items/{item_id}", "/health", "/metrics"} <= set(
        client.get("/openapi.json").json()["paths"])
    page = client.get("/")
    assert page.status_code == 200 and 'id="sound-file"' in page.text and "MediaRecorder" in page.text


# ------------------------------------------------------------------------------------------------ batching
def test_concurrent_requests_share_batches_and_keep_their_own_results():
    sizes = []

    def double_all(items):
        time.sleep(0.05)
        return [2 * item for item in items]

    batcher = MicroBatcher(double_all, max_batch=8, on_batch=sizes.append)
    futures = [batcher.submit_future(i) for i in range(20)]
    assert [future.result(timeout=10) for future in futures] == [2 * i for i in range(20)]
    batcher.close()
    assert sum(sizes) == 20 and max(sizes) == 8 and len(sizes) < 20


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on():
    batcher = MicroBatcher(lambda items: [1 / item for item in items])
    with pytest.raises(ZeroDivisionError):
        batcher.submit_future(0).result(timeout=10)
    assert batcher.submit_future(4).result(timeout=10) == 0.25
    batcher.close()


def test_concurrent_http_searches_are_micro_batched_with_correct_answers(engine, tiny_index):
    _, data = tiny_index
    wavs = [data / "audio" / f"synth_{i:06d}.wav" for i in range(8)]
    expected = {wav.name: [hit.id for hit in engine.search_audio(wav, k=3).hits] for wav in wavs}
    app = create_app(engine, ServeConfig(batch_wait_s=0.05))
    with TestClient(app) as batched:
        answers = {}

        def search(wav):
            answers[wav.name] = [h["id"] for h in upload(batched, "/search/audio", wav.read_bytes(), k=3).json()["hits"]]

        threads = [threading.Thread(target=search, args=(wav,)) for wav in wavs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == expected
        count = re.search(r'jsar_batch_size_count\{batcher="audio"\} (\S+)', batched.get("/metrics").text)
        assert float(count.group(1)) < len(wavs)  # fewer batches than requests


# ------------------------------------------------------------------------------------------------ client
def test_cli_query_through_a_server_prints_the_same_hits_as_local(engine, tiny_index, tmp_path):
    index_dir, data = tiny_index
    wav = str(data / "audio" / "synth_000009.wav")
    runner = CliRunner()
    local = json.loads(runner.invoke(cli, ["query", "--index", str(index_dir), "--audio", wav, "-k", "4",
                                           "--json"]).output)
    with live_server(create_app(engine, ServeConfig(token=TOKEN))) as url:
        remote = runner.invoke(cli, ["query", "--server", url, "--token", TOKEN, "--audio", wav, "-k", "4", "--json",
                                     "--out", str(tmp_path / "hits")])
        assert remote.exit_code == 0, remote.output
        answer = json.loads(remote.output[:remote.output.rindex("}") + 1])
        table = runner.invoke(cli, ["query", "--server", url, "--token", TOKEN, "--audio", wav, "-k", "4"])
        denied = runner.invoke(cli, ["query", "--server", url, "--audio", wav])
    assert [hit["id"] for hit in answer["hits"]] == [hit["id"] for hit in local["hits"]]
    assert answer["hits"][0]["map_url"].startswith(url)
    assert len(list((tmp_path / "hits").glob("hit_*.png"))) == 4 and (tmp_path / "hits" / "results.json").is_file()
    assert table.exit_code == 0 and all(hit["id"] in table.output for hit in local["hits"])
    assert denied.exit_code != 0 and "401" in str(denied.exception)


def test_cli_query_with_no_server_listening_is_one_line(tiny_index):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    from jsa_retrieval.errors import JsarError

    result = CliRunner().invoke(cli, ["query", "--server", f"http://127.0.0.1:{port}", "--audio",
                                      str(tiny_index[1] / "audio" / "synth_000001.wav")])
    assert result.exit_code != 0 and isinstance(result.exception, JsarError)
    assert "no jsar service" in str(result.exception) and "\n" not in str(result.exception)


# ------------------------------------------------------------------------------------------------ logging, uvicorn
def test_the_services_messages_go_through_jsars_logging_set_up(capsys):
    """Every service module logs under `indexing`, which `configure_logging` sets up: its one-line format, -v and
    -q reach the service's warnings (a `jsar.serve` logger once bypassed them)."""
    import logging

    from indexing.service import app, batcher, connections, limits, uploads
    from jsa_retrieval.cli import PACKAGES, configure_logging

    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level,
                    logging.getLogger(name).propagate) for name in PACKAGES}
    modules = (app, batcher, connections, limits, uploads)
    try:
        configure_logging(0)
        for module in modules:
            module.logger.warning("from %s", module.__name__)
        printed = capsys.readouterr().err.splitlines()
        assert printed == [f"warning: from {module.__name__}" for module in modules]
        configure_logging(-1)  # -q: warnings only
        connections.logger.info("not shown")
        limits.logger.warning("shown")
        assert capsys.readouterr().err.splitlines() == ["warning: shown"]
    finally:
        for name, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


class _FakeTransport:
    """What uvicorn's protocol asks of an asyncio transport while a connection opens and closes."""

    def __init__(self) -> None:
        self.closed, self.written = False, b""

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_the_uvicorn_internals_the_bounded_protocol_relies_on_are_there():
    """connections.BoundedH11Protocol subclasses uvicorn's private H11Protocol (uvicorn is pinned in setup.cfg to
    the minor release this was tested on). A new uvicorn must keep: the four methods it overrides with their
    signatures; `uvicorn.Config(http=...)` taking its factory; and, on a protocol made as uvicorn's server makes
    one, the attributes it reads (loop, connections, conn, cycle, transport, flow.read_paused)."""
    import asyncio
    import inspect

    import h11
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.server import ServerState

    from indexing.service.connections import BoundedH11Protocol, ConnectionLimits, protocol_factory

    overridden = {"connection_made": ["self", "transport"], "data_received": ["self", "data"],
                  "on_response_complete": ["self"], "connection_lost": ["self", "exc"]}
    for name, parameters in overridden.items():
        assert list(inspect.signature(getattr(H11Protocol, name)).parameters) == parameters, name
        assert name in vars(BoundedH11Protocol)
    assert list(inspect.signature(H11Protocol.__init__).parameters)[:4] == ["self", "config", "server_state",
                                                                            "app_state"]

    async def asgi_app(scope, receive, send):
        pass

    closed: list[str] = []
    limits = ConnectionLimits(max_connections=1, on_close=closed.append)
    config = uvicorn.Config(asgi_app, http=protocol_factory(limits), log_level="warning")
    config.load()
    loop, state = asyncio.new_event_loop(), ServerState()
    try:
        def connect() -> tuple[BoundedH11Protocol, _FakeTransport]:  # as uvicorn.server's create_protocol does
            protocol = config.http_protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
            transport = _FakeTransport()
            protocol.connection_made(transport)
            return protocol, transport

        first, first_transport = connect()
        assert isinstance(first, BoundedH11Protocol) and first.loop is loop and first in state.connections
        assert first.conn.their_state is h11.IDLE and first.cycle is None and first.transport is first_transport
        assert first.flow.read_paused is False
        assert first.idle() and first._timer_kind == "head"  # the head deadline is armed on uvicorn's loop
        second, _ = connect()  # one over the cap: the oldest idle connection is closed for it
        assert first_transport.closed and closed == ["evicted"]
        for protocol in (first, second):
            protocol.connection_lost(None)
        assert not state.connections and first._timer is None and second._timer is None
    finally:
        loop.close()
