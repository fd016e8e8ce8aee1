"""Probe (not shipped): does standardising each picture's scores over the split's sounds (its column of the sound x
picture matrix: a discount for pictures that score high with every sound) sort a search's top-10 hits better than
the checkpoint's presence mix? Answer (realsound, `real` JSA + maps that listen at 5e-4, seeds 0 / 1 / 2 of
docs/realsound.md's main table): yes, by about 0.03, not to the goal of 0.9. Top-10 hit AUROC on test with the
checkpoint's mix 0.840 / 0.852 / 0.838; with both scores column-standardised and mixed at the weight val chooses
(0.25 in every seed; val 0.873 / 0.895 / 0.879) 0.875 / 0.883 / 0.854, mean 0.871. Column-standardising alone:
presence 0.861 / 0.868 / 0.844, similarity 0.855 / 0.864 / 0.808. In a served index the column statistics would
have to be computed per picture against a reference set of sounds at index time; that is not built. Feeds the
closing note of issue 27 and docs/realsound.md ("Presence, whole split").

    python -m evaluation.probes.presence_columns runs/<run>/best.pt data/realsound
"""
import sys
from pathlib import Path

import numpy as np
import torch

from evaluation.presence import hit_presence_scores, split_matrices
from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.metrics import PRESENCE_MIX_LADDER, PresenceMix, mixed_presence


def column_standardised(matrix: np.ndarray) -> np.ndarray:
    """Each picture's column of an (A, I) matrix as z-scores over the sounds."""
    return (matrix - matrix.mean(axis=0, keepdims=True)) / (matrix.std(axis=0, keepdims=True) + 1e-8)


checkpoint, data = sys.argv[1], Path(sys.argv[2])
model, config, meta = load_model(checkpoint, map_location="cpu")
for split in ("val", "test"):
    presence, similarity, targets, _ = split_matrices(model, config, data, split, torch.device("cpu"))
    presence_z, similarity_z = column_standardised(presence), column_standardised(similarity)

    def auroc(scores: np.ndarray) -> float:
        return hit_presence_scores(scores, similarity, targets, 10, None)["auroc"]

    mixed = mixed_presence(presence, similarity, PresenceMix.from_dict(meta.get("presence_mix")))
    row = [f"checkpoint's mix {auroc(mixed):.3f}", f"presence, columns {auroc(presence_z):.3f}",
           f"similarity, columns {auroc(similarity_z):.3f}"]
    row += [f"columns mixed at {weight}: {auroc(PresenceMix.fitted(presence_z, similarity_z, weight)(presence_z, similarity_z)):.3f}"
            for weight in PRESENCE_MIX_LADDER[1:]]
    print(split, "top-10 hit AUROC,", ", ".join(row), flush=True)
