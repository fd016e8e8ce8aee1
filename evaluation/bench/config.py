"""`BenchConfig`: everything a benchmark run is told, in one dataclass with a section per benchmark.

The shared fields say where the run works and what it measures (work folder, clips, checkpoint, device, seed);
`faiss` and `serve` hold the settings only those benchmarks read, so `jsar bench faiss` and `jsar bench serve`
each fill their own section and nothing is silently ignored. `None` means "the default for this run size":
`quick` picks the smoke-run sizes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_VECTORS, QUICK_VECTORS = 1_000_000, 100_000
DEFAULT_DIM = 512
DEFAULT_CLIPS, QUICK_CLIPS = 512, 256
DEFAULT_SERVE_CLIPS, QUICK_SERVE_CLIPS = 2000, 256
NOISE_SIGMA = 0.6  # cos(copy, base) ~ 1 / sqrt(1 + 0.36) = 0.86
TOP_K = 10


@dataclass
class FaissSettings:
    """The FAISS benchmark: a structured store of `vectors` x `dim`, the index, the queries and the sweep."""

    vectors: int | None = None  # [1,000,000; quick 100,000]
    dim: int = DEFAULT_DIM
    factory: str | None = None  # None: the automatic choice (index_choice.choose_index)
    compare: tuple[str, ...] = ()  # further factories measured on the same store and exact neighbours
    vectors_from: Path | None = None  # a folder `jsar index` made: its vectors are the bases (no indexing step)
    # compare entries: a factory, or 'FACTORY|name=value|...' holding search parameters fixed while the rest is
    # calibrated (e.g. 'IVF2000,PQ256x4fs,RFlat|k_factor_rf=64', the re-ranking depth used before calibration)
    sigma: float = NOISE_SIGMA
    latency_queries: int = 200
    batch_queries: int | None = None  # [2000; quick 1000]
    recall_queries: int | None = None  # [1000; quick 300]
    sweep_values: tuple[int, ...] | None = None  # None: SWEEP_VALUES of the index's search parameter
    augmented_from: Path | None = None  # a data folder: also a store of real augmented encodings of its clips
    augmented_vectors: int | None = None  # rows of that store [the noisy-copy store's]
    margin_queries: int = 100  # queries whose 10th and 640th exact scores are set against the first stage's error

    def resolved(self, quick: bool = False) -> "FaissSettings":
        """A copy with every size filled in (the quick sizes with `quick`)."""
        return dataclasses.replace(
            self, vectors=self.vectors or (QUICK_VECTORS if quick else DEFAULT_VECTORS),
            batch_queries=self.batch_queries or (1000 if quick else 2000),
            recall_queries=self.recall_queries or (300 if quick else 1000))


@dataclass
class ServeSettings:
    """The service benchmark: warm searches, searches with maps, cold processes and the load."""

    requests: int | None = None  # audio searches under load [2000; quick 200]
    concurrency: int = 16
    k: int = TOP_K
    warm_requests: int = 100
    map_requests: int = 20
    cold_runs: int = 3
    max_seconds: float = 300.0  # bound on the load phase

    def resolved(self, quick: bool = False) -> "ServeSettings":
        return dataclasses.replace(self, requests=self.requests or (200 if quick else 2000))


@dataclass
class BenchConfig:
    """One benchmark run. data_dir / checkpoint: default a synthetic set of `clips` clips and a random cpu-config
    JSA made in the work folder; work_dir: kept (default a temporary folder, removed at the end)."""

    work_dir: Path | None = None
    data_dir: Path | None = None
    checkpoint: Path | None = None
    clips: int | None = None  # synthetic clips [indexing 512, serve 2000; quick 256]
    quick: bool = False
    batch_size: int = 64
    workers: int = 2
    device: str | None = None
    seed: int = 0
    json_path: Path | None = None
    faiss: FaissSettings = field(default_factory=FaissSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)

    def clip_count(self, default: int, quick: int) -> int:
        """`clips`, else the default of the benchmark that asks (its quick size with `quick`)."""
        return self.clips or (quick if self.quick else default)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "BenchConfig":
        """A run from flat settings, as `jsar bench`'s options give them: FaissSettings' and ServeSettings' fields
        go into the `faiss` and `serve` sections (an empty `sweep_values`: the default sweep), the rest are the
        run's own; an unknown name is a TypeError."""
        faiss_names = {f.name for f in dataclasses.fields(FaissSettings)}
        serve_names = {f.name for f in dataclasses.fields(ServeSettings)}
        faiss = {key: value for key, value in options.items() if key in faiss_names}
        serve = {key: value for key, value in options.items() if key in serve_names}
        own = {key: value for key, value in options.items() if key not in faiss_names | serve_names}
        if "sweep_values" in faiss:
            faiss["sweep_values"] = faiss["sweep_values"] or None
        return cls(**own, faiss=FaissSettings(**faiss), serve=ServeSettings(**serve))
