"""`jsar demo`: the whole product on synthetic data."""
from __future__ import annotations

from pathlib import Path

import click

from .options import EXAMPLE, clip_count, clips_option, workers_option


@click.command(help="The whole product on the embedded synthetic data: synth, train, index, query, evaluate."
             + EXAMPLE + "jsar demo --out demo_out")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True)
@clips_option(2000, "Synthetic clips to generate.")
@click.option("--minutes", "train_minutes", default=9.0, show_default=True, help="Training time budget.")
@click.option("--epochs", type=int, help="Cap on epochs (default: the cpu configuration's).")
@click.option("--seed", default=0, show_default=True)
@workers_option(2)
def demo(out_dir: Path, n_clips: int, train_minutes: float, epochs: int | None, seed: int, workers: int) -> None:
    from evaluation.demo import run_demo

    result = run_demo(out_dir, n_clips=clip_count(n_clips), train_minutes=train_minutes, epochs=epochs, seed=seed,
                      workers=workers)
    click.echo("")
    for name, path in {**result.reports, **result.pictures}.items():
        click.echo(f"{name:>24}: {path}")
    click.echo(f"{'checkpoint':>24}: {result.checkpoint}")
    click.echo(f"{'index':>24}: {result.index_dir}")
    click.echo("stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()))
