"""Checkpoints: written to a temporary name in the same folder, fsynced, then renamed, so a crash never
leaves a half-written file where a good one was."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from jsa_retrieval.files import write_atomically
from jsa_retrieval.models import read_checkpoint


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write `state` (keys: model_name, config, model, epoch, optimizer, meta, ...)."""
    write_atomically(path, lambda handle: torch.save(state, handle))


def load_training_state(path: Path) -> dict[str, Any]:
    """The full checkpoint dict, optimizer and scheduler states included, for `--resume` (weights_only loading,
    see `read_checkpoint`)."""
    return read_checkpoint(path)
