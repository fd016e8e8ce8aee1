"""`jsar bench`: benchmarks on this machine."""
from __future__ import annotations

from pathlib import Path

import click

from .options import EXAMPLE, checkpoint_option, device_option, option_group, workers_option


def _compare_specs(specs: tuple[str, ...]) -> tuple[str, ...]:
    """--compare values, each checked at once (not after the store and the first index are built)."""
    from evaluation.bench.faiss_scale import compare_spec

    for spec in specs:
        try:
            compare_spec(spec)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--compare") from None
    return specs


@click.group(help="Benchmarks on this machine: indexing clips/s against the bare model, FAISS at 1,000,000 x 512 "
             "with cross-modal queries, and the service against a new process per search; `all` runs indexing and "
             "FAISS side by side in one run." + EXAMPLE + "jsar bench all --quick\n  jsar bench faiss --work-dir "
             "/data/bench --json bench.json\n  jsar bench serve --quick")
def bench() -> None:
    pass


BENCH_INPUTS = option_group(
    click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                 help="Clips to index [a synthetic set made in the work folder]."),
    checkpoint_option(required=False, help="Model checkpoint [a random cpu-config JSA]."),
    click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
                 help="Keep data and indexes here [a temporary folder; 1M vectors need ~12 GB free]."),
    click.option("--quick", is_flag=True, help="Smoke run: 256 clips, 100,000 vectors, fewer queries and requests."),
    click.option("--clips", type=click.IntRange(min=2),
                 help="Synthetic clips to make [indexing, faiss 512; serve 2000]."),
    click.option("--seed", default=0, show_default=True),
    click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                 help="Also write the report as JSON."))
BENCH_INDEXING = option_group(
    click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
    workers_option(2, "DataLoader workers."),
    device_option())
BENCH_FAISS = option_group(
    click.option("--vectors", type=click.IntRange(min=1), help="Rows of the FAISS benchmark's store [1,000,000]."),
    click.option("--dim", type=click.IntRange(min=1), default=512, show_default=True),
    click.option("--factory", help="FAISS factory string (or 'ScaNN{leaves},AH2,RFlat') instead of the automatic "
                 "choice."),
    click.option("--compare", multiple=True, callback=lambda ctx, param, specs: _compare_specs(specs),
                 help="Another factory measured in the same run on the same store and exact neighbours "
                 "(repeatable), e.g. --compare HNSW32; 'FACTORY|k_factor_rf=64' holds a search parameter while the "
                 "rest is calibrated."),
    click.option("--vectors-from", type=click.Path(exists=True, file_okay=False, path_type=Path),
                 help="A folder `jsar index` made: its image/audio vectors are the bases (no indexing step)."),
    click.option("--sigma", type=float, default=0.6, show_default=True, help="Noise of each copy of a base vector."),
    click.option("--latency-queries", type=click.IntRange(min=1), default=200, show_default=True),
    click.option("--batch-queries", type=click.IntRange(min=1), help="Batch size for queries/s [2000]."),
    click.option("--recall-queries", type=click.IntRange(min=1), help="Queries scored against exact search [1000]."),
    click.option("--sweep", "sweep_values", type=click.IntRange(min=1), multiple=True,
                 help="An nprobe/efSearch value to sweep (repeatable) [8..256]."),
    click.option("--augmented-from", type=click.Path(exists=True, file_okay=False, path_type=Path),
                 help="A data folder: also measure a store of real augmented encodings of its clips (new crops and "
                      "audio windows through --checkpoint) beside the noisy copies."),
    click.option("--augmented-vectors", type=click.IntRange(min=1),
                 help="Rows of the augmented store [as many as --vectors]."))


@bench.command("indexing", help="`jsar index` clips/s against the bare model (both encoders on random tensors, same "
               "batch), the decode-only rate and where a clip's time goes." + EXAMPLE + "jsar bench indexing --quick")
@BENCH_INPUTS
@BENCH_INDEXING
def bench_indexing(**options) -> None:
    from evaluation.bench import BenchConfig, run_benchmarks

    click.echo(run_benchmarks(BenchConfig.from_options(options), faiss_scale=False).table())


@bench.command("faiss", help="FAISS at 1,000,000 x 512 (single-query latency, batch throughput, build time, peak "
               "memory, recall@10 against exact FAISS and numpy search), with cross-modal queries on structured "
               "vectors made from the model's own (the clips are indexed first, untimed, unless --vectors-from)."
               + EXAMPLE + "jsar bench faiss --quick --sweep 16 --sweep 64")
@BENCH_INPUTS
@BENCH_INDEXING
@BENCH_FAISS
def bench_faiss(**options) -> None:
    from evaluation.bench import BenchConfig, run_benchmarks

    click.echo(run_benchmarks(BenchConfig.from_options(options), indexing=False).table())


@bench.command("all", help="indexing and faiss side by side in one run, so every ratio compares numbers taken under "
               "the same load." + EXAMPLE + "jsar bench all --checkpoint runs/jsa/best.pt --work-dir /tmp/bench "
               "--json bench.json")
@BENCH_INPUTS
@BENCH_INDEXING
@BENCH_FAISS
def bench_all(**options) -> None:
    from evaluation.bench import BenchConfig, run_benchmarks

    click.echo(run_benchmarks(BenchConfig.from_options(options)).table())


@bench.command("serve", help="`jsar serve` under concurrent clients against a new `jsar query` process per search: "
               "cold, warm, with maps and under load (on the CPU)." + EXAMPLE + "jsar bench serve --quick")
@BENCH_INPUTS
@click.option("--requests", type=click.IntRange(min=1), help="Audio searches under load [2000].")
@click.option("--concurrency", type=click.IntRange(min=1), default=16, show_default=True, help="Concurrent clients.")
def bench_serve(**options) -> None:
    from evaluation.bench import BenchConfig
    from evaluation.bench.serve import run_serve_bench

    click.echo(run_serve_bench(BenchConfig.from_options(options)).table())
