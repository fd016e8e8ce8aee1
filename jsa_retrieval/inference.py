"""Batched inference over a DataLoader: the one loop that trainer validation, indexing and evaluation share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader


@dataclass
class EmbeddedBatch:
    """One batch's outputs: dataset positions, both sides' encodings (on CPU), and the clips that failed."""

    indices: torch.Tensor
    images: torch.Tensor
    image: object  # ImageSide
    audio: object  # AudioSide
    failed: list[tuple[str, str]]


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` if given, else CUDA when available, else CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def iter_embeddings(model: nn.Module, loader: DataLoader, device: torch.device,
                    keep_images: bool = False) -> Iterator[EmbeddedBatch]:
    """Encode every batch of `loader` with `model` in eval mode; yields CPU tensors.

    Batches whose clips all failed still yield (with empty tensors) so callers can count failures.
    """
    model.eval()
    for batch in loader:
        if "image" not in batch:
            yield EmbeddedBatch(torch.zeros(0, dtype=torch.long), torch.zeros(0), None, None, batch["failed"])
            continue
        images = batch["image"].to(device, non_blocking=True)
        audio = batch["audio"].to(device, non_blocking=True)
        image_side = model.encode_image(images).to("cpu", torch.float32)
        audio_side = model.encode_audio(audio).to("cpu", torch.float32)
        yield EmbeddedBatch(batch["index"], batch["image"] if keep_images else torch.zeros(0),
                            image_side, audio_side, batch["failed"])

