"""The paper's comparison and ablations in one command: train every method under one budget, score on test.

Runs (`RUNS`): JSA with every loss (the full model), the EZ-VSL and alignment baselines, the loss ablations of
Table 5 (no L_match, no L_div, no false-negative mitigation) and the unshared initial slots of Table 6. All
start from the same config, seed and budget (epochs and/or minutes per run), so a difference in the table is
the method's, not the budget's. The trainer selects each best.pt on the *val* split; this module scores it
once on the *test* split: localization "cIoU" (AP50), mean cIoU and AUC (plain and, for JSA, +IQR) under two
threshold conventions (fixed 0.6 = JSA release; median = EZ-VSL / FNAC / SLAVC), and exact class-level
Recall@1/5/10 in both directions. Output: OUT/experiment.md (+ .csv, .json) in the layout of the paper's
Tables 1, 4, 5 and 6, with check-marks for L_match, L_div, FN mitigation and shared slots.

Each run trains in OUT/<run>/ and records its budget, config and wall-clock minutes in OUT/<run>/run.json, so
an interrupted experiment resumes: finished runs are skipped, a run cut short continues from its last.pt with
what is left of its minutes budget, and a folder trained under another config or budget is refused rather
than mixed into the table.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import jsa_retrieval
from jsa_retrieval.checkpoints import checkpoint_short_sha, load_model, read_checkpoint
from jsa_retrieval.clips import Clip, read_dataset
from jsa_retrieval.config import (ABLATIONS, GATED_METHOD, LISTENING_METHOD, PAPER_METHOD, JSARConfig,
                                  apply_settings, config_field, get_config)
from jsa_retrieval.files import write_atomically
from jsa_retrieval.inference import pick_device
from jsa_retrieval.machine import machine_info
from training.recipes import RECIPES
from training.trainer import split_train_val, train

from jsa_retrieval.collect import collect_outputs, presence_reference

from .localization import has_ground_truth, iqr_alpha_for
from jsa_retrieval.metrics import THRESHOLD_MODES, PresenceMix
from .reports import ARROWS, git_commit, markdown_table
from .schedules import Schedule, choose_schedules, schedule_config
from .scoring import score_outputs, summary_dict

logger = logging.getLogger(__name__)

KS = (1, 5, 10)
LOCALIZATION_KEYS = (("ap50", "cIoU (AP50)"), ("auc", "AUC"), ("mean_ciou", "mean cIoU"))
SCENE_COLUMNS = (("true", "AP50 silent object in view"), ("false", "AP50 one object"))
REPORTED_ABLATIONS = tuple(ablation for ablation in ABLATIONS if ablation.run)
"""The switches the report shows as check-mark columns: those an experiment run turns off."""
RUN_FILE = "run.json"


# --------------------------------------------------------------------------------------------------------------
# What is trained
# --------------------------------------------------------------------------------------------------------------

# PAPER_METHOD, LISTENING_METHOD and GATED_METHOD (jsa_retrieval.config) are the settings the runs below train with.


@dataclass(frozen=True)
class RunSpec:
    """One row of the experiment: a model and, for a method with ablation switches (JSA), which parts of it the
    run switches off (`ablated`, Tables 5-6).

    `settings` are further config fields the run trains with; `inference` are model fields changed only when
    scoring; a run with `checkpoint_of` trains nothing and scores that run's best.pt with its `inference`.
    A run with `schedule_of` trains at that run's val-chosen schedule (an ablation at its method's); any other
    trained run gets a schedule of its own (evaluation.schedules)."""

    name: str
    label: str
    model_name: str
    ablated: tuple[str, ...] = ()  # config fields of config.ABLATIONS this run switches off
    settings: tuple[tuple[str, Any], ...] = PAPER_METHOD
    inference: tuple[tuple[str, Any], ...] = ()
    checkpoint_of: str | None = None
    schedule_of: str | None = None

    def configure(self, base: JSARConfig, seed: int, epochs: int | None) -> JSARConfig:
        """A copy of `base` with this run's switches, the shared seed and the epoch cap.

        The method's switches are set explicitly (not and-ed with `base`), so "JSA (full)" is the full method
        whatever the base config says; methods without switches (the baselines) keep `base` as it is.
        """
        config = JSARConfig.from_dict(base.to_dict())
        config.train.seed = seed
        if epochs is not None:
            config.train.epochs = epochs
        switches = RECIPES[self.model_name].ablations
        if switches:
            apply_settings(config, [(switch.field, switch.field not in self.ablated) for switch in switches])
            apply_settings(config, self.settings)
        return config


RUNS: dict[str, RunSpec] = {spec.name: spec for spec in (
    RunSpec("jsa", "JSA (full)", "jsa"),
    RunSpec("ezvsl", "EZ-VSL", "ezvsl"),
    RunSpec("alignment", "Alignment", "alignment"),
    *(RunSpec(ablation.run, ablation.label, "jsa", ablated=(ablation.field,), schedule_of="jsa")
      for ablation in REPORTED_ABLATIONS),
    RunSpec("jsa_release_inference", "JSA, release inference (logits x 0.1, IQR alpha 0.4)", "jsa",
            inference=(("model.infer_logit_scale", 0.1), ("model.iqr_alpha", 0.4)), checkpoint_of="jsa"),
    RunSpec("jsa_listen", "JSA + maps that listen (ours)", "jsa", settings=LISTENING_METHOD),
    RunSpec("jsa_listen_logits1", "JSA + maps that listen, logit scale 1", "jsa", settings=LISTENING_METHOD,
            inference=(("model.infer_logit_scale", 1.0),), checkpoint_of="jsa_listen"),
    RunSpec("jsa_listen_location", "JSA + location head, its map c alone", "jsa", settings=LISTENING_METHOD,
            inference=(("model.localization_map", "location"),), checkpoint_of="jsa_listen"),
    RunSpec("jsa_gated", "JSA, audio-gated matching target", "jsa", settings=GATED_METHOD, schedule_of="jsa"),
)}
DEFAULT_RUNS: tuple[str, ...] = ("jsa", "ezvsl", "alignment", *(ablation.run for ablation in REPORTED_ABLATIONS))
"""The paper's comparison and ablations (Tables 1, 5, 6); JSA first, so that an experiment stopped early has the
main method's row. `jsar eval reproduce --runs` adds the others by name."""


