"""Each method's own schedule, chosen on val: one run per learning rate, the best val score wins, the chosen run
is the selection seed's row (not trained twice), and the table prints each row's rate, epochs and minutes."""
import json

import pandas as pd
import pytest

from evaluation.experiment import run_experiment
from evaluation.schedules import SCHEDULE_FILE, lr_name, schedule_config
from jsa_retrieval.synth import SynthConfig, generate

from conftest import tiny_config


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(n_clips=40, seed=6, image_size=64, seconds=1.0), progress=False)
    return root


def test_lr_names_are_exact_and_folder_safe():
    assert [lr_name(lr) for lr in (5e-4, 1e-3, 3e-3, 2.5e-4)] == ["5e-04", "1e-03", "3e-03", "0.00025"]


def test_schedule_config_changes_only_the_rate_and_patience():
    base = tiny_config()
    config = schedule_config(base, 3e-3, 2)
    assert (config.train.lr, config.train.patience) == (3e-3, 2)
    config.train.lr, config.train.patience = base.train.lr, base.train.patience
    assert config.to_dict() == base.to_dict()


@pytest.mark.slow
def test_each_method_trains_at_its_own_val_chosen_rate(tiny_data, tmp_path):
    out = tmp_path / "experiment"
    report = run_experiment(tiny_data, out, tiny_config(), epochs=2, runs=("jsa", "ezvsl", "jsa_no_match"),
                            progress=False, lrs=(5e-4, 3e-3), patience=1)
    chosen = json.loads((out / "schedule" / SCHEDULE_FILE).read_text())
    assert set(chosen) == {"jsa", "ezvsl"}  # the ablation trains with JSA's schedule
    for method, schedule in chosen.items():
        assert set(schedule["tried"]) == {"5e-04", "3e-03"}
        assert schedule["val_score"] == max(schedule["tried"].values())
        assert lr_name(schedule["lr"]) == max(schedule["tried"], key=schedule["tried"].get)
    rows = {row.run: row for row in report.rows}
    assert rows["jsa"].lr == chosen["jsa"]["lr"] and rows["jsa_no_match"].lr == chosen["jsa"]["lr"]
    assert rows["ezvsl"].lr == chosen["ezvsl"]["lr"]
    assert rows["jsa"].status == "skipped"  # the ladder's run at this seed is the row: not trained twice
    assert rows["jsa"].checkpoint == str(out / "schedule" / "jsa" / f"lr{lr_name(chosen['jsa']['lr'])}" / "best.pt")
    assert rows["jsa_no_match"].status == "trained" and 1 <= rows["jsa_no_match"].epochs <= 2
    table = pd.read_csv(out / "experiment.csv")
    assert {"lr", "epochs", "train minutes"} <= set(table.columns)
    assert report.header["schedules"]["ezvsl"]["lr"] == chosen["ezvsl"]["lr"]
