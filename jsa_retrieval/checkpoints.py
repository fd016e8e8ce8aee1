"""Checkpoints, read and written in one place: the layout every writer uses (`checkpoint_state`), the atomic
write (`save_checkpoint`), the weights-only read (`read_checkpoint`) and the model rebuilt from it (`load_model`).
The trainer, the benchmarks and the search engine all go through these, so a checkpoint one writes the others
read."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import JSARConfig
from .files import file_sha256, write_atomically
from .models import create_model

CHECKPOINT_KEYS = ("model_name", "config", "model")


def checkpoint_state(model: nn.Module, config: JSARConfig, epoch: int = 0, meta: dict | None = None,
                     **training_state: dict) -> dict:
    """The one checkpoint layout every writer uses: model_name, config (a plain dict), model (state dict), epoch,
    meta, and for the trainer its optimizer / scaler / scheduler states. Only tensors, numbers, strings and
    plain containers, so `read_checkpoint` can load it with weights_only=True."""
    return {"model_name": model.model_name, "config": config.to_dict(), "model": model.state_dict(),
            "epoch": epoch, "meta": dict(meta or {}), **training_state}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` (keys: model_name, config, model, epoch, optimizer, meta, ...) to a temporary name in the
    same folder, fsynced, then renamed, so a crash never leaves a half-written file where a good one was."""
    write_atomically(path, lambda handle: torch.save(state, handle))


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint dict at `path`, loaded with `weights_only=True`: tensors, numbers, strings and plain
    containers only, so a checkpoint someone shares cannot run code on the machine that loads it (the service
    loads whatever an index names). A file holding other pickled objects is refused with a ValueError.
    """
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):
            raise ValueError(f"{path} holds pickled Python objects, not only tensors and plain data; jsar loads "
                             "checkpoints with weights_only=True and refuses it") from error
        raise ValueError(f"{path} is not a jsar checkpoint: torch.load failed ({_first_line(error)})") from error
    except Exception as error:  # torch raises several types for a file that is not a torch pickle
        raise ValueError(f"{path} is not a jsar checkpoint: torch.load failed ({_first_line(error)})") from error
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in CHECKPOINT_KEYS):
        raise ValueError(f"{path} is not a jsar checkpoint: expected a dict with keys {CHECKPOINT_KEYS}")
    return checkpoint


def load_training_state(path: Path) -> dict[str, Any]:
    """The full checkpoint dict, optimizer and scheduler states included, for `--resume` (weights_only loading,
    see `read_checkpoint`)."""
    return read_checkpoint(path)


def _first_line(error: BaseException) -> str:
    """torch's load errors span paragraphs; the CLI prints one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, JSARConfig, dict]:
    """Rebuild a model from a jsar checkpoint dict; returns (model in eval mode on map_location, config, meta)."""
    checkpoint = read_checkpoint(path, map_location)
    config = JSARConfig.from_dict(checkpoint["config"])
    model = create_model(config, checkpoint["model_name"], image_weights="none", audio_weights="none")
    model.load_state_dict(checkpoint["model"])
    meta = dict(checkpoint.get("meta") or {})
    meta.setdefault("epoch", checkpoint.get("epoch"))
    return model.to(map_location).eval(), config, meta


def checkpoint_short_sha(path: str | Path) -> str:
    """First 16 hex characters of the checkpoint file's SHA-256: the `checkpoint_sha` reports give a model.
    ("fingerprint" is kept for a store's model identity: the hash of this SHA-256, the config and model name.)"""
    return file_sha256(path)[:16]