# --------------------------------------------------------------------------------------------------------------
# Training stage (resumable)
# --------------------------------------------------------------------------------------------------------------

@dataclass
class TrainedRun:
    """A run's checkpoint and how it was obtained: status is 'trained', 'resumed', 'skipped' (finished
    earlier by run_experiment) or 'existing' (a best.pt from elsewhere; its budget could not be checked)."""

    spec: RunSpec
    run_dir: Path
    best_path: Path
    status: str
    train_seconds: float | None
    epochs_trained: int


def _canonical(values: Any) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def _write_state(path: Path, state: dict[str, Any]) -> None:
    """Atomic write, so a kill mid-write never leaves a run.json that blocks the resume."""
    text = json.dumps(state, indent=2, default=str)
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def _history_of(checkpoint: Path) -> list[dict]:
    state = read_checkpoint(checkpoint)
    return list((state.get("meta") or {}).get("history", []))


def train_run(spec: RunSpec, data_dir: Path, run_dir: Path, config: JSARConfig, max_minutes: float | None,
              device: str | None = None, progress: bool = True,
              on_epoch: Callable[[dict], None] | None = None) -> TrainedRun:
    """Train one run into `run_dir`, or pick up what an earlier call left there.

    run.json holds the config, the budget and the wall-clock seconds spent so far; the trainer's per-epoch
    hook updates it right after last.pt is saved (then calls `on_epoch`), so after a kill the ledger matches last.pt and a resumed
    run gets only the minutes its budget has left.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path, best_path, last_path = run_dir / RUN_FILE, run_dir / "best.pt", run_dir / "last.pt"
    budget = {"epochs": config.train.epochs, "max_minutes": max_minutes, "seed": config.train.seed}
    expected = {"model_name": spec.model_name, "config": config.to_dict(), "budget": budget}
    state = json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else None
    if state is None and best_path.is_file():
        logger.warning("%s: %s exists without %s; using it as is (budget not verified)", spec.name, best_path,
                       RUN_FILE)
        history = _history_of(last_path if last_path.is_file() else best_path)
        seconds = float(history[-1]["seconds"]) if history and "seconds" in history[-1] else None
        return TrainedRun(spec, run_dir, best_path, "existing", seconds, len(history))
    if state is not None and _canonical({key: state.get(key) for key in expected}) != _canonical(expected):
        raise ValueError(f"{run_dir} holds run {spec.name!r} trained under another config or budget; "
                         "use a fresh --out folder or delete that run folder")
    if state is not None and state.get("finished") and best_path.is_file():
        logger.info("%s: finished earlier, skipping (%s)", spec.name, best_path)
        return TrainedRun(spec, run_dir, best_path, "skipped", state["train_seconds"], state["epochs_trained"])

    spent = float(state["train_seconds"]) if state else 0.0
    resume = last_path.is_file()
    state = {**expected, "run": spec.name, "label": spec.label, "train_seconds": spent, "epochs_trained": 0,
             "finished": False}
    _write_state(state_path, state)
    remaining = None if max_minutes is None else max_minutes - spent / 60
    history: list[dict] = _history_of(last_path) if resume else []
    if remaining is None or remaining > 0:
        started = time.monotonic()

        def ledger(record: dict) -> None:
            state["train_seconds"] = round(spent + time.monotonic() - started, 1)
            _write_state(state_path, state)
            if on_epoch is not None:
                on_epoch(record)

        logger.info("%s: %s %s in %s", spec.name, "resuming" if resume else "training", spec.label, run_dir)
        result = train(data_dir, config, spec.model_name, run_dir, resume=resume, max_minutes=remaining,
                       device=device, progress=progress, on_epoch=ledger)
        state["train_seconds"] = round(spent + time.monotonic() - started, 1)
        history = result.history
    if not best_path.is_file():
        raise RuntimeError(f"{spec.name}: training wrote no {best_path} (no epoch finished)")
    state.update(epochs_trained=len(history), finished=True)
    _write_state(state_path, state)
    return TrainedRun(spec, run_dir, best_path, "resumed" if resume else "trained", state["train_seconds"],
                      len(history))


# --------------------------------------------------------------------------------------------------------------
# Evaluation stage
# --------------------------------------------------------------------------------------------------------------

SCENE_FIELD = "silent_object_in_view"
"""realsound's record of whether a silent object of another class is in view: the by-scene columns."""


