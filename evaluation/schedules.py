"""Each method's own training schedule, chosen on val before the table is scored.

A comparison where a baseline stops on the schedule chosen for JSA, still descending, says nothing about the
baseline. So each method (JSA, EZ-VSL, alignment, JSA + maps that listen) trains once per learning rate of a
ladder and per seed of the table, every run with the same epoch cap, the same early stop on val
(`train.patience`) and the same wall-clock cap; the learning rate whose best val score (the trainer's
`selection_score`, which also picks best.pt), averaged over the seeds, is highest is that method's schedule; a
tie goes to the earlier rate of the ladder. JSA's ablations train with JSA's. Nothing here looks at the test split.

Why every seed: chosen at one seed, a margin of 0.005 picked JSA's rate on realsound (seed 0: 1.0375 at
5e-4 against 1.0425 at 1.5e-3; maps that listen, which then trained at JSA's rate, score 1.3200 at both), while
one rate's val score moves by up to 0.085 from seed to seed. Over the table's seeds the choice costs the other
rates' runs at the other seeds; the chosen rate's runs are the table's rows, not trained again.

The runs live in OUT/schedule/<method>/lr<lr>/seed<N>/ (resumable like every experiment run) and the choice in
OUT/schedule/schedules.json; a method's chosen run at a seed is that seed's row, not trained twice.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

from jsa_retrieval.checkpoints import read_checkpoint
from jsa_retrieval.config import JSARConfig
from jsa_retrieval.files import write_atomically

logger = logging.getLogger(__name__)

SCHEDULE_FILE = "schedules.json"
SCORE_TIE = 1e-9
"""Val selection scores are sums of count ratios: scores closer than this differ only by float rounding."""


@dataclass(frozen=True)
class Schedule:
    """A method's chosen learning rate, its val selection score averaged over the seeds, and its runs."""

    run_name: str  # the experiment run (evaluation.experiment.RUNS) the ladder trains
    seeds: tuple[int, ...]  # the seeds every rate was trained at
    lr: float
    val_score: float  # mean over `seeds` of the chosen rate's best val selection score
    epochs: dict[int, int]  # seed -> epochs its chosen run trained
    best_epoch: dict[int, int | None]  # seed -> its chosen run's best epoch (1-based)
    run_dirs: dict[int, str]  # seed -> the chosen rate's run folder at that seed: the table's row
    tried: dict[str, float]  # lr (as text) -> mean over seeds of its runs' best val selection scores
    tried_by_seed: dict[str, dict[int, float]]  # lr (as text) -> seed -> that run's best val selection score


def schedule_config(base: JSARConfig, lr: float, patience: int) -> JSARConfig:
    """A copy of `base` training at `lr` with early stop after `patience` epochs without a better val score."""
    config = JSARConfig.from_dict(base.to_dict())
    config.train.lr, config.train.patience = float(lr), int(patience)
    return config


def lr_name(lr: float) -> str:
    """A folder-safe, exact name for a learning rate: 0.0005 -> '5e-04'."""
    return f"{lr:.0e}" if float(f"{lr:.0e}") == lr else repr(float(lr))


class LadderRun(NamedTuple):
    """One finished run of a ladder: `best_val_score`'s three numbers and its folder."""

    score: float
    epochs: int
    best_epoch: int | None
    run_dir: Path


def best_val_score(run_dir: Path) -> tuple[float, int, int | None]:
    """(best val selection score, epochs trained, best epoch) of a finished run, from its last.pt."""
    meta = read_checkpoint(run_dir / "last.pt").get("meta") or {}
    history = meta.get("history", [])
    best = read_checkpoint(run_dir / "best.pt")
    return float(meta["best_score"]), len(history), int(best["epoch"]) + 1


def mean_scores(scores_by_seed: dict[str, dict[int, float]]) -> dict[str, float]:
    """{rate: {seed: val score}} -> {rate: the mean over its seeds}, in the ladder's order."""
    return {name: sum(by_seed.values()) / len(by_seed) for name, by_seed in scores_by_seed.items()}


def chosen_rate(scores: dict[str, float]) -> str:
    """The rate (a key of `scores`, in the ladder's order) with the best val score; scores equal up to float
    rounding are a tie, and a tie goes to the earlier rate of the ladder."""
    best = max(scores.values())
    return next(name for name, score in scores.items() if score >= best - SCORE_TIE)


def choose_schedules(data_dir: Path, out_dir: Path, base: JSARConfig, run_names: Sequence[str],
                     lrs: Sequence[float], seeds: Sequence[int], patience: int, max_minutes: float | None,
                     device: str | None = None, progress: bool = True) -> dict[str, Schedule]:
    """Train every run of `run_names` (names from evaluation.experiment.RUNS) once per learning rate in `lrs` and
    seed in `seeds` (at `base`'s epoch cap and `max_minutes`, early stop after `patience`) and return
    {run_name: its Schedule}: the rate with the best val score averaged over the seeds. Written to
    OUT/schedule/schedules.json. Finished runs are reused, interrupted ones resume."""
    from .experiment import RUNS, train_run  # the experiment's runner; imported here to keep one way to train

    if not lrs:
        raise ValueError("the learning-rate ladder is empty")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"the ladder needs distinct seeds, got {list(seeds)}")
    if patience < 1:
        raise ValueError(f"patience must be at least 1 epoch, got {patience}")
    folder = Path(out_dir) / "schedule"
    schedules: dict[str, Schedule] = {}
    for run_name in run_names:
        spec = RUNS[run_name]
        runs: dict[str, dict[int, LadderRun]] = {}
        for lr in lrs:
            for seed in seeds:
                run_dir = folder / run_name / f"lr{lr_name(lr)}" / f"seed{seed}"
                config = spec.configure(schedule_config(base, lr, patience), seed, None)
                train_run(spec, Path(data_dir), run_dir, config, max_minutes, device, progress)
                run = runs.setdefault(lr_name(lr), {})[seed] = LadderRun(*best_val_score(run_dir), run_dir)
                logger.info("schedule %s lr %s seed %d: best val score %.4f at epoch %s of %d", run_name,
                            lr_name(lr), seed, run.score, run.best_epoch, run.epochs)
        tried_by_seed = {name: {seed: run.score for seed, run in by_seed.items()} for name, by_seed in runs.items()}
        tried = mean_scores(tried_by_seed)
        chosen_name = chosen_rate(tried)
        chosen = runs[chosen_name]
        schedules[run_name] = Schedule(
            run_name, tuple(seeds), float(next(lr for lr in lrs if lr_name(lr) == chosen_name)), tried[chosen_name],
            {seed: run.epochs for seed, run in chosen.items()}, {seed: run.best_epoch for seed, run in chosen.items()},
            {seed: str(run.run_dir) for seed, run in chosen.items()}, tried, tried_by_seed)
        logger.info("schedule %s: lr %s (val %s, mean over seeds %s)", run_name, chosen_name,
                    ", ".join(f"{name} {score:.4f}" for name, score in tried.items()), list(seeds))
    text = json.dumps({name: asdict(schedule) for name, schedule in schedules.items()}, indent=2)
    write_atomically(folder / SCHEDULE_FILE, lambda handle: handle.write(text.encode("utf-8")))
    return schedules
