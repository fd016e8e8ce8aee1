"""Score one checkpoint's map variants on a split, by scene kind: how the settings that only change inference
(the map choice, the fusion exponent, the slot-logit scale, IQR's alpha) move AP50, from one encoding pass.

This is how the `real` preset's map was chosen on realsound *val* (docs/realsound.md); test is scored once, by
`jsar eval reproduce`.

    jsar eval map-variants runs/real/best.pt data/realsound --split val
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from jsa_retrieval.clips import Clip, read_dataset
from jsa_retrieval.collect import split_presence_targets
from jsa_retrieval.inference import pick_device
from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.maps import upsample_and_normalise
from jsa_retrieval.metrics import ap50, ciou, presence_auroc, presence_scores, threshold_map, vggss_gt_map

from .localization import EVAL_SIZE, group_value
from .presence import encode_split

SCENE_FIELD = "silent_object_in_view"


@dataclass(frozen=True)
class MapVariant:
    """A name and the model fields it sets for scoring (`iqr_alpha` set: the refined map of Eq. 14)."""

    name: str
    settings: tuple[tuple[str, object], ...]
    iqr_alpha: float | None = None


def default_variants(with_location_head: bool) -> list[MapVariant]:
    """The paper's map at logit scale 1 and 0.1, IQR at alpha 0.6 / 0.4, and with a location head the location
    map and the fused map for beta 0.5 / 1 / 2 at both scales."""
    variants = [MapVariant(f"cross x{scale}", (("localization_map", "cross"), ("infer_logit_scale", scale)))
                for scale in (1.0, 0.1)]
    variants += [MapVariant(f"IQR alpha {alpha}", (("localization_map", "cross"), ("infer_logit_scale", 1.0)),
                            alpha) for alpha in (0.6, 0.4)]
    if with_location_head:
        variants.append(MapVariant("location", (("localization_map", "location"),)))
        variants += [MapVariant(f"fused beta {beta} x{scale}", (("localization_map", "fused"), ("fusion_beta", beta),
                                                               ("infer_logit_scale", scale)))
                     for beta in (0.5, 1.0, 2.0) for scale in (1.0, 0.1)]
    return variants


@torch.no_grad()
def score_variants(checkpoint: str | Path, clips: Sequence[Clip], device: str | None = None,
                   variants: Sequence[MapVariant] | None = None, num_workers: int = 2) -> dict:
    """{'variants': {name: {'all', scene values...: AP50}}, 'presence_auroc', 'n', 'n_by_scene'} at the fixed 0.6
    threshold, every variant computed from the same encoded sides."""
    where = pick_device(device)
    model, config, _ = load_model(checkpoint, map_location=where)
    image, audio, kept = encode_split(model, clips, config, where, num_workers)
    presence = model.presence_matrix(audio, image).numpy()  # every sound against every picture of the split
    scenes = np.array([group_value(clip, SCENE_FIELD) for clip in kept])
    truths = [vggss_gt_map(clip.boxes, EVAL_SIZE) for clip in kept]
    variants = variants or default_variants(image.location_keys is not None)
    results = {}
    for variant in variants:
        scored = copy.deepcopy(model)
        for name, value in variant.settings:
            setattr(scored.config.model, name, value)
        coarse = (scored.refined_map(audio, image, variant.iqr_alpha) if variant.iqr_alpha is not None
                  else scored.cross_map(audio, image))
        full = upsample_and_normalise(coarse, EVAL_SIZE).numpy()
        cious = np.array([ciou(threshold_map(m, "fixed"), truth) for m, truth in zip(full, truths)])
        results[variant.name] = {"all": ap50(cious), **{value: ap50(cious[scenes == value])
                                                        for value in sorted(set(scenes.tolist()))}}
    present, absent = presence_scores(presence, split_presence_targets(kept))
    return {"variants": results, "presence_auroc": presence_auroc(present, absent) if absent.size else None,
            "n": len(kept), "n_by_scene": {value: int((scenes == value).sum()) for value in sorted(set(scenes.tolist()))}}


def boxed_clips(data_dir: str | Path, split: str) -> list[Clip]:
    """The clips of `split` with ground-truth boxes: the ones a variant's AP50 can score."""
    return [clip for clip in read_dataset(Path(data_dir), split).clips if clip.boxes is not None and len(clip.boxes)]


def variants_table(report: dict, checkpoint: str | Path, split: str) -> str:
    """`score_variants`' report as the plain-text table `jsar eval map-variants` prints: AP50 % per variant,
    overall and by scene kind, then the presence AUROC."""
    scenes = list(report["n_by_scene"])
    lines = [f"{checkpoint} on {split}: {report['n']} clips ({report['n_by_scene']}); AP50 % at 0.6",
             f"{'variant':<24} {'all':>6} " + " ".join(f"{SCENE_FIELD}={scene:>6}" for scene in scenes)]
    lines += [f"{name:<24} {100 * values['all']:6.1f} "
              + " ".join(f"{100 * values[scene]:{len(SCENE_FIELD) + 7}.1f}" for scene in scenes)
              for name, values in report["variants"].items()]
    if report["presence_auroc"] is not None:
        lines.append(f"presence AUROC {report['presence_auroc']:.3f}")
    return "\n".join(lines)
