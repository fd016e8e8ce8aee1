"""The serve benchmark's pieces on a tiny index: the load generator counts answers and errors, the summary."""
from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the service needs the [serve] extra")

from evaluation.bench.serve import (LatencySummary, SearchClient, ServeBench, _metric, _sequential,  # noqa: E402
                                    median_stages, run_load)
from indexing.service.app import ServeConfig, create_app  # noqa: E402
from indexing.service.client import multipart_body  # noqa: E402
from helpers import live_server  # noqa: E402


def test_load_counts_good_answers_and_errors(engine, tiny_index):
    wav = (tiny_index[1] / "audio" / "synth_000001.wav").read_bytes()
    bodies = [multipart_body({"k": "3"}, "file", "a.wav", wav), multipart_body({"k": "3"}, "file", "b.wav", b"junk")]
    with live_server(create_app(engine, ServeConfig())) as url:
        latencies, errors, seconds = run_load(int(url.rsplit(":", 1)[1]), bodies, requests=10, concurrency=3,
                                              max_seconds=60)
    assert len(latencies) == 5 and errors == 5 and seconds > 0 and all(t > 0 for t in latencies)


def test_latency_summary_and_metric_lines():
    summary = LatencySummary.of([0.010, 0.020, 0.030])
    assert summary.count == 3 and summary.p50_ms == pytest.approx(20.0) and summary.mean_ms == pytest.approx(20.0)
    text = 'process_resident_memory_bytes 1.5e+08\njsar_batch_size_count{batcher="audio"} 12.0\n'
    assert _metric(text, "process_resident_memory_bytes") == 1.5e8
    assert _metric(text, "jsar_batch_size_count", '{batcher="audio"}') == 12.0


def test_table_says_which_goals_were_missed():
    def bench(warm_ms, rate, errors):
        warm = LatencySummary(100, warm_ms, warm_ms * 2, warm_ms)
        return ServeBench(clips=2000, k=10, concurrency=16, cold_query_s=[6.0], cold_client_s=[0.2], startup_s=4.0,
                          warm=warm, warm_with_maps=warm, load=LatencySummary(2000, 300, 500, 320),
                          load_seconds=2000 / rate, load_errors=errors, load_requests_asked=2000, mean_batch=8.0,
                          rss_start=2**30, rss_before_load=2**30, rss_half_load=2**30, rss_after_load=2**30)

    good, slow = bench(15.0, 120.0, 0).table(), bench(25.0, 90.0, 3).table()
    assert "MISSED" not in good and "400x faster" in good
    assert slow.count("MISSED") == 3


def test_warm_searches_report_the_services_own_stages(engine, tiny_index):
    wav = (tiny_index[1] / "audio" / "synth_000001.wav").read_bytes()
    bodies = [multipart_body({"k": "3"}, "file", "a.wav", wav)]
    stages: list[dict[str, float]] = []
    with live_server(create_app(engine, ServeConfig())) as url:
        client = SearchClient(int(url.rsplit(":", 1)[1]))
        latencies = _sequential(client, bodies, 4, with_maps=False, stages=stages)
        client.close()
    assert len(latencies) == 4 and len(stages) == 4
    medians = median_stages(stages)
    assert list(medians) == ["decode", "queue", "encode", "search", "total"] and medians["encode"] > 0
    assert medians["total"] < 1000 * max(latencies)  # the route's own time is part of the client's
    assert median_stages([{"a": 1.0, "b": 4.0}, {"a": 3.0}, {"a": 2.0, "b": 6.0}]) == {"a": 2.0, "b": 5.0}
    warm = LatencySummary(100, 15.0, 30.0, 15.0)
    table = ServeBench(clips=2, k=3, concurrency=1, cold_query_s=[1.0], cold_client_s=[0.1], startup_s=1.0,
                       warm=warm, warm_with_maps=warm, load=warm, load_seconds=1.0, load_errors=0,
                       load_requests_asked=100, mean_batch=1.0, rss_start=1, rss_before_load=1, rss_half_load=1,
                       rss_after_load=1, warm_stages=medians).table()
    assert "inside the service: decode / queue / encode / search / total" in table
