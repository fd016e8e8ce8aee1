"""Probe (not shipped): does mixing the retrieval similarity into the presence score sort a search's top-10 hits
better than the model's presence alone? Answer (realsound, `real` seed-0 checkpoints): for maps that listen, yes:
top-10 hit AUROC at similarity weights 0 / 0.25 / 0.5 / 0.75 / 1 is 0.778 / 0.798 / 0.810 / 0.809 / 0.789 on val
and 0.814 / 0.835 / 0.853 / 0.858 / 0.830 on test; for the alignment baseline its own peak cosine is best on val
(0.821 / 0.816 / 0.801 / 0.758 / 0.634; test 0.860 / 0.864 / 0.864 / 0.845 / 0.720); for JSA without a location
head presence is the similarity, so every weight scores alike. It set metrics.PRESENCE_MIX_LADDER and the
val-chosen `presence_mix` the trainer and `jsar calibrate-presence` record. Feeds docs/realsound.md.

    python -m evaluation.probes.presence_mix runs/<run>/best.pt data/realsound
"""
import sys
from pathlib import Path

import torch

from evaluation.presence import hit_presence_scores, split_matrices
from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.metrics import PresenceMix

checkpoint, data = sys.argv[1], Path(sys.argv[2])
model, config, _ = load_model(checkpoint, map_location="cpu")
for split in ("val", "test"):
    presence, similarity, targets, _ = split_matrices(model, config, data, split, torch.device("cpu"))
    row = [f"weight {weight}: {hit_presence_scores(mix(presence, similarity), similarity, targets, 10, None)['auroc']:.3f}"
           for weight in (0.0, 0.25, 0.5, 0.75, 1.0)
           for mix in [PresenceMix.fitted(presence, similarity, weight)]]
    print(split, "top-10 hit AUROC,", ", ".join(row), flush=True)
