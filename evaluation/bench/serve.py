"""`jsar bench serve`: the service against a new process per search, measured side by side in one run.

A `jsar serve` process is started on 127.0.0.1 over a synthetic index (random-weight cpu-config JSA, which is
fine for speed), then:

- cold: `jsar query` as a new process per search (imports, model and index loading, one search), and the
  `jsar query --server` client process for the same search;
- warm: one client searching by audio upload after another (end to end: upload, decode, encode, FAISS, JSON),
  and the same search followed by fetching all k hit maps (what the page does);
- load: `concurrency` clients with keep-alive connections sending `requests` audio searches in all, bounded
  by `max_seconds`: p50 / p99 latency, searches/s, errors, the service's mean micro-batch size, and its
  resident memory before and after.
Goals (2 cores, maps off): warm p50 <= 20 ms, >= 100 searches/s under 16 clients, 0 errors.
"""
from __future__ import annotations

import http.client
import dataclasses
import json
import logging
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexing.embed import index_dataset
from indexing.engine import Engine
from indexing.service.client import multipart_body, parse_server_timing
from indexing.service.uploads import SOUND_FORMATS, decode_upload
from jsa_retrieval.dataset import load_audio_window
from jsa_retrieval.transforms import log_spectrogram
from jsa_retrieval.machine import machine_info

from .config import DEFAULT_SERVE_CLIPS, QUICK_SERVE_CLIPS, BenchConfig, ServeSettings
from .report import goal_met, render_table
from .workspace import checkpoint_or_random, clips_or_synthetic, workspace

logger = logging.getLogger(__name__)

WARM_P50_GOAL_MS = 20.0  # one client, maps off (raised from 50 ms once 27 ms was reached)
LOAD_RATE_GOAL = 100.0  # searches/s under 16 clients on 2 cores (raised from 40 once 69/s was reached)


@dataclass
class LatencySummary:
    count: int
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> "LatencySummary":
        ms = np.asarray(seconds, dtype=float) * 1000
        if ms.size == 0:
            return cls(0, float("nan"), float("nan"), float("nan"))
        return cls(int(ms.size), float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.mean()))


@dataclass
class ServeBench:
    """All figures of one run (times in seconds unless the name says ms)."""

    clips: int
    k: int
    concurrency: int
    cold_query_s: list[float]
    cold_client_s: list[float]
    startup_s: float
    warm: LatencySummary
    warm_with_maps: LatencySummary
    load: LatencySummary
    load_seconds: float
    load_errors: int
    load_requests_asked: int
    mean_batch: float
    rss_start: int
    rss_before_load: int
    rss_half_load: int
    rss_after_load: int
    machine: dict[str, Any] = field(default_factory=dict)
    engine_with_maps: LatencySummary | None = None  # in-process Engine: audio search + k maps written
    profile: dict[str, float] = field(default_factory=dict)  # median ms of each stage of a search (search_profile)
    warm_stages: dict[str, float] = field(default_factory=dict)  # median ms of each Server-Timing stage, warm searches

    @property
    def load_rate(self) -> float:
        return self.load.count / self.load_seconds if self.load_seconds else 0.0

    def rows(self) -> list[tuple[str, str, str]]:
        cold = statistics.median(self.cold_query_s)
        return [
            ("cold `jsar query` (new process, one search)", f"{cold * 1000:.0f} ms (median of {len(self.cold_query_s)})", ""),
            ("cold `jsar query --server` (client process)", f"{statistics.median(self.cold_client_s) * 1000:.0f} ms", ""),
            ("service start to healthy", f"{self.startup_s:.1f} s", "model and indexes loaded once"),
            ("warm audio search, 1 client", f"p50 {self.warm.p50_ms:.1f} ms, p99 {self.warm.p99_ms:.1f} ms "
             f"({self.warm.count} searches)", f"goal p50 <= {WARM_P50_GOAL_MS:.0f} ms: "
             f"{goal_met(self.warm.p50_ms <= WARM_P50_GOAL_MS)}; {cold * 1000 / self.warm.p50_ms:.0f}x faster than cold"),
            (f"warm audio search + {self.k} maps, 1 client", f"p50 {self.warm_with_maps.p50_ms:.0f} ms, "
             f"p99 {self.warm_with_maps.p99_ms:.0f} ms ({self.warm_with_maps.count})", "what the page does"),
            *([(f"in-process Engine: audio search + {self.k} maps written", f"p50 {self.engine_with_maps.p50_ms:.0f} ms, "
                 f"p99 {self.engine_with_maps.p99_ms:.0f} ms ({self.engine_with_maps.count})",
                 "search_audio + write_outputs: query encoded once, hit images in one batch")]
              if self.engine_with_maps else []),
            (f"load: {self.concurrency} clients, audio searches", f"{self.load.count} of {self.load_requests_asked} in "
             f"{self.load_seconds:.1f} s = {self.load_rate:.1f} searches/s",
             f"goal >= {LOAD_RATE_GOAL:.0f}/s: {goal_met(self.load_rate >= LOAD_RATE_GOAL)}"),
            ("load latency", f"p50 {self.load.p50_ms:.0f} ms, p99 {self.load.p99_ms:.0f} ms", ""),
            ("load errors", str(self.load_errors), f"goal 0: {goal_met(self.load_errors == 0)}"),
            ("mean micro-batch under load", f"{self.mean_batch:.1f} searches", ""),
            *([("warm search inside the service: " + " / ".join(self.warm_stages),
                " / ".join(f"{ms:.2f}" for ms in self.warm_stages.values()) + " ms",
                f"median of its Server-Timing header; client p50 {self.warm.p50_ms:.1f} ms: the rest is HTTP")]
              if self.warm_stages else []),
            *[(f"profile: {stage}", f"{ms:.2f} ms", "median, one search in process (search_profile)")
              for stage, ms in self.profile.items()],
            ("service RSS: start / before load / half / end",
             " / ".join(f"{value / 2**20:.0f}" for value in (self.rss_start, self.rss_before_load, self.rss_half_load,
                                                             self.rss_after_load)) + " MiB",
             f"{(self.rss_after_load - self.rss_half_load) / 2**20:+.0f} MiB over the second half"),
        ]

    def table(self) -> str:
        load = (self.machine.get("load_average") or [0.0])[0]
        header = (f"jsar serve benchmark: {self.clips} clips, k {self.k}, {self.machine.get('usable_cores', '?')} cores, "
                  f"load average {load:.2f} at start")
        return render_table(header, ("measure", "value", "note"), self.rows())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "load_rate": self.load_rate, "table": self.table()}


