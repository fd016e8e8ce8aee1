"""Checkpoints: written to a temporary name in the same folder, fsynced, then renamed, so a crash never
leaves a half-written file where a good one was."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from jsa_retrieval.models import read_checkpoint


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write `state` (keys: model_name, config, model, epoch, optimizer, meta, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load_training_state(path: Path) -> dict[str, Any]:
    """The full checkpoint dict, optimizer and scheduler states included, for `--resume` (weights_only loading,
    see `read_checkpoint`)."""
    return read_checkpoint(path)