def evaluate_checkpoint(checkpoint: Path, clips: Sequence[Clip], thresholds: Sequence[str],
                        ks: Sequence[int] = KS, device: str | None = None, batch_size: int = 32,
                        num_workers: int = 2, inference: Sequence[tuple[str, Any]] = ()) -> dict[str, Any]:
    """Localization under each threshold mode (overall and, where the clips record it, by scene kind), exact
    Recall@K and source-presence AUROC, from one model pass over `clips` (collect → `scoring.score_outputs`, as
    `jsar eval compare`). `inference` changes model config fields for scoring only. Returns {'config',
    'model_name', 'best_epoch', 'checkpoint_sha'} and `scoring.summary_dict`'s keys."""
    where = pick_device(device)
    model, config, meta = load_model(checkpoint, map_location=where)
    apply_settings(config, inference)
    group_by = SCENE_FIELD if any(SCENE_FIELD in clip.extra for clip in clips) else None
    outputs = collect_outputs(model, clips, config.data, where, batch_size, num_workers, iqr_alpha_for(model, config),
                              presence=True, reference=presence_reference(meta, model, config.data, where))
    scores = score_outputs(clips, outputs, thresholds, ks, group_by=group_by,
                           presence_mix=PresenceMix.from_dict(meta.get("presence_mix")))
    best_epoch = None if meta.get("epoch") is None else int(meta["epoch"]) + 1
    return {"model_name": model.model_name, "config": config.to_dict(),
            "checkpoint_sha": checkpoint_short_sha(checkpoint), "best_epoch": best_epoch, **summary_dict(scores)}


# --------------------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------------------

@dataclass
class ExperimentRow:
    """One method or ablation: its switches (None for the baselines, which have no such parts), budget use,
    and test scores (fractions in [0, 1])."""

    run: str
    label: str
    model_name: str
    switches: dict[str, bool | None]  # REPORTED_ABLATIONS' keys ("use_match"): on / off, None for the baselines
    status: str
    train_minutes: float | None
    epochs: int
    best_epoch: int | None
    checkpoint: str
    checkpoint_sha: str | None
    localization: dict[str, dict[str, dict[str, float]]]
    retrieval: dict[str, dict[int, float]] | None
    n_localization: int
    n_retrieval: int
    localization_by_group: dict[str, dict[str, dict[str, dict[str, float]]]] = field(default_factory=dict)
    presence_auroc: float | None = None
    presence_auroc_hits: float | None = None
    lr: float | None = None  # the learning rate it trained at (its method's val-chosen one with a ladder)


