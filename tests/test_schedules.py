"""Each method's own schedule, chosen on val: one run per learning rate and seed, the best val score averaged over
the seeds wins (a tie goes to the earlier rate), the chosen runs are the seeds' rows (not trained twice), and the
table prints each row's rate, epochs and minutes."""
import json

import pandas as pd
import pytest

from evaluation.experiment import run_experiment, run_seeds, scheduled_runs
from evaluation.schedules import SCHEDULE_FILE, chosen_rate, lr_name, mean_scores, schedule_config
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


def test_the_rate_with_the_best_mean_over_seeds_wins_not_the_best_single_seed():
    by_seed = {"5e-04": {0: 1.0375, 1: 1.0275, 2: 1.0525}, "0.0015": {0: 1.0425, 1: 1.1275, 2: 1.0525}}
    assert mean_scores(by_seed) == pytest.approx({"5e-04": 1.03917, "0.0015": 1.07417}, abs=1e-5)
    assert chosen_rate(mean_scores(by_seed)) == "0.0015"
    assert chosen_rate(mean_scores({"5e-04": {0: 1.0, 1: 0.9}, "0.0015": {0: 0.98, 1: 0.96}})) == "0.0015"
    assert chosen_rate(mean_scores({"5e-04": {0: 0.9, 1: 1.0}, "0.0015": {0: 1.05, 1: 0.8}})) == "5e-04"


def test_equal_scores_up_to_float_rounding_are_a_tie_that_goes_to_the_earlier_rate():
    # realsound, maps that listen at seed 0: the same score in two float spellings
    assert chosen_rate({"5e-04": 1.3199999999999998, "0.0015": 1.32}) == "5e-04"
    assert chosen_rate({"0.0015": 1.32, "5e-04": 1.3199999999999998}) == "0.0015"
    assert chosen_rate({"5e-04": 1.3195, "0.0015": 1.32}) == "0.0015"  # a real difference still decides


def test_ablations_take_jsa_schedule_and_maps_that_listen_get_their_own():
    assert scheduled_runs(["jsa_no_match", "jsa_unshared"]) == ["jsa"]
    assert scheduled_runs(["jsa", "ezvsl", "jsa_listen", "jsa_no_div", "jsa_release_inference",
                           "jsa_listen_location"]) == ["jsa", "ezvsl", "jsa_listen"]


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
    assert rows["jsa"].checkpoint == str(out / "schedule" / "jsa" / f"lr{lr_name(chosen['jsa']['lr'])}" / "seed0"
                                         / "best.pt")
    assert rows["jsa_no_match"].status == "trained" and 1 <= rows["jsa_no_match"].epochs <= 2
    table = pd.read_csv(out / "experiment.csv")
    assert {"lr", "epochs", "train minutes"} <= set(table.columns)
    assert report.header["schedules"]["ezvsl"]["lr"] == chosen["ezvsl"]["lr"]


@pytest.mark.slow
def test_over_seeds_every_rate_trains_at_every_seed_and_the_chosen_runs_are_the_rows(tiny_data, tmp_path):
    out = tmp_path / "seeds"
    reports, _ = run_seeds(tiny_data, out, (0, 1), tiny_config(), epochs=1, runs=("jsa", "jsa_no_div"),
                           progress=False, lrs=(5e-4, 3e-3), patience=1)
    chosen = json.loads((out / "schedule" / SCHEDULE_FILE).read_text())["jsa"]
    assert chosen["seeds"] == [0, 1] and set(chosen["tried_by_seed"]) == {"5e-04", "3e-03"}
    for name, by_seed in chosen["tried_by_seed"].items():
        assert set(by_seed) == {"0", "1"}
        assert chosen["tried"][name] == pytest.approx(sum(by_seed.values()) / 2)
        for seed in (0, 1):
            assert (out / "schedule" / "jsa" / f"lr{name}" / f"seed{seed}" / "best.pt").is_file()
    assert lr_name(chosen["lr"]) == chosen_rate(chosen["tried"])
    for seed, report in zip((0, 1), reports):
        rows = {row.run: row for row in report.rows}
        assert rows["jsa"].status == "skipped" and rows["jsa"].checkpoint == chosen["run_dirs"][str(seed)] + "/best.pt"
        assert rows["jsa_no_div"].status == "trained" and rows["jsa_no_div"].lr == chosen["lr"]
