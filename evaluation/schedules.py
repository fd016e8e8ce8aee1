"""Each method's own training schedule, chosen on val before the table is trained.

A comparison where a baseline stops on the schedule chosen for JSA, still descending, says nothing about the
baseline. So each method (JSA, EZ-VSL, alignment) trains once per learning rate of a ladder, every run with the
same epoch cap, the same early stop on val (`train.patience`) and the same wall-clock cap; the learning rate whose
best val score (the trainer's `selection_score`, which also picks best.pt) is highest is that method's schedule.
JSA's ablations train with JSA's. Nothing here looks at the test split.

The runs live in OUT/schedule/<method>/lr<lr>/ (resumable like every experiment run) and the choice in
OUT/schedule/schedules.json; a method's chosen run at the selection seed is that seed's row, not trained twice.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from jsa_retrieval.checkpoints import read_checkpoint
from jsa_retrieval.config import JSARConfig
from jsa_retrieval.files import write_atomically

logger = logging.getLogger(__name__)

SCHEDULE_FILE = "schedules.json"


@dataclass(frozen=True)
class Schedule:
    """A method's chosen learning rate, its val selection score, and where its selection run is."""

    model_name: str
    seed: int  # the seed the ladder was trained at
    lr: float
    val_score: float
    epochs: int
    best_epoch: int | None
    run_dir: str
    tried: dict[str, float]  # lr (as text) -> best val selection score of its run


def schedule_config(base: JSARConfig, lr: float, patience: int) -> JSARConfig:
    """A copy of `base` training at `lr` with early stop after `patience` epochs without a better val score."""
    config = JSARConfig.from_dict(base.to_dict())
    config.train.lr, config.train.patience = float(lr), int(patience)
    return config


def lr_name(lr: float) -> str:
    """A folder-safe, exact name for a learning rate: 0.0005 -> '5e-04'."""
    return f"{lr:.0e}" if float(f"{lr:.0e}") == lr else repr(float(lr))


def best_val_score(run_dir: Path) -> tuple[float, int, int | None]:
    """(best val selection score, epochs trained, best epoch) of a finished run, from its last.pt."""
    meta = read_checkpoint(run_dir / "last.pt").get("meta") or {}
    history = meta.get("history", [])
    best = read_checkpoint(run_dir / "best.pt")
    return float(meta["best_score"]), len(history), int(best["epoch"]) + 1


def choose_schedules(data_dir: Path, out_dir: Path, base: JSARConfig, model_names: Sequence[str],
                     lrs: Sequence[float], patience: int, max_minutes: float | None, device: str | None = None,
                     progress: bool = True) -> dict[str, Schedule]:
    """Train every method of `model_names` once per learning rate in `lrs` (at `base`'s seed, epoch cap and
    `max_minutes`, early stop after `patience`) and return {model_name: its Schedule}; written to
    OUT/schedule/schedules.json. Finished runs are reused, interrupted ones resume."""
    from .experiment import RUNS, train_run  # the experiment's runner; imported here to keep one way to train

    if not lrs:
        raise ValueError("the learning-rate ladder is empty")
    if patience < 1:
        raise ValueError(f"patience must be at least 1 epoch, got {patience}")
    folder = Path(out_dir) / "schedule"
    schedules: dict[str, Schedule] = {}
    for model_name in model_names:
        tried: dict[str, tuple[float, int, int | None, Path]] = {}
        for lr in lrs:
            run_dir = folder / model_name / f"lr{lr_name(lr)}"
            config = RUNS[model_name].configure(schedule_config(base, lr, patience), base.train.seed, None)
            train_run(RUNS[model_name], Path(data_dir), run_dir, config, max_minutes, device, progress)
            score, epochs, best_epoch = best_val_score(run_dir)
            tried[lr_name(lr)] = (score, epochs, best_epoch, run_dir)
            logger.info("schedule %s lr %s: best val score %.4f at epoch %s of %d", model_name, lr_name(lr), score,
                        best_epoch, epochs)
        chosen_name, (score, epochs, best_epoch, run_dir) = max(tried.items(), key=lambda item: item[1][0])
        chosen_lr = next(lr for lr in lrs if lr_name(lr) == chosen_name)
        schedules[model_name] = Schedule(model_name, base.train.seed, float(chosen_lr), score, epochs, best_epoch, str(run_dir),
                                         {name: values[0] for name, values in tried.items()})
    text = json.dumps({name: asdict(schedule) for name, schedule in schedules.items()}, indent=2)
    write_atomically(folder / SCHEDULE_FILE, lambda handle: handle.write(text.encode("utf-8")))
    return schedules
