"""A frozen image trunk's output, computed once per clip and kept on disk, so training skips the trunk.

With `freeze_image='all'` the trunk (e.g. ImageNet EfficientNet-Lite0) never changes, yet at 224 px it costs more
CPU time than the rest of the model together (45 images/s on 2 cores). Its output for every clip is computed once,
in two views (the test transform and its mirror image; training draws one of them), stored in float16 under the
user's cache folder keyed by the trunk, the image size and the image files, and reused by every later run on the
same clips: the seeds and ablations of an experiment pay for it once.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from tqdm import tqdm

from jsa_retrieval.clips import Clip
from jsa_retrieval.config import JSARConfig
from jsa_retrieval.dataset import ClipDataset, make_loader

from .checkpoint import save_checkpoint

log = logging.getLogger(__name__)
CACHE_VIEWS = 2  # the test transform and its horizontal flip


def default_cache_dir() -> Path:
    """$JSAR_CACHE, else $XDG_CACHE_HOME/jsar, else ~/.cache/jsar; trunk features go in its trunk-features/."""
    root = os.environ.get("JSAR_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jsar"
    return Path(root) / "trunk-features"


def cache_key(clips: Sequence[Clip], config: JSARConfig, grid: int) -> str:
    """Hash of what decides the features: trunk, its weights, the image size, the trunk's output grid, and each
    image file's path, size and modification time."""
    digest = hashlib.sha256()
    model = config.model
    digest.update(f"{model.image_encoder}|{model.image_weights}|{model.encoder_width}|{model.image_layer4_stride}|"
                  f"{config.data.image_size}|{grid}|{CACHE_VIEWS}".encode())
    for clip in clips:
        stat = Path(clip.image).stat()
        digest.update(f"|{Path(clip.image).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


@torch.no_grad()
def compute_trunk_features(trunk: nn.Module, clips: Sequence[Clip], config: JSARConfig, device: torch.device,
                           batch_size: int = 64, num_workers: int = 2, progress: bool = True) -> torch.Tensor:
    """(N, 2, C, h, w) float16 trunk output for each clip: view 0 the test transform, view 1 its mirror image.

    A clip that fails to decode gets zeros (the training dataset reports it when it reads the audio anyway).
    """
    trunk.eval()
    loader = make_loader(ClipDataset(clips, config.data), batch_size, num_workers=num_workers, device=device)
    features = None
    for batch in tqdm(loader, desc="image trunk features (once)", disable=not progress, leave=False):
        if "image" not in batch:
            continue
        images = batch["image"].to(device)
        views = torch.stack([trunk(images), trunk(images.flip(-1))], dim=1).half().cpu()
        if features is None:
            features = torch.zeros(len(clips), *views.shape[1:], dtype=torch.float16)
        features[batch["index"]] = views
    if features is None:
        raise ValueError("no clip could be decoded to compute image trunk features")
    return features


def cached_trunk_features(trunk: nn.Module, clips: Sequence[Clip], config: JSARConfig, device: torch.device,
                          cache_dir: Path | None = None, num_workers: int = 2, progress: bool = True,
                          write: bool = True) -> torch.Tensor:
    """The features of `compute_trunk_features`, read from `cache_dir` when a run on the same clips made them,
    else computed and (when `write`) stored there atomically."""
    grid = trunk.output_size(config.data.image_size)
    path = Path(cache_dir or default_cache_dir()) / f"{cache_key(clips, config, grid)}.pt"
    if path.is_file():
        try:
            features = torch.load(path, map_location="cpu", weights_only=True)["features"]
            if len(features) == len(clips) and tuple(features.shape[-2:]) == (grid, grid):
                log.info("image trunk features of %d clips read from %s", len(clips), path)
                return features
        except Exception as error:  # a damaged cache file is recomputed, never trusted
            log.warning("ignoring unreadable trunk-feature cache %s (%s)", path, error)
    features = compute_trunk_features(trunk, clips, config, device, num_workers=num_workers, progress=progress)
    if write:
        save_checkpoint(path, {"features": features})
        log.info("image trunk features of %d clips cached in %s", len(clips), path)
    return features
