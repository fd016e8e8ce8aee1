"""The service's caches: remembered searches and query pictures expire after `cache_ttl_s`, only the latest
`query_picture_cache_size` sound queries keep their picture, and drawn maps stay within `map_cache_bytes`.
Time is a fake clock handed to the service's TTL caches, so expiry is checked without sleeping."""
from __future__ import annotations

import functools

import pytest

pytest.importorskip("fastapi", reason="the service needs the [serve] extra (fastapi, uvicorn, python-multipart)")
from cachetools import TTLCache  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import indexing.service.search as service_search  # noqa: E402
from indexing.service.app import ServeConfig, create_app  # noqa: E402
from helpers import assert_one_line_error, upload  # noqa: E402


@pytest.fixture
def clock(monkeypatch):
    """Seconds on the service caches' clock; tests move it by hand."""
    now = [0.0]
    monkeypatch.setattr(service_search, "TTLCache", functools.partial(TTLCache, timer=lambda: now[0]))
    return now


def sound_search(client, tiny_index, clip: int, k: int = 5) -> dict:
    wav = tiny_index[1] / "audio" / f"synth_{clip:06d}.wav"
    response = upload(client, "/search/audio", wav.read_bytes(), k=k, name="q.wav")
    assert response.status_code == 200, response.text
    return response.json()


def test_query_pictures_and_searches_expire_after_the_ttl(engine, tiny_index, clock):
    with TestClient(create_app(engine, ServeConfig(cache_ttl_s=60.0))) as client:
        answer = sound_search(client, tiny_index, 3)
        map_url = answer["hits"][0]["map_url"]
        assert client.get(answer["query_url"]).status_code == 200 and client.get(map_url).status_code == 200
        clock[0] = 59.0  # served from the caches: reading does not extend the ttl
        assert client.get(answer["query_url"]).status_code == 200 and client.get(map_url).status_code == 200
        clock[0] = 61.0  # past the ttl of the search, its spectrogram and both drawn pictures
        assert "expired" in assert_one_line_error(client.get(answer["query_url"]), 404)
        assert "expired" in assert_one_line_error(client.get(map_url), 404)


def test_pictures_drawn_late_in_a_searchs_life_go_with_the_search(engine, tiny_index, clock):
    with TestClient(create_app(engine, ServeConfig(cache_ttl_s=60.0))) as client:
        answer = sound_search(client, tiny_index, 3)
        clock[0] = 50.0  # drawn now, the pictures would stay cached until 110
        map_url = answer["hits"][0]["map_url"]
        assert client.get(answer["query_url"]).status_code == 200 and client.get(map_url).status_code == 200
        clock[0] = 61.0  # the search is gone, and so are they
        assert "expired" in assert_one_line_error(client.get(map_url), 404)
        assert "expired" in assert_one_line_error(client.get(answer["query_url"]), 404)


def test_only_the_latest_sound_queries_keep_their_picture(engine, tiny_index, clock):
    with TestClient(create_app(engine, ServeConfig(query_picture_cache_size=1))) as client:
        older, newer = sound_search(client, tiny_index, 3), sound_search(client, tiny_index, 5)
        assert client.get(newer["query_url"]).status_code == 200
        assert "no sound query" in assert_one_line_error(client.get(older["query_url"]), 404)
        assert client.get(older["hits"][0]["map_url"]).status_code == 200  # the search itself is still remembered


def test_drawn_maps_stay_within_the_byte_budget(engine, tiny_index, monkeypatch):
    draws = []
    hit_pictures = engine.hit_pictures
    monkeypatch.setattr(engine, "hit_pictures", lambda *args, **kwargs: draws.append(1) or hit_pictures(*args,
                                                                                                        **kwargs))
    with TestClient(create_app(engine, ServeConfig())) as client:
        answer = sound_search(client, tiny_index, 3)
        pngs = {hit["id"]: client.get(hit["map_url"]).content for hit in answer["hits"]}
    assert len(draws) == 1  # an ample budget: the first request drew all five, the others were cached
    budget = sum(sorted(len(png) for png in pngs.values())[-2:])  # room for two maps, not five
    app = create_app(engine, ServeConfig(map_cache_bytes=budget))
    with TestClient(app) as client:
        answer = sound_search(client, tiny_index, 3)
        served = {hit["id"]: client.get(hit["map_url"]).content for hit in answer["hits"]}
        maps = app.state.service.maps
        assert served == pngs and maps.currsize <= budget and 2 <= len(maps) < 5
        first = answer["hits"][0]
        assert (answer["query_id"], first["id"]) not in maps  # the oldest map made room for the newer ones
        draws.clear()
        assert client.get(first["map_url"]).content == pngs[first["id"]] and draws == [1]  # drawn again
    with TestClient(create_app(engine, ServeConfig(map_cache_bytes=1))) as client:  # smaller than any map
        answer = sound_search(client, tiny_index, 3)
        assert client.get(answer["hits"][0]["map_url"]).status_code == 200