@dataclass
class ExperimentReport:
    """Header (machine, date, commit, config, data sizes, budget) and one row per run; `threshold` is the
    main table's mode, `other_threshold` the second table's."""

    out_dir: Path
    threshold: str
    other_threshold: str
    header: dict[str, Any]
    rows: list[ExperimentRow] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    def row(self, run: str) -> ExperimentRow:
        return next(row for row in self.rows if row.run == run)

    def table(self, threshold: str | None = None, retrieval: bool = True) -> pd.DataFrame:
        """The paper-format table with raw fractions (see `experiment_table`)."""
        return experiment_table(self.rows, threshold or self.threshold, retrieval)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "experiment", "threshold": self.threshold, "other_threshold": self.other_threshold,
                "header": self.header, "rows": [asdict(row) for row in self.rows],
                "files": {name: str(path) for name, path in self.files.items()}}


def experiment_table(rows: Sequence[ExperimentRow], threshold: str, retrieval: bool = True) -> pd.DataFrame:
    """Rows = methods; columns = switches, plain and +IQR cIoU (AP50) / AUC / mean cIoU under `threshold`,
    [A→I and I→A R@1/5/10,] train minutes, epochs. Missing values (no +IQR for baselines) are None."""
    records = []
    for row in rows:
        record: dict[str, Any] = {"method": row.label}
        for ablation in REPORTED_ABLATIONS:
            record[ablation.column] = row.switches.get(ablation.key)
        scores = row.localization.get(threshold, {})
        for column, prefix in (("plain", ""), ("+IQR", "+IQR ")):
            for key, heading in LOCALIZATION_KEYS:
                record[prefix + heading] = scores.get(column, {}).get(key)
        for group, heading in SCENE_COLUMNS:
            if any(row.localization_by_group for row in rows):
                by_group = row.localization_by_group.get(threshold, {}).get(group, {})
                record[heading] = by_group.get("plain", {}).get("ap50")
        if any(row.presence_auroc is not None for row in rows):
            record["presence AUROC"] = row.presence_auroc
            record["presence AUROC, hits"] = row.presence_auroc_hits
        if retrieval:
            for direction, arrow in ARROWS.items():
                for k in KS:
                    record[f"{arrow} R@{k}"] = (row.retrieval or {}).get(direction, {}).get(k)
        record["lr"] = row.lr
        record["train minutes"] = row.train_minutes
        record["epochs"] = row.epochs
        record["best epoch"] = row.best_epoch
        records.append(record)
    return pd.DataFrame(records)


def _display(frame: pd.DataFrame) -> pd.DataFrame:
    """Check-marks for switches and plain numbers for minutes, so markdown_table prints only scores as %."""
    shown = frame.astype(object).copy()
    for heading in (ablation.column for ablation in REPORTED_ABLATIONS):
        shown[heading] = [None if value is None or value != value else ("✓" if value else "")
                          for value in frame[heading]]
    shown["train minutes"] = [None if value is None or value != value else f"{value:.1f}"
                              for value in frame["train minutes"]]
    shown["lr"] = [None if value is None or value != value else f"{value:g}" for value in frame["lr"]]
    return shown


def _header_lines(report: ExperimentReport) -> list[str]:
    header = report.header
    machine, data, budget = header["machine"], header["data"], header["budget"]
    minutes = budget["max_minutes_per_run"]
    return [
        "# JSA: methods and ablations under one budget",
        "",
        f"- jsar {header['jsar_version']}, commit {header['git_commit'] or 'unknown'}, {header['date']}",
        f"- machine: {machine['cpu_count']} cores (os.cpu_count), {machine['usable_cores']} usable, torch threads "
        f"{machine['torch_threads']}, device {machine['device']}, load average at start {machine['load_average']}, "
        f"torch {machine['torch_version']}, {machine['platform']}",
        f"- config: {header['config']['name']} (full JSON in experiment.json); seed {budget['seed']}",
        f"- budget per run: at most {budget['epochs']} epoch(s)"
        + (f", at most {minutes} min (checked after each epoch)" if minutes is not None else ", no time limit"),
        f"- data: {data['data_dir']}: {data['train']} train / {data['val']} val / {data['test']} test clips; "
        f"test: {data['test_with_ground_truth']} with ground truth, {data['test_labelled']} with a class label",
        "- best.pt of each run chosen on val by the trainer; every number below is on the test split",
        "- \"cIoU\" is AP50 (fraction of test clips with cIoU ≥ 0.5) as the papers report it; +IQR is Eq. 14 "
        "(JSA only); retrieval is exact class-level Recall@K over the test clips, own pair in the gallery; "
        "scores in %",
        "- train minutes: wall clock of training including per-epoch validation and checkpoints; ✓ = part kept, "
        "blank = removed, – = not part of that method",
    ]


