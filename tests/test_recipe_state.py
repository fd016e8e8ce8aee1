"""What a method keeps between epochs survives a resume and a multi-process run: resume is bit for bit for every
method, a changed configuration is refused, patience stops a run, and the alignment baseline's banks are summed
over the ranks (gloo here; NCCL where two GPUs are present)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jsa_retrieval.config import first_difference
from jsa_retrieval.synth import SynthConfig, generate
from training import trainer
from training.trainer import train

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(n_clips=40, seed=4, image_size=64, seconds=1.0), progress=False)
    return root


def _last(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["jsa", "ezvsl", "alignment"])
def test_a_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_ends(tiny_data, tmp_path, model_name):
    config = tiny_config(epochs=2)
    train(tiny_data, config, model_name, tmp_path / "straight", progress=False)
    train(tiny_data, config, model_name, tmp_path / "resumed", epochs=1, progress=False)
    train(tiny_data, config, model_name, tmp_path / "resumed", resume=True, progress=False)
    straight, resumed = _last(tmp_path / "straight"), _last(tmp_path / "resumed")
    assert straight["model"].keys() == resumed["model"].keys()
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    if model_name == "alignment":  # the banks that give epoch 2 its conceptual partners were carried over
        for name in ("image", "audio"):
            assert torch.equal(straight["recipe"]["banks"][name], resumed["recipe"]["banks"][name])
            filled = (straight["recipe"]["banks"][name].abs().sum(dim=1) > 0).sum().item()
            assert filled == straight["meta"]["history"][-1]["steps"] * config.train.batch_size


def test_resume_refuses_a_changed_configuration_unless_overridden(tiny_data, tmp_path):
    config = tiny_config(epochs=1)
    train(tiny_data, config, "jsa", tmp_path / "run", progress=False)
    changed = tiny_config(epochs=2)
    changed.train.lr = 1e-3
    with pytest.raises(ValueError, match=r"trained with train.lr = 0.0005, this run has 0.001.*--override"):
        train(tiny_data, changed, "jsa", tmp_path / "run", resume=True, progress=False)
    more_epochs = tiny_config(epochs=2)  # the epoch count may change: that is what resuming is for
    assert [r["epoch"] for r in train(tiny_data, more_epochs, "jsa", tmp_path / "run", resume=True,
                                      progress=False).history] == [1, 2]
    changed.train.epochs = 3
    overridden = train(tiny_data, changed, "jsa", tmp_path / "run", resume=True, progress=False, override=True)
    assert [r["epoch"] for r in overridden.history] == [1, 2, 3]
    with pytest.raises(ValueError, match="trained as 'jsa', not 'ezvsl'"):
        train(tiny_data, tiny_config(epochs=4), "ezvsl", tmp_path / "run", resume=True, progress=False)


def test_first_difference_names_the_nested_field_in_the_configs_order():
    saved = {"name": "a", "model": {"x": 1, "y": (1, 2)}, "train": {"lr": 1.0, "epochs": 3}}
    assert first_difference(saved, {"name": "a", "model": {"x": 1, "y": (1, 2)}, "train": {"lr": 1.0, "epochs": 9}}) \
        is None
    assert first_difference(saved, {"name": "a", "model": {"x": 1, "y": (1, 3)}, "train": {"lr": 2.0, "epochs": 3}}) \
        == ("model.y", (1, 2), (1, 3))
    assert first_difference(saved, {**saved, "train": {"lr": 1.0, "epochs": 3, "new": 0}}) == ("train.new", None, 0)


def test_patience_stops_a_run_whose_val_score_stopped_improving(tiny_data, tmp_path, monkeypatch):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.9])
    monkeypatch.setattr(trainer, "selection_score", lambda _: next(scores))
    config = tiny_config(epochs=6)
    config.train.patience = 2
    result = train(tiny_data, config, "ezvsl", tmp_path / "run", progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]  # best at 2, no better at 3 and 4: stop
    assert _last(tmp_path / "run")["meta"]["since_best"] == 2


def _ddp_alignment(data: Path, out: Path, device: str) -> subprocess.CompletedProcess:
    config = tiny_config(epochs=2)
    config_path = out.parent / f"{out.name}.json"
    config_path.write_text(json.dumps(config.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "jsa_retrieval.cli", "train", str(data), "--config", str(config_path), "--model", "alignment",
               "--out", str(out), "--device", device]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _assert_banks_hold_every_ranks_items(state: dict) -> None:
    assert state["meta"]["world_size"] == 2
    assert [r["ddp_parameter_spread"] for r in state["meta"]["history"]] == [0.0, 0.0]
    steps = state["meta"]["history"][-1]["steps"]  # each rank's, with a per-rank batch of 16 / 2
    for bank in state["recipe"]["banks"].values():  # each rank fills its items; the sum holds both ranks'
        assert (bank.abs().sum(dim=1) > 0).sum().item() == 2 * steps * 8


@pytest.mark.slow
def test_two_gloo_ranks_sum_the_alignment_banks(tiny_data, tmp_path):
    finished = _ddp_alignment(tiny_data, tmp_path / "ddp", "cpu")
    assert finished.returncode == 0, finished.stderr[-2000:]
    _assert_banks_hold_every_ranks_items(_last(tmp_path / "ddp"))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL with two ranks needs two CUDA GPUs")
def test_two_nccl_ranks_sum_the_alignment_banks_kept_on_the_cpu(tiny_data, tmp_path):
    finished = _ddp_alignment(tiny_data, tmp_path / "ddp", "cuda")
    assert finished.returncode == 0, finished.stderr[-2000:]
    _assert_banks_hold_every_ranks_items(_last(tmp_path / "ddp"))
