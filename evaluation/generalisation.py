"""Generalisation where users meet it: the same checkpoints scored on several splits side by side (realsound's
`test`, whose sounds and photos are instances training saw, and `unseen`, new instances of known classes).

Per checkpoint and split, from one model pass over the split (`collect_outputs`): class Recall@1/10 both ways
over the whole split, AP50 at the fixed 0.6 threshold overall and by scene kind (`silent_object_in_view`), and the
AUROC of the model's presence score on each sound's top-k hits over the whole split's sound x picture matrix
(`scoring.score_outputs`, the rule of `evaluation.presence`: present = the picture's sounding object is the sound's
class, absent = no object of that class in the picture).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.clips import read_dataset
from jsa_retrieval.collect import collect_outputs, presence_reference
from jsa_retrieval.files import write_atomically
from jsa_retrieval.inference import pick_device
from jsa_retrieval.metrics import PresenceMix

from .localization import iqr_alpha_for
from .scoring import score_outputs

GROUP_FIELD = "silent_object_in_view"


@dataclass
class SplitScores:
    """One checkpoint on one split; percentages in [0, 100], AUROC in [0, 1]."""

    checkpoint: str
    split: str
    n_clips: int
    recall: dict[str, dict[int, float]]
    ap50: float | None
    ap50_by_group: dict[str, float] = field(default_factory=dict)
    presence_auroc_hits: float | None = None
    n_hits: tuple[int, int] = (0, 0)


@dataclass
class GeneralisationReport:
    data_dir: str
    k: int
    rows: list[SplitScores] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"data_dir": self.data_dir, "k": self.k, "rows": [asdict(row) for row in self.rows]}

    def to_markdown(self, labels: dict[str, str] | None = None) -> str:
        labels = labels or {}
        lines = [f"Data: {self.data_dir}; AP50 at the fixed 0.6 threshold; presence AUROC over each sound's top-{self.k} "
                 "hits of the whole split.", "",
                 "| model | split | clips | A→I R@1 | A→I R@10 | I→A R@1 | I→A R@10 | AP50 | AP50 silent object in view "
                 "| AP50 one object | presence AUROC, hits |", "|" + "---|" * 11]

        def pct(value: float | None) -> str:
            return "–" if value is None else f"{value:.1f}"

        for row in self.rows:
            a2i, i2a = row.recall.get("audio_to_image", {}), row.recall.get("image_to_audio", {})
            lines.append(
                f"| {labels.get(row.checkpoint, row.checkpoint)} | {row.split} | {row.n_clips} | {pct(a2i.get(1))} | "
                f"{pct(a2i.get(10))} | {pct(i2a.get(1))} | {pct(i2a.get(10))} | {pct(row.ap50)} | "
                f"{pct(row.ap50_by_group.get('true'))} | {pct(row.ap50_by_group.get('false'))} | "
                f"{'–' if row.presence_auroc_hits is None else f'{row.presence_auroc_hits:.3f}'} |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path, labels: dict[str, str] | None = None) -> None:
        text = {"generalisation.json": json.dumps(self.to_dict(), indent=1), "generalisation.md": self.to_markdown(labels)}
        for name, body in text.items():
            write_atomically(out_dir / name, lambda handle, body=body: handle.write(body.encode()))


def score_split(checkpoint: str | Path, data_dir: Path, split: str, k: int = 10, device: str | None = None,
                num_workers: int = 2, progress: bool = True) -> SplitScores:
    """One checkpoint on one split (see the module docstring)."""
    clips = read_dataset(Path(data_dir), split).clips
    where = pick_device(device)
    model, config, meta = load_model(checkpoint, map_location=where)  # one read: model and meta
    outputs = collect_outputs(model, clips, config.data, where, 32, num_workers,
                              iqr_alpha_for(model, config), progress=progress,
                              presence=hasattr(model, "presence_matrix"), reference=presence_reference(meta, model, config.data, where))
    mix = PresenceMix.from_dict(meta.get("presence_mix"))
    scores = score_outputs(clips, outputs, ("fixed",), (1, 10), group_by=GROUP_FIELD, presence_hits=k,
                           presence_mix=mix)
    plain = scores.localization.get("fixed", {}).get("plain")
    groups = scores.localization_by_group.get("fixed", {})
    by_group = {str(value): 100 * columns["plain"].ap50 for value, columns in groups.items() if "plain" in columns}
    recall = {direction: {int(kk): 100 * value for kk, value in table.items()}
              for direction, table in (scores.retrieval or {}).items()}
    return SplitScores(str(checkpoint), split, len(clips), recall, None if plain is None else 100 * plain.ap50,
                       by_group, scores.presence_auroc_hits, scores.n_presence_hits)


def evaluate_generalisation(checkpoints: Sequence[str | Path], data_dir: str | Path,
                            splits: Sequence[str] = ("test", "unseen"), k: int = 10, device: str | None = None,
                            progress: bool = True) -> GeneralisationReport:
    """Every checkpoint on every split, one row each (`jsar eval generalisation`)."""
    report = GeneralisationReport(str(data_dir), k)
    for checkpoint in checkpoints:
        for split in splits:
            report.rows.append(score_split(checkpoint, Path(data_dir), split, k, device, progress=progress))
    return report
