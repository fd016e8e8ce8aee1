"""`jsar localize`: where the sound of one recording is in one picture."""
from __future__ import annotations

from pathlib import Path

import click

from .options import EXAMPLE, checkpoint_option


@click.command(help="Localize the sound of AUDIO in IMAGE with a trained checkpoint; writes an overlay PNG."
             + EXAMPLE + "jsar localize --image frame.jpg --audio dog.wav --checkpoint runs/jsa/best.pt")
@click.option("--image", "image_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--audio", "audio_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@checkpoint_option()
@click.option("--iqr/--no-iqr", default=False, show_default=True, help="Image-query refinement (Eq. 14).")
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=Path("localization.png"),
              show_default=True)
def localize(image_path: Path, audio_path: Path, checkpoint: Path, iqr: bool, out_path: Path) -> None:
    from ..localize_files import localize_pair

    written = localize_pair(image_path, audio_path, checkpoint, out_path, iqr=iqr)
    click.echo(f"wrote {written}")
