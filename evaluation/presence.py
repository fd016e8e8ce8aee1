"""Source presence on what users see: each sound's top-k search hits over a whole split, scored by the model's
presence (model.presence_matrix) against the checkpoint's calibrated cut. A hit is present when its picture shows
the sound's class as the sounding object, absent when the picture holds no object of that class at all (pictures
that show the class only as a silent object are left out).

Every number comes from the whole split's sound x picture matrices (one collect pass), so it does not depend on
the batch size or on the clips' order.

    jsar eval presence runs/real/calibrated.pt data/realsound --split test -k 10
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.clips import Clip, read_dataset
from jsa_retrieval.collect import collect_outputs, presence_reference, split_presence_targets
from jsa_retrieval.models import AudioSide, ImageSide
from jsa_retrieval.dataset import ClipDataset, make_loader
from jsa_retrieval.inference import iter_embeddings, pick_device
from jsa_retrieval.metrics import (
    SERVED_HITS, PictureStats, PresenceMix, cut_rates, mixed_presence, presence_auroc, presence_scores, top_k_hits,
)


def hit_presence_scores(presence: np.ndarray, similarity: np.ndarray, targets: np.ndarray, k: int,
                        cut: float | None) -> dict:
    """{'auroc', 'auroc_retrieval_score', 'cut', 'absent_flagged', 'present_kept', 'n_present', 'n_absent'} of
    the (A, I) presence and retrieval-similarity matrices over each sound's top-k pictures (pure: arrays in)."""
    shown = top_k_hits(similarity, k)
    present, absent = presence_scores(presence, targets, shown)
    kept, flagged = (None, None) if cut is None else cut_rates(present, absent, cut)
    return {"auroc": presence_auroc(present, absent),
            "auroc_retrieval_score": presence_auroc(*presence_scores(similarity, targets, shown)),
            "cut": cut, "n_present": int(present.size), "n_absent": int(absent.size),
            "absent_flagged": flagged, "present_kept": kept}


@torch.no_grad()
def hit_presence(checkpoint: str | Path, data_dir: str | Path, split: str, k: int = SERVED_HITS,
                 device: str | None = None, batch_size: int = 32, num_workers: int = 2) -> dict:
    """`hit_presence_scores` over every labelled sound's top-k image hits among the split's pictures (exact
    search, own pair included), scored as the checkpoint's calibration says (its presence mix, when it records
    one), with its calibrated cut (None when it has none) and, when recorded, how it was calibrated
    ('calibration')."""
    where = pick_device(device)
    model, config, meta = load_model(checkpoint, map_location=where)
    raw, similarity, targets, pictures = split_matrices(model, config, Path(data_dir), split, where, batch_size,
                                                        num_workers, presence_reference(meta, model, config.data, where))
    presence = mixed_presence(raw, similarity, PresenceMix.from_dict(meta.get("presence_mix")), pictures)
    result = hit_presence_scores(presence, similarity, targets, k, meta.get("presence_cut"))
    return {**result, "calibration": meta.get("presence_calibration")}


@torch.no_grad()
def split_matrices(model: torch.nn.Module, config, data_dir: Path, split: str, device: torch.device,
                   batch_size: int = 32, num_workers: int = 2, reference: AudioSide | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, PictureStats | None]:
    """(raw presence, retrieval similarity, presence targets, each picture's statistics over the `reference`
    sounds or None without them): a split's whole (A, I) matrices over the clips that decoded, in one collect
    pass."""
    clips = read_dataset(data_dir, split).clips
    outputs = collect_outputs(model, clips, config.data, device, batch_size, num_workers, progress=False,
                              presence=True, reference=reference)
    targets = split_presence_targets([clips[int(p)] for p in outputs.positions])
    return (np.asarray(outputs.presence), outputs.audio_vectors @ outputs.image_vectors.T, targets,
            outputs.pictures)


@torch.no_grad()
def encode_split(model: torch.nn.Module, clips: list[Clip], config, device: torch.device, num_workers: int = 2):
    """(ImageSide, AudioSide, the clips that decoded) of every clip, each side one batch over the whole split."""
    loader = make_loader(ClipDataset(clips, config.data), 32, num_workers=num_workers, device=device)
    images, audios, positions = [], [], []
    for batch in iter_embeddings(model, loader, device):
        if batch.image is not None:
            images.append(batch.image)
            audios.append(batch.audio)
            positions.append(batch.indices.numpy())
    return ImageSide.cat(images), AudioSide.cat(audios), [clips[int(p)] for p in np.concatenate(positions)]


def presence_lines(result: dict, checkpoint: str | Path, split: str, k: int) -> str:
    """`hit_presence`'s result as the lines `jsar eval presence` prints."""
    lines = [f"{checkpoint} on {split}, top-{k} hits: {result['n_present']} present, {result['n_absent']} absent; "
             f"presence AUROC {result['auroc']:.3f} (retrieval score alone {result['auroc_retrieval_score']:.3f})"]
    if result["cut"] is not None:
        calibration = result["calibration"] or {}
        lines.append(f"cut {result['cut']:.4f} (calibrated on {calibration.get('split', '?')}, top-"
                     f"{calibration.get('top_k', '?')} hits): {100 * result['absent_flagged']:.1f} % of absent hits "
                     f"marked 'source not visible', {100 * result['present_kept']:.1f} % of present hits kept")
    return "\n".join(lines)
