"""A frozen audio trunk's output (YAMNet), computed once per clip and kept on disk, so training skips the trunk.

With `freeze_audio='all'` the trunk never changes, yet it is most of a training step's CPU time. Its output is
computed once per clip over a *wide* window, the centred `audio_seconds` plus the training jitter on each side,
and training takes a random run of the model's t tokens from it (the centre run for validation): the audio jitter
becomes a shift by whole tokens (YAMNet's 0.32 s), up to the jitter either way. Tokens near the wide window's
edges see a little more context than a window of their own would; validation and every later encoding (index,
query, evaluation) run the trunk on the plain window.

Kept beside the image trunk's cache (`trunk_cache.default_cache_dir`): `<key>-audio.npy` (N, C, f, T_wide)
float16 and `<key>-audio.json` (clip count, input version, the clips whose audio could not be decoded). The key covers the
trunk's kind and weights' content, every audio setting, `AUDIO_INPUT_VERSION` and each audio file's signature.
Written under a temporary name and renamed, so a killed run never leaves a cache a later run trusts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from jsa_retrieval.clips import Clip
from jsa_retrieval.config import DataConfig, JSARConfig
from jsa_retrieval.dataset import CachedAudioFeatures, FailureLog, make_loader
from jsa_retrieval.decode import DecodeError, load_audio
from jsa_retrieval.transforms import crop_or_tile, log_spectrogram

from .trunk_cache import (RowWriter, _write_atomically, default_cache_dir, failed_positions, file_signature,
                          load_part, weights_digest)

log = logging.getLogger(__name__)
AUDIO_INPUT_VERSION = 1  # bump whenever decoding or the spectrogram that makes trunk input changes


def wide_samples(config: DataConfig) -> int:
    """Samples of the wide window: the centred `audio_seconds` and `train_audio_jitter` on each side."""
    return config.num_samples + 2 * int(round(config.train_audio_jitter * config.sample_rate))


def audio_cache_key(clips: Sequence[Clip], config: JSARConfig, weights: str) -> str:
    """Hash of what decides the features: trunk, its weights' digest, every audio setting, the input code's
    version and each audio file's `file_signature`."""
    digest = hashlib.sha256()
    data = config.data
    digest.update(f"{AUDIO_INPUT_VERSION}|{config.model.audio_encoder}|{weights}|{data.sample_rate}|"
                  f"{data.audio_seconds}|{data.train_audio_jitter}|{data.n_fft}|{data.win_length}|"
                  f"{data.hop_length}|{data.log_offset}|{data.log_scale}".encode())
    for clip in clips:
        digest.update(f"|{file_signature(clip.audio)}".encode())
    return digest.hexdigest()[:24]


class WideWindows(Dataset):
    """Each clip's wide-window spectrogram (1, F, T_wide); an unreadable file is a failure item."""

    def __init__(self, clips: Sequence[Clip], config: DataConfig):
        self.clips, self.config, self.length = list(clips), config, wide_samples(config)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.clips[index]
        try:
            samples = load_audio(clip.audio, self.config.sample_rate)
        except DecodeError as error:
            return {"failed": (clip.id, str(error)), "index": index}
        return {"index": index, "audio": log_spectrogram(crop_or_tile(samples, self.length, None), self.config)}


@torch.no_grad()
def compute_audio_features(trunk: nn.Module, clips: Sequence[Clip], config: JSARConfig, device: torch.device,
                           path: Path, batch_size: int = 32, num_workers: int = 2,
                           progress: bool = True) -> dict[int, str]:
    """Run the trunk once over every clip's wide window and write (N, C, f, T_wide) float16 rows to `path` as each
    batch is done. Returns the clips whose audio could not be decoded (position -> reason)."""
    trunk.eval()
    loader = make_loader(WideWindows(clips, config.data), batch_size, num_workers=num_workers, device=device)
    failures, writer = FailureLog(), None
    try:
        for batch in tqdm(loader, desc="audio trunk features (once)", disable=not progress, leave=False):
            failures.add(batch)
            if "audio" not in batch:
                continue
            features = trunk(batch["audio"].to(device)).half().cpu().numpy()  # (B, C, f, T_wide)
            if writer is None:
                writer = RowWriter(path, (len(clips), *features.shape[1:]))
            writer.write(batch["index"].numpy(), features)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError(f"none of the {len(clips)} recordings could be decoded to compute audio trunk features "
                         f"({failures.summary()})")
    return failed_positions(clips, failures)


def cached_audio_features(trunk: nn.Module, clips: Sequence[Clip], config: JSARConfig, device: torch.device,
                          tokens: int, cache_dir: Path | None = None, num_workers: int = 2, progress: bool = True,
                          write: bool = True) -> CachedAudioFeatures:
    """The trunk's wide-window features of `clips`, memory-mapped from `cache_dir` when a run on the same clips
    made them, else computed once and stored there atomically; `tokens` is the model's t, the run each item
    takes. With `write=False` (a rank that is not the first) they are computed into a temporary folder that
    lives as long as the result."""
    key = audio_cache_key(clips, config, weights_digest(trunk))
    folder = Path(cache_dir or default_cache_dir())
    stem = folder / f"{key}-audio"
    found = _read_cache(stem, len(clips), tokens)
    keep_alive = None
    if found is None:
        if not write:
            keep_alive = tempfile.TemporaryDirectory(prefix="jsar-audio-trunk-")
            stem = Path(keep_alive.name) / stem.name
        found = _compute(trunk, clips, config, device, stem, num_workers, progress)
        log.info("audio trunk features of %d clips cached in %s (%s)", len(clips), stem.parent, key)
    else:
        log.info("audio trunk features of %d clips read from %s (%s)", len(clips), folder, key)
    array, failures = found
    features = CachedAudioFeatures(array, tokens, failures)
    features.keep_alive = keep_alive
    if failures:
        log.warning("%d of %d clips have no audio trunk features and are skipped (first: %s)",
                    len(failures), len(clips), next(iter(failures.values())))
    return features


def _compute(trunk: nn.Module, clips: Sequence[Clip], config: JSARConfig, device: torch.device, stem: Path,
             num_workers: int, progress: bool) -> tuple[np.ndarray, dict[int, str]]:
    """Compute under a temporary name, rename the array into place, then its .json (the mark of a whole part)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    temporary = stem.with_name(f".{stem.name}.{os.getpid()}.tmp.npy")
    try:
        failures = compute_audio_features(trunk, clips, config, device, temporary, num_workers=num_workers,
                                          progress=progress)
        os.replace(temporary, stem.with_suffix(".npy"))
        meta = {"clips": len(clips), "version": AUDIO_INPUT_VERSION,
                "failures": {str(position): reason for position, reason in sorted(failures.items())}}
        _write_atomically(stem.with_suffix(".json"), json.dumps(meta))
    finally:
        temporary.unlink(missing_ok=True)
    return np.load(stem.with_suffix(".npy"), mmap_mode="r"), failures


def _read_cache(stem: Path, count: int, tokens: int) -> tuple[np.ndarray, dict[int, str]] | None:
    """The cached (memory-mapped array, failures) when complete and of the expected shape, else None."""
    loaded = load_part(stem)
    if loaded is None:
        return None
    meta, array = loaded
    if meta.get("clips") != count or array.ndim != 4 or array.shape[0] != count or array.shape[-1] < tokens:
        log.warning("ignoring audio trunk-feature cache %s of shape %s (expected %d clips, at least %d tokens)",
                    stem, array.shape, count, tokens)
        return None
    return array, {int(position): reason for position, reason in meta["failures"].items()}