def write_experiment(report: ExperimentReport) -> dict[str, Path]:
    """experiment.md (both tables), experiment.csv (main table, raw fractions), experiment_<other>.csv and
    experiment.json (header, every row, every threshold) in report.out_dir."""
    out = report.out_dir
    main_table = report.table()
    other_table = report.table(report.other_threshold, retrieval=False)
    files = {"markdown": out / "experiment.md", "csv": out / "experiment.csv",
             "other_csv": out / f"experiment_{report.other_threshold}.csv", "json": out / "experiment.json"}
    runs = [f"- {row.run}: {row.status}, {row.epochs} epoch(s), best epoch {row.best_epoch}, "
            f"{row.n_localization} clips scored for localization, {row.n_retrieval} retrieval queries, "
            f"checkpoint {row.checkpoint}" for row in report.rows]
    lines = _header_lines(report) + [
        "", f"## Localization and retrieval (threshold: {report.threshold})", "", markdown_table(_display(main_table)),
        "", f"## Localization with the {report.other_threshold} threshold", "",
        markdown_table(_display(other_table)), "", "## Runs", "", *runs,
    ]
    files["markdown"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    main_table.to_csv(files["csv"], index=False)
    other_table.to_csv(files["other_csv"], index=False)
    report.files = files
    files["json"].write_text(json.dumps(report.to_dict(), indent=2, default=str, allow_nan=False), encoding="utf-8")
    return files


# --------------------------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------------------------

def _switches(model_name: str, config: dict[str, Any]) -> dict[str, bool | None]:
    """The reported switches as the checkpoint's own config has them (None where the method has no such part)."""
    own = RECIPES[model_name].ablations
    return {ablation.key: config_field(config, ablation.field) if ablation in own else None
            for ablation in REPORTED_ABLATIONS}


def run_experiment(data_dir: str | Path, out_dir: str | Path, config_name: str | JSARConfig = "cpu",
                   epochs: int | None = None, max_minutes_per_run: float | None = None, seed: int = 0,
                   runs: Sequence[str] = DEFAULT_RUNS, threshold: str = "fixed", progress: bool = True,
                   device: str | None = None, test_split: str = "test", lrs: Sequence[float] = (),
                   patience: int = 0, schedules: dict[str, Schedule] | None = None) -> ExperimentReport:
    """Train every run in `runs` (names from `RUNS`) under one config, seed and budget, then score each best.pt
    on `test_split` and write OUT/experiment.md, .csv and .json.

    `config_name` is a preset, a .json config, or a JSARConfig; `epochs` defaults to the config's;
    `max_minutes_per_run` stops a run after the epoch that crosses it. `threshold` is the main table's
    localization threshold mode; the second table uses the other convention (median, or fixed when the main
    one is median). Re-running with the same arguments skips finished runs and resumes interrupted ones.

    `lrs`, a learning-rate ladder, gives each method its own schedule chosen on val first (evaluation.schedules:
    one run per rate, early stop after `patience` epochs, the same epoch and minute caps); `schedules` passes
    ones chosen earlier (run_seeds chooses once for every seed). Without either every run trains at the config's
    rate, with early stop only if `patience` is set.
    """
    unknown = [name for name in runs if name not in RUNS]
    if unknown or not runs:
        raise ValueError(f"unknown or no runs {unknown}; choose from {list(RUNS)}")
    if threshold not in THRESHOLD_MODES:
        raise ValueError(f"unknown threshold mode {threshold!r}; choose one of {THRESHOLD_MODES}")
    if max_minutes_per_run is not None and max_minutes_per_run <= 0:
        raise ValueError(f"max_minutes_per_run must be positive, got {max_minutes_per_run}")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = _base_config(config_name, seed, epochs)

    train_clips, val_clips = split_train_val(data_dir)
    test_clips = read_dataset(data_dir, test_split).clips
    overlap = {clip.id for clip in test_clips} & {clip.id for clip in train_clips + val_clips}
    if overlap:
        raise ValueError(f"{len(overlap)} test clip(s) are also in train/val (e.g. {sorted(overlap)[0]})")
    other = "fixed" if threshold == "median" else "median"
    header = {
        "jsar_version": jsa_retrieval.__version__, "git_commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), "machine": machine_info(device),
        "config": base.to_dict(),
        "budget": {"epochs": base.train.epochs, "max_minutes_per_run": max_minutes_per_run, "seed": seed},
        "data": {"data_dir": str(data_dir), "train": len(train_clips), "val": len(val_clips),
                 "test": len(test_clips), "test_split": test_split,
                 "test_with_ground_truth": sum(has_ground_truth(clip) for clip in test_clips),
                 "test_labelled": sum(1 for clip in test_clips if clip.label)},
        "runs": list(runs),
    }
    if lrs and schedules is None:
        schedules = choose_schedules(data_dir, out_dir, base, scheduled_runs(runs), lrs, (seed,),
                                     max(1, patience), max_minutes_per_run, device, progress)
    if schedules:
        header["schedules"] = {name: {"lr": s.lr, "val_score": s.val_score, "tried": s.tried, "seeds": list(s.seeds)}
                               for name, s in schedules.items()}
        header["budget"]["patience"] = max(1, patience)
    report = ExperimentReport(out_dir, threshold, other, header)

    trained_by_name: dict[str, TrainedRun] = {}
    for name in sorted(runs, key=lambda name: RUNS[name].checkpoint_of is not None):  # trained runs first
        spec = RUNS[name]
        if spec.checkpoint_of is not None:
            if spec.checkpoint_of not in trained_by_name:
                raise ValueError(f"run {name!r} scores {spec.checkpoint_of!r}'s checkpoint: add that run too")
            source = trained_by_name[spec.checkpoint_of]
            trained_by_name[name] = TrainedRun(spec, source.run_dir, source.best_path, "shared", None,
                                               source.epochs_trained)
        else:
            run_dir, config = out_dir / name, spec.configure(base, seed, None)
            schedule = (schedules or {}).get(spec.schedule_of or spec.name)
            if schedule is not None:
                config = spec.configure(schedule_config(base, schedule.lr, max(1, patience)), seed, None)
                if spec.schedule_of is None and seed in schedule.run_dirs:  # the ladder's run is this row's
                    run_dir = Path(schedule.run_dirs[seed])
            elif patience:
                config.train.patience = patience
            trained_by_name[name] = train_run(spec, data_dir, run_dir, config, max_minutes_per_run, device,
                                              progress)
    trained = [trained_by_name[name] for name in runs]
    workers = min(2, base.train.num_workers)
    for run in trained:
        logger.info("%s: scoring %s on %d %s clips", run.spec.name, run.best_path, len(test_clips), test_split)
        scores = evaluate_checkpoint(run.best_path, test_clips, (threshold, other), device=device,
                                     batch_size=min(32, base.train.batch_size), num_workers=workers,
                                     inference=run.spec.inference)
        report.rows.append(ExperimentRow(
            run=run.spec.name, label=run.spec.label, model_name=scores["model_name"],
            switches=_switches(scores["model_name"], scores["config"]), status=run.status,
            train_minutes=None if run.train_seconds is None else run.train_seconds / 60,
            epochs=run.epochs_trained, best_epoch=scores["best_epoch"], checkpoint=str(run.best_path),
            checkpoint_sha=scores["checkpoint_sha"], localization=scores["localization"],
            retrieval=scores["retrieval"], n_localization=scores["n_localization"],
            n_retrieval=scores["n_retrieval"], localization_by_group=scores["localization_by_group"],
            presence_auroc=scores["presence_auroc"], presence_auroc_hits=scores["presence_auroc_hits"],
            lr=scores["config"]["train"]["lr"]))
    write_experiment(report)
    logger.info("wrote %s", report.files["markdown"])
    return report


def scheduled_runs(runs: Sequence[str]) -> list[str]:
    """The runs (in order) whose val-chosen schedules `runs` train with: each trained run's own, or the one it
    names in `schedule_of` (chosen even when that run is not in `runs`)."""
    return list(dict.fromkeys(RUNS[name].schedule_of or name for name in runs if RUNS[name].checkpoint_of is None))


def _base_config(config_name: str | JSARConfig, seed: int, epochs: int | None) -> JSARConfig:
    """The experiment's config: a preset, a .json config or a copy of a JSARConfig, at `seed` and epoch cap."""
    base = get_config(config_name) if isinstance(config_name, str) else JSARConfig.from_dict(config_name.to_dict())
    base.train.seed = seed
    if epochs is not None:
        base.train.epochs = epochs
    return base


def seeds_table(reports: Sequence[ExperimentReport], threshold: str | None = None) -> pd.DataFrame:
    """One row per method: mean ± sample std over the seeds' reports of every score (in %) and of the train
    minutes; switches as in `experiment_table`. Formatted strings, ready for markdown."""
    frames = [report.table(threshold) for report in reports]
    keys = ["method"] + [ablation.column for ablation in REPORTED_ABLATIONS] + ["lr"]
    numeric = [column for column in frames[0].columns if column not in keys + ["best epoch"]]
    stacked = pd.concat(frames, keys=range(len(frames)), names=["seed", "row"]).reset_index(level=0)
    records = []
    for method in frames[0]["method"]:
        rows = stacked[stacked["method"] == method]
        record = {key: rows[key].iloc[0] for key in keys}
        for column in numeric:
            values = pd.to_numeric(rows[column], errors="coerce").dropna().to_numpy(dtype=float)
            scale = 1.0 if column in ("train minutes", "epochs") else 100.0
            record[column] = (None if values.size == 0 else
                              f"{values.mean() * scale:.1f} ± {values.std(ddof=1) * scale if values.size > 1 else 0:.1f}")
        records.append(record)
    shown = pd.DataFrame(records)
    shown["lr"] = [None if value is None or value != value else f"{value:g}" for value in shown["lr"]]
    for heading in (ablation.column for ablation in REPORTED_ABLATIONS):
        shown[heading] = ["–" if value is None or value != value else ("✓" if value else "") for value in shown[heading]]
    return shown


def run_seeds(data_dir: str | Path, out_dir: str | Path, seeds: Sequence[int], config_name: str | JSARConfig = "cpu",
              epochs: int | None = None, max_minutes_per_run: float | None = None,
              runs: Sequence[str] = DEFAULT_RUNS, threshold: str = "fixed", progress: bool = True,
              device: str | None = None, lrs: Sequence[float] = (),
              patience: int = 0) -> tuple[list[ExperimentReport], Path]:
    """`run_experiment` once per seed into OUT/seed<N>/, then OUT/experiment_seeds.md: mean ± std over the seeds
    (one seed moved AP50 on the synthetic set by more than the ablations did). With `lrs` each method's schedule
    is chosen once for all seeds (OUT/schedule/: every rate trained at every seed, the best val score averaged
    over the seeds wins), and the chosen rate's runs are the seeds' rows."""
    out_dir = Path(out_dir)
    schedules = None
    if lrs:
        schedules = choose_schedules(Path(data_dir), out_dir, _base_config(config_name, seeds[0], epochs),
                                     scheduled_runs(runs), lrs, seeds, max(1, patience), max_minutes_per_run, device,
                                     progress)
    reports = [run_experiment(data_dir, out_dir / f"seed{seed}", config_name, epochs, max_minutes_per_run, seed,
                              runs, threshold, progress, device, patience=patience, schedules=schedules)
               for seed in seeds]
    header = reports[0].header
    lines = [f"# JSA: methods and ablations, mean ± std over seeds {', '.join(map(str, seeds))}", "",
             f"- config {header['config']['name']}; data {header['data']['data_dir']}: {header['data']['train']} "
             f"train / {header['data']['val']} val / {header['data']['test']} test clips; best.pt chosen on val, "
             "every number on test; scores in %; per-seed tables in seed<N>/experiment.md", "",
             f"## Threshold {threshold}", "", markdown_table(seeds_table(reports)), "",
             f"## Threshold {reports[0].other_threshold} (localization; retrieval as above)", "",
             markdown_table(seeds_table(reports, reports[0].other_threshold))]
    path = out_dir / "experiment_seeds.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return reports, path