# ------------------------------------------------------------------------------------------------ clients
class SearchClient:
    """One keep-alive HTTP connection sending audio searches (the load generator's client)."""

    def __init__(self, port: int, timeout: float = 60.0):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def get(self, route: str) -> tuple[int, bytes]:
        self.connection.request("GET", route)
        response = self.connection.getresponse()
        return response.status, response.read()

    def search(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        status, payload, _ = self.timed_search(body, content_type)
        return status, payload

    def timed_search(self, body: bytes, content_type: str) -> tuple[int, bytes, dict[str, float]]:
        """An audio search's status, body and the stages of its Server-Timing header."""
        self.connection.request("POST", "/search/audio", body=body, headers={"Content-Type": content_type})
        response = self.connection.getresponse()
        return response.status, response.read(), parse_server_timing(response.getheader("Server-Timing"))

    def close(self) -> None:
        self.connection.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _metric(text: str, name: str, labels: str = "") -> float:
    found = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else float("nan")


def _jsar(*args: str) -> list[str]:
    return [sys.executable, "-m", "jsa_retrieval", *args]


def _timed_process(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def _wait_healthy(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jsar serve exited with code {process.returncode}")
        try:
            client = SearchClient(port, timeout=2)
            status, _ = client.get("/health")
            client.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"jsar serve did not answer /health within {timeout:.0f} s")


def run_load(port: int, bodies: list[tuple[bytes, str]], requests: int, concurrency: int,
              max_seconds: float) -> tuple[list[float], int, float]:
    """The load generator: `requests` searches of `bodies` (multipart audio uploads, in turn) spread over
    `concurrency` keep-alive clients, stopping after `max_seconds`; (latencies of the good ones, errors, seconds)."""
    latencies: list[float] = []
    errors = [0]
    counter = iter(range(requests))
    lock = threading.Lock()
    stop_at = time.perf_counter() + max_seconds

    def worker() -> None:
        client = SearchClient(port)
        while time.perf_counter() < stop_at:
            with lock:
                number = next(counter, None)
            if number is None:
                break
            body, content_type = bodies[number % len(bodies)]
            started = time.perf_counter()
            try:
                status, _ = client.search(body, content_type)
            except (OSError, http.client.HTTPException):
                status = -1
                client.close()
                client = SearchClient(port)
            took = time.perf_counter() - started
            with lock:
                if status == 200:
                    latencies.append(took)
                else:
                    errors[0] += 1
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors[0], time.perf_counter() - started


def _sequential(client: SearchClient, bodies: list[tuple[bytes, str]], count: int, with_maps: bool,
                stages: list[dict[str, float]] | None = None) -> list[float]:
    """Client seconds of `count` searches one after another (with their maps fetched); each search's
    Server-Timing stages are appended to `stages` when given."""
    latencies = []
    for number in range(count):
        started = time.perf_counter()
        status, payload, timing = client.timed_search(*bodies[number % len(bodies)])
        if stages is not None:
            stages.append(timing)
        if status != 200:
            raise RuntimeError(f"warm search failed with {status}: {payload[:200]!r}")
        if with_maps:
            for hit in json.loads(payload)["hits"]:
                map_status, _ = client.get(hit["map_url"])
                if map_status != 200:
                    raise RuntimeError(f"map {hit['map_url']} failed with {map_status}")
        latencies.append(time.perf_counter() - started)
    return latencies


def median_stages(stages: list[dict[str, float]]) -> dict[str, float]:
    """{stage: median ms} over searches' Server-Timing stages, in the order the first search gave them."""
    names = list(stages[0]) if stages else []
    return {name: float(np.median([entry[name] for entry in stages if name in entry])) for name in names}


# ------------------------------------------------------------------------------------------------ profile
SEARCH_STAGES = ("upload written + audio decoded", "spectrogram", "audio encoder (batch of 1)",
                 "audio encoder per search (batch of 16)", "FAISS search", "hit records (store)", "JSON")


@torch.no_grad()
def search_profile(engine: Engine, wavs: list[Path], k: int, searches: int) -> dict[str, float]:
    """Median milliseconds of each stage of one audio search as the service runs it (the SEARCH_STAGES), in this
    process on a warm engine: the upload written to a file and decoded to the model's audio window, its
    spectrogram, the audio encoder alone and as one of a batch of 16 (what the micro-batcher runs under load),
    the FAISS search, reading the hits' records from the store, and the response's JSON. Two warm-up rounds."""
    config = engine.config.data
    times: dict[str, list[float]] = {stage: [] for stage in SEARCH_STAGES}
    bodies = [wav.read_bytes() for wav in wavs]
    for number in range(searches + 2):
        data = bodies[number % len(bodies)]
        began = time.perf_counter()
        window = decode_upload(data, SOUND_FORMATS, "sound", lambda path: load_audio_window(path, config))
        decoded = time.perf_counter()
        spectrogram = log_spectrogram(window, config)
        transformed = time.perf_counter()
        side = engine.encode_audio(spectrogram.unsqueeze(0))
        encoded = time.perf_counter()
        batch = engine.encode_audio(spectrogram.unsqueeze(0).expand(16, -1, -1, -1).contiguous())
        batched = time.perf_counter()
        scores, rows = engine.indexes.audio_to_image(side.vector.cpu().numpy(), k)
        searched = time.perf_counter()
        hits = engine._hits(scores[0], rows[0])
        recorded = time.perf_counter()
        json.dumps({"kind": "audio", "k": k, "hits": [dataclasses.asdict(hit) for hit in hits]})
        done = time.perf_counter()
        del batch
        if number < 2:
            continue
        for stage, seconds in zip(SEARCH_STAGES, (decoded - began, transformed - decoded, encoded - transformed,
                                                  (batched - encoded) / 16, searched - batched,
                                                  recorded - searched, done - recorded)):
            times[stage].append(seconds * 1000)
    return {stage: float(np.median(values)) for stage, values in times.items()}


# ------------------------------------------------------------------------------------------------ the run
def engine_search_with_maps(index_dir: Path, checkpoint: Path, wavs: list[Path], k: int, searches: int) -> LatencySummary:
    """In-process `Engine` audio searches, each writing its k hit overlays, contact sheet and results.json
    (what `jsar query --out` does once everything is loaded); two warm-up searches are not counted."""
    engine = Engine.open(index_dir, checkpoint, device="cpu")
    seconds = []
    with tempfile.TemporaryDirectory(prefix="jsar-bench-engine-") as out:
        for i in range(searches + 2):
            started = time.perf_counter()
            engine.write_outputs(engine.search_audio(wavs[i % len(wavs)], k), Path(out))
            if i >= 2:
                seconds.append(time.perf_counter() - started)
    return LatencySummary.of(seconds)


def run_serve_bench(config: BenchConfig | None = None) -> ServeBench:
    """Index (or reuse WORK/serve-index), start `jsar serve` on 127.0.0.1, measure, stop it; the figures."""
    config = config or BenchConfig()
    settings = config.serve.resolved(config.quick)
    machine = machine_info("cpu")
    with workspace(config.work_dir, prefix="jsar-bench-serve-") as root:
        checkpoint = checkpoint_or_random(root, config.checkpoint, config.seed)
        data_dir = clips_or_synthetic(root, config.data_dir,
                                      config.clip_count(DEFAULT_SERVE_CLIPS, QUICK_SERVE_CLIPS), config.seed)
        index_dir = root / "serve-index"
        if (index_dir / "index.json").is_file():
            logger.info(f"reusing the index in {index_dir}")
        else:
            logger.info(f"indexing {data_dir} into {index_dir}")
            index_dataset(data_dir, checkpoint, index_dir, num_workers=1, progress=False)
        wavs = sorted((data_dir / "audio").glob("*.wav"))[:64]
        logger.info(f"in-process Engine: where a search's time goes, then {settings.map_requests} audio searches "
                    "with their maps")
        profile = search_profile(Engine.open(index_dir, checkpoint, device="cpu"), wavs, settings.k,
                                 settings.warm_requests)
        engine_maps = engine_search_with_maps(index_dir, checkpoint, wavs, settings.k, settings.map_requests)
        logger.info("cold jsar query, new process per search")
        cold_query = [_timed_process(_jsar("query", "--index", str(index_dir), "--checkpoint", str(checkpoint),
                                           "--audio", str(wavs[i % len(wavs)]), "-k", str(settings.k),
                                           "--device", "cpu"))
                      for i in range(settings.cold_runs)]
        figures = measure_service(index_dir, checkpoint, wavs, settings, root / "serve.log")
        bench = ServeBench(clips=json.loads((index_dir / "index.json").read_text())["store_rows"], k=settings.k,
                           concurrency=settings.concurrency, cold_query_s=cold_query, machine=machine,
                           engine_with_maps=engine_maps, load_requests_asked=settings.requests, profile=profile,
                           **figures)
    if config.json_path:
        Path(config.json_path).write_text(json.dumps(bench.to_dict(), indent=2) + "\n")
    return bench


def measure_service(index_dir: Path, checkpoint: Path, wavs: list[Path], settings: ServeSettings,
                    log_path: Path) -> dict[str, Any]:
    """Start `jsar serve` over `index_dir` on a free port, measure it as ServeBench says (client processes, warm
    searches with and without maps, the load in two halves, its /metrics), stop it; the ServeBench fields."""
    bodies = [multipart_body({"k": str(settings.k)}, "file", wav.name, wav.read_bytes()) for wav in wavs]
    port = _free_port()
    with open(log_path, "w") as log_file:
        started = time.perf_counter()
        server = subprocess.Popen(_jsar("serve", "--index", str(index_dir), "--checkpoint", str(checkpoint),
                                        "--port", str(port), "--device", "cpu"), stdout=log_file, stderr=log_file)
        try:
            _wait_healthy(port, server, timeout=180)
            startup = time.perf_counter() - started
            client = SearchClient(port)
            rss_start = _metric(client.get("/metrics")[1].decode(), "process_resident_memory_bytes")
            cold_client = [_timed_process(_jsar("query", "--server", f"http://127.0.0.1:{port}", "--audio",
                                                str(wavs[i % len(wavs)]), "-k", str(settings.k)))
                           for i in range(settings.cold_runs)]
            _sequential(client, bodies, 10, with_maps=False)  # warm-up
            logger.info(f"warm: {settings.warm_requests} searches, then {settings.map_requests} with their maps")
            server_stages: list[dict[str, float]] = []
            warm = _sequential(client, bodies, settings.warm_requests, with_maps=False, stages=server_stages)
            warm_maps = _sequential(client, bodies, settings.map_requests, with_maps=True)
            metrics_before = client.get("/metrics")[1].decode()
            client.close()
            logger.info(f"load: {settings.requests} searches from {settings.concurrency} clients, in two halves")
            load, errors, seconds, rss_half = [], 0, 0.0, 0
            for half in (settings.requests // 2, settings.requests - settings.requests // 2):  # RSS: flat or growing?
                latencies, failed, took = run_load(port, bodies, half, settings.concurrency,
                                                   settings.max_seconds - seconds)
                load, errors, seconds = load + latencies, errors + failed, seconds + took
                client = SearchClient(port)
                metrics_after = client.get("/metrics")[1].decode()
                client.close()
                rss_half = rss_half or int(_metric(metrics_after, "process_resident_memory_bytes"))
        finally:
            server.terminate()
            server.wait(timeout=30)
    batches = (_metric(metrics_after, "jsar_batch_size_count", '{batcher="audio"}')
               - _metric(metrics_before, "jsar_batch_size_count", '{batcher="audio"}'))
    searches = (_metric(metrics_after, "jsar_batch_size_sum", '{batcher="audio"}')
                - _metric(metrics_before, "jsar_batch_size_sum", '{batcher="audio"}'))
    return dict(cold_client_s=cold_client, startup_s=startup, warm=LatencySummary.of(warm),
                warm_stages=median_stages(server_stages),
                warm_with_maps=LatencySummary.of(warm_maps), load=LatencySummary.of(load), load_seconds=seconds,
                load_errors=errors, mean_batch=searches / batches if batches else float("nan"),
                rss_start=int(rss_start), rss_before_load=int(_metric(metrics_before, "process_resident_memory_bytes")),
                rss_half_load=rss_half, rss_after_load=int(_metric(metrics_after, "process_resident_memory_bytes")))
