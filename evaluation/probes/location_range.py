"""Probe (not shipped): how wide is a trained location head's cosine c over a picture, for matched and mismatched
pairs? Answer (seed-0 `real` checkpoint, realsound val, first 120 clips): the range of [c]+ over a matched picture
is at least 0.065 (1st percentile 0.12, median 0.31); over mismatched pictures it reaches 0. It set
models.FLAT_LOCATION_RANGE = 0.05 below every matched pair. Feeds docs/realsound.md, "Maps that listen".

    python -m evaluation.probes.location_range runs/<run>/best.pt data/realsound
"""
import sys

import numpy as np
import torch

from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.clips import read_dataset
from jsa_retrieval.dataset import load_pair
ckpt, data = sys.argv[1], sys.argv[2]
model, config, _ = load_model(ckpt); model.eval()
clips = read_dataset(data, split="val").clips[:120]
imgs, auds = zip(*[load_pair(c, config.data) for c in clips])
with torch.no_grad():
    im = model.encode_image(torch.stack(imgs)); au = model.encode_audio(torch.stack(auds))
    c = torch.einsum("jxd,id->ijx", im.location_keys, au.location_query)  # (A, I, hw)
rng = (c.amax(-1) - c.amin(-1)).numpy(); pos = c.clamp_min(0); prng = (pos.amax(-1) - pos.amin(-1)).numpy()
diag = np.eye(len(clips), dtype=bool)
for name, r in (("range c", rng), ("range [c]+", prng)):
    for sel, label in ((diag, "matched"), (~diag, "mismatched")):
        v = r[sel]; print(f"{name:10s} {label:10s} pct 0/1/5/50: " + " ".join(f"{np.percentile(v,q):.3f}" for q in (0,1,5,50)))
print("peak c matched median", float(c.amax(-1).numpy()[diag].mean()))
