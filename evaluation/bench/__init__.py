"""Benchmarks on this machine, one module per question, all driven by one `BenchConfig` (bench.config):

- `indexing`: is the model the bottleneck of `jsar index`? clips/s against the bare encoders, and where a
  clip's time goes;
- `faiss_scale`: does the automatic FAISS choice meet "one query <= 5 ms at recall@10 >= 0.95" at 1,000,000 x
  512, at what build time and memory? on structured vectors (`vectors`) made from the model's own;
- `serve`: `jsar serve` against a new process per search, warm, with maps and under load.

`workspace` makes what a run is not given (work folder, random checkpoint, synthetic clips), `memory` measures
peak resident memory, `report` renders every benchmark's table, `run` runs indexing and FAISS side by side so
that their ratios compare numbers taken under the same load.
"""
from .config import BenchConfig, FaissSettings, ServeSettings
from .faiss_scale import FaissBench, IndexBench, bench_faiss_scale
from .indexing import IndexingBench, bench_indexing
from .report import BenchReport
from .run import run_benchmarks
from .workspace import make_random_checkpoint, make_synthetic_data

__all__ = ["BenchConfig", "BenchReport", "FaissBench", "FaissSettings", "IndexBench", "IndexingBench",
           "ServeSettings", "bench_faiss_scale", "bench_indexing", "make_random_checkpoint", "make_synthetic_data",
           "run_benchmarks"]
