"""The experiment runner end to end on a tiny synthetic set: every run trains under one budget, the tables
carry the right ablation switches and fractions, and a second call resumes instead of retraining."""
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from evaluation.experiment import RUNS, run_experiment, seeds_table, train_run
from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.synth import SynthConfig, generate

from conftest import tiny_config

RUN_NAMES = ("jsa", "ezvsl", "jsa_no_match")




@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(n_clips=40, seed=5, image_size=64, seconds=1.0), progress=False)
    return root


@pytest.fixture(scope="module")
def experiment(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    report = run_experiment(tiny_data, out, tiny_config(), epochs=1, runs=RUN_NAMES, progress=False)
    return out, report


def _fractions(row):
    values = [scores[key] for by_column in row.localization.values() for scores in by_column.values()
              for key in ("ap50", "auc", "mean_ciou")]
    values += [value for direction in row.retrieval.values() for value in direction.values()]
    return values


def test_every_run_is_trained_once_and_scored_on_test(experiment):
    out, report = experiment
    assert [row.run for row in report.rows] == list(RUN_NAMES)
    assert report.header["data"]["test"] == 8 and report.header["budget"]["epochs"] == 1
    assert report.header["machine"]["cpu_count"] >= 1
    for row in report.rows:
        assert row.status == "trained" and row.epochs == 1 and row.best_epoch == 1
        assert (out / row.run / "best.pt").is_file()
        assert row.n_localization == 8 and row.n_retrieval == 8
        assert set(row.localization) == {"fixed", "median"}
        values = _fractions(row)
        assert len(values) > 6 and all(0.0 <= value <= 1.0 for value in values)
        assert row.train_minutes > 0


def test_rows_carry_the_ablation_switches_of_their_checkpoint(experiment):
    _, report = experiment
    jsa, ezvsl, no_match = (report.row(name) for name in RUN_NAMES)
    keys = ("use_match", "use_div", "use_false_negatives", "share_initial_slots")
    assert [jsa.switches[key] for key in keys] == [True] * 4
    assert [no_match.switches[key] for key in keys] == [False, True, True, True]
    assert set(ezvsl.switches) == set(keys) and set(ezvsl.switches.values()) == {None}
    assert "+IQR" in jsa.localization["fixed"] and "+IQR" not in ezvsl.localization["fixed"]
    jsa_history = load_model(jsa.checkpoint)[2]["history"]
    no_match_history = load_model(no_match.checkpoint)[2]["history"]
    assert jsa_history[0]["loss_match"] > 0 and no_match_history[0]["loss_match"] == 0


def test_tables_are_written_in_the_paper_layout(experiment):
    out, report = experiment
    table = pd.read_csv(out / "experiment.csv")
    assert list(table["method"]) == [RUNS[name].label for name in RUN_NAMES]
    for column in ("cIoU (AP50)", "AUC", "+IQR cIoU (AP50)", "A→I R@1", "I→A R@10", "train minutes", "epochs"):
        assert column in table.columns
    scores = table[["cIoU (AP50)", "AUC", "A→I R@1", "A→I R@5", "I→A R@10"]].to_numpy().ravel()
    assert all(0.0 <= value <= 1.0 for value in scores)
    assert math.isnan(table.loc[1, "+IQR AUC"])  # EZ-VSL has no image query
    other = pd.read_csv(out / "experiment_median.csv")
    assert "A→I R@1" not in other.columns and len(other) == len(RUN_NAMES)
    markdown = (out / "experiment.md").read_text()
    assert "threshold: fixed" in markdown and "median threshold" in markdown
    jsa_line = next(line for line in markdown.splitlines() if line.startswith("| JSA (full) "))
    no_match_line = next(line for line in markdown.splitlines() if line.startswith("| JSA w/o L_match "))
    ezvsl_line = next(line for line in markdown.splitlines() if line.startswith("| EZ-VSL "))
    assert jsa_line.split("|")[2:6] == [" ✓ "] * 4
    assert no_match_line.split("|")[2:6] == ["  ", " ✓ ", " ✓ ", " ✓ "]
    assert ezvsl_line.split("|")[2:6] == [" – "] * 4
    saved = json.loads((out / "experiment.json").read_text())
    assert saved["header"]["config"]["name"] == "tiny" and len(saved["rows"]) == len(RUN_NAMES)


def test_second_call_skips_finished_runs_and_refuses_another_budget(experiment, tiny_data):
    out, first = experiment
    stamps = {name: (out / name / "best.pt").stat().st_mtime_ns for name in RUN_NAMES}
    again = run_experiment(tiny_data, out, tiny_config(), epochs=1, runs=RUN_NAMES, progress=False)
    assert [row.status for row in again.rows] == ["skipped"] * len(RUN_NAMES)
    assert {name: (out / name / "best.pt").stat().st_mtime_ns for name in RUN_NAMES} == stamps
    for before, after in zip(first.rows, again.rows):
        assert after.localization == before.localization and after.train_minutes == before.train_minutes
    with pytest.raises(ValueError, match="another config or budget"):
        run_experiment(tiny_data, out, tiny_config(), epochs=2, runs=("jsa",), progress=False)


def test_jsar_eval_reproduce_rejects_an_unknown_run_in_one_line(tiny_data, tmp_path):
    done = subprocess.run([sys.executable, "-m", "jsa_retrieval", "eval", "reproduce", str(tiny_data), "--out",
                           str(tmp_path), "--runs", "jsa,nope"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "unknown or no runs" in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.slow
def test_seeds_table_gives_mean_and_sample_std_in_percent(tiny_data, tmp_path):
    reports = [run_experiment(tiny_data, tmp_path / f"s{seed}", tiny_config(), epochs=1, seed=seed, runs=("ezvsl",),
                              progress=False) for seed in (0, 1)]
    values = [report.table()["A→I R@1"].iloc[0] * 100 for report in reports]
    cell = seeds_table(reports)["A→I R@1"].iloc[0]
    mean, std = (float(part) for part in cell.split(" ± "))
    assert mean == pytest.approx(np.mean(values), abs=0.051) and std == pytest.approx(np.std(values, ddof=1), abs=0.051)


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_from_last_checkpoint(tiny_data, tmp_path):
    config = RUNS["jsa"].configure(tiny_config(), seed=0, epochs=2)

    def stop_after_first_epoch(record):
        if record["epoch"] == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_run(RUNS["jsa"], tiny_data, tmp_path / "jsa", config, None, progress=False,
                  on_epoch=stop_after_first_epoch)
    state = json.loads((tmp_path / "jsa" / "run.json").read_text())
    assert not state["finished"] and state["train_seconds"] > 0
    resumed = train_run(RUNS["jsa"], tiny_data, tmp_path / "jsa", config, None, progress=False)
    assert resumed.status == "resumed" and resumed.epochs_trained == 2
    assert resumed.train_seconds > state["train_seconds"]
    assert [record["epoch"] for record in load_model(tmp_path / "jsa" / "last.pt")[2]["history"]] == [1, 2]
