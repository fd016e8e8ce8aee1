"""Report figures that put several models' maps side by side on the same clips (the README's
docs/realsound_maps.png): each model runs once over the chosen clips through the collect stage, and the maps
are drawn by `jsa_retrieval.pictures.localization_grid`, ground truth outlined.

    jsar eval figures data/realsound docs/realsound_maps.png \\
        --model "JSA (paper)=runs/jsa/best.pt" --model "EZ-VSL=runs/ezvsl/best.pt" --field silent_object_in_view
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.clips import Clip
from jsa_retrieval.collect import collect_outputs
from jsa_retrieval.decode import load_image
from jsa_retrieval.inference import pick_device
from jsa_retrieval.maps import upsample_and_normalise
from jsa_retrieval.pictures import localization_grid
from jsa_retrieval.transforms import squash_image

from .localization import EVAL_SIZE, LocalizationExample, ground_truth_map, group_value, has_ground_truth


def pick_clips(clips: Sequence[Clip], count: int, field: str | None = None, value: str = "true") -> list[Clip]:
    """The first `count` clips with ground truth (and, with `field`, whose annotation `field` reads `value`),
    one per class where possible, so a figure shows different sounds."""
    chosen, classes = [], set()
    candidates = [clip for clip in clips if has_ground_truth(clip)
                  and (field is None or group_value(clip, field) == value)]
    for clip in candidates:
        if clip.label not in classes:
            chosen.append(clip)
            classes.add(clip.label)
        if len(chosen) == count:
            return chosen
    return (chosen + [clip for clip in candidates if clip not in chosen])[:count]


def compare_maps_figure(models: dict[str, str | Path], clips: Sequence[Clip], out_path: str | Path,
                        device: str | None = None) -> Path:
    """One row per clip: the frame with its ground truth, then each model's map (its configured map, the one
    jsar shows and scores). `models` maps a column label to a checkpoint."""
    where = pick_device(device)
    columns: dict[str, np.ndarray] = {}
    for label, checkpoint in models.items():
        model, config, _ = load_model(checkpoint, map_location=where)
        outputs = collect_outputs(model, clips, config.data, where, batch_size=16, num_workers=0, progress=False)
        if len(outputs.positions) != len(clips):
            raise ValueError(f"{len(clips) - len(outputs.positions)} of the chosen clips could not be decoded")
        columns[label] = upsample_and_normalise(outputs.plain, EVAL_SIZE).numpy()
    examples = [LocalizationExample(clip.id, squash_image(load_image(clip.image), EVAL_SIZE),
                                    ground_truth_map(clip, EVAL_SIZE).astype(np.float32), clip.gt_kind or "",
                                    {label: maps[row] for label, maps in columns.items()})
                for row, clip in enumerate(clips)]
    return localization_grid(examples, out_path)
