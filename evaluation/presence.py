"""Source presence on what users see: each sound's top-k search hits over a whole split, scored by the model's
presence (model.presence_matrix) against the checkpoint's calibrated cut. A hit is present when its picture shows
the sound's class as the sounding object, absent when the picture holds no object of that class at all (pictures
that show the class only as a silent object are left out).

    python -m evaluation.presence runs/real/best.pt data/realsound --split test -k 10
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch

from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.clips import read_dataset
from jsa_retrieval.dataset import ClipDataset, make_loader
from jsa_retrieval.inference import iter_embeddings, pick_device
from jsa_retrieval.collect import presence_pairs
from jsa_retrieval.metrics import presence_auroc


@torch.no_grad()
def hit_presence(checkpoint: str | Path, data_dir: str | Path, split: str, k: int = 10,
                 device: str | None = None) -> dict:
    """{'auroc', 'auroc_retrieval_score', 'cut', 'absent_flagged', 'present_kept', 'n_present', 'n_absent'} over
    every labelled sound's top-k image hits among the split's pictures (exact search, own pair included)."""
    where = pick_device(device)
    model, config, meta = load_model(checkpoint, map_location=where)
    clips = read_dataset(Path(data_dir), split).clips
    image, audio, kept = encode_split(model, clips, config, where)
    similarity = (audio.vector @ image.vector.T).numpy()
    presence = model.presence_matrix(audio, image).numpy()
    positions = np.arange(len(kept))  # the whole split as one block
    present, absent = presence_pairs(kept, [(positions, presence, similarity)], top_k=k)
    by_retrieval = presence_pairs(kept, [(positions, similarity, similarity)], top_k=k)
    cut = meta.get("presence_cut")
    return {"auroc": presence_auroc(present, absent), "auroc_retrieval_score": presence_auroc(*by_retrieval),
            "cut": cut, "n_present": int(present.size), "n_absent": int(absent.size),
            "absent_flagged": None if cut is None else float(np.mean(absent <= cut)),
            "present_kept": None if cut is None else float(np.mean(present > cut))}


@torch.no_grad()
def encode_split(model: torch.nn.Module, clips: list, config, device: torch.device, num_workers: int = 2):
    """(ImageSide, AudioSide, the clips that decoded) of every clip, each side one batch over the whole split."""
    loader = make_loader(ClipDataset(clips, config.data), 32, num_workers=num_workers, device=device)
    images, audios, positions = [], [], []
    for batch in iter_embeddings(model, loader, device):
        if batch.image is not None:
            images.append(batch.image)
            audios.append(batch.audio)
            positions.append(batch.indices.numpy())
    return concatenate_sides(images), concatenate_sides(audios), [clips[int(p)] for p in np.concatenate(positions)]


def concatenate_sides(sides: list):
    """One ImageSide / AudioSide from a list of batches (tensor fields concatenated, the grid kept)."""
    first = sides[0]
    return type(first)(**{name: (torch.cat([getattr(side, name) for side in sides])
                                 if isinstance(value, torch.Tensor) else value)
                          for name, value in vars(first).items()})


@click.command(help="How a checkpoint's presence score and cut do on its top-k search hits over a split.")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True)
@click.option("-k", "k", default=10, show_default=True)
@click.option("--device", default=None)
def main(checkpoint: Path, data_dir: Path, split: str, k: int, device: str | None) -> None:
    result = hit_presence(checkpoint, data_dir, split, k, device)
    click.echo(f"{checkpoint} on {split}, top-{k} hits: {result['n_present']} present, {result['n_absent']} absent; "
               f"presence AUROC {result['auroc']:.3f} (retrieval score alone {result['auroc_retrieval_score']:.3f})")
    if result["cut"] is not None:
        click.echo(f"cut {result['cut']:.4f}: {100 * result['absent_flagged']:.1f} % of absent hits marked 'source not "
                   f"visible', {100 * result['present_kept']:.1f} % of present hits kept")


if __name__ == "__main__":
    main()
