"""`jsar synth` and `jsar data`: the data sets jsar trains and reports on."""
from __future__ import annotations

from pathlib import Path

import click

from .options import EXAMPLE, clip_count, clips_option, is_quiet, workers_option


@click.command(help="Write the procedural audio-visual benchmark (VGG-SS layout) to OUT_DIR."
             + EXAMPLE + "jsar synth data/synth --clips 2000 --seed 0")
@click.argument("out_dir", type=click.Path(path_type=Path))
@clips_option(2000, "Number of clips.")
@click.option("--seed", default=0, show_default=True)
@click.option("--image-size", default=160, show_default=True, help="Frame size in pixels.")
@click.option("--seconds", default=3.0, show_default=True, help="Audio length in seconds.")
@click.option("--classes", "num_classes", default=10, show_default=True, help="Number of classes (3-12).")
@workers_option(1, "Processes writing clips (0: all cores).")
def synth(out_dir: Path, n_clips: int, seed: int, image_size: int, seconds: float, num_classes: int,
          workers: int) -> None:
    from ..synth import SynthConfig, generate

    summary = generate(out_dir, SynthConfig(n_clips=clip_count(n_clips), seed=seed, image_size=image_size, seconds=seconds,
                                            num_classes=num_classes), workers=workers)
    splits = ", ".join(f"{name} {count}" for name, count in summary.split_counts.items())
    click.echo(f"wrote {summary.n_clips} clips to {summary.out_dir} ({splits}; {summary.n_with_distractor} with a "
               f"silent distractor, {summary.n_with_offscreen} with an off-screen sound) "
               f"in {summary.seconds_elapsed:.1f}s")


@click.group(help="Build the real data sets jsar is developed and reported on.", name="data")
def data_group() -> None:
    pass


@data_group.command(help="Build realsound in OUT_DIR: Tux Paint's stamp photos and their recordings pasted on Plasma "
                         "wallpapers (16 classes; 2,200 / 200 / 480 clips, and 480 'unseen' clips of an instance "
                         "of each class that the other splits never show; VGG-SS layout, boxes and masks from "
                         "the alpha, the scene kind per clip). --source is the folder the two Debian packages were "
                         "extracted into: apt-get download tuxpaint-stamps-default plasma-workspace-wallpapers; "
                         "for f in *.deb; do dpkg -x \"$f\" x; done."
                         + EXAMPLE + "jsar data realsound data/realsound --source /tmp/rs/x")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--source", type=click.Path(path_type=Path), help="The extracted packages' folder (dpkg -x).")
@click.option("--seed", default=1, show_default=True, help="The published set's seed is 1.")
@click.option("--train", "n_train", type=click.IntRange(0), default=2200, show_default=True, help="Training clips.")
@click.option("--val", "n_val", type=click.IntRange(0), default=200, show_default=True, help="Validation clips.")
@click.option("--test-per-class", type=click.IntRange(0), default=30, show_default=True, help="Test clips per class.")
@click.option("--unseen-per-class", type=click.IntRange(0), default=30, show_default=True,
              help="Clips per class of the held-out instance (split 'unseen'); 0 keeps every instance in the "
                   "other splits (the set before the unseen split, byte for byte).")
def realsound(out_dir: Path, source: Path | None, seed: int, n_train: int, n_val: int, test_per_class: int,
              unseen_per_class: int) -> None:
    from ..realsound import HOW_TO_GET, SourceMissing, build_realsound

    if source is None:
        raise SourceMissing(f"jsar data realsound needs --source, the extracted Debian packages; get them with: "
                            f"{HOW_TO_GET}")
    summary = build_realsound(source, out_dir, n_train, n_val, test_per_class, seed, progress=not is_quiet(),
                              per_class_unseen=unseen_per_class)
    splits = ", ".join(f"{name} {count}" for name, count in summary.split_counts.items())
    click.echo(f"wrote realsound to {summary.out_dir} ({splits}; {summary.classes} classes, {summary.backgrounds} "
               f"backgrounds, {summary.with_silent_object} clips with a silent object in view)")
