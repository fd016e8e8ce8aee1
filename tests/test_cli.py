"""The command line: help everywhere, and bad input ends in one line on stderr with a non-zero exit."""
import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.cli import cli


def run_jsar(*args):
    return subprocess.run([sys.executable, "-m", "jsa_retrieval.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def command_paths(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[list[str], bool]]:
    """Every command of the click tree as (path, is_group), walked rather than listed, so none is forgotten."""
    paths = [(list(prefix), True)]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append(([*prefix, name], False))
    return paths


@pytest.mark.parametrize("command,is_group", command_paths(), ids=lambda value: " ".join(value)
                         if isinstance(value, list) else None)
def test_every_command_has_help_with_an_example(command, is_group):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output
    if not is_group:
        assert "Example:" in result.output and "jsar " in result.output


def test_the_walk_reaches_the_commands_a_list_used_to_miss():
    paths = {" ".join(path) for path, _ in command_paths()}
    assert {"serve", "calibrate-presence", "data realsound", "eval generalisation", "eval recordings"} <= paths


def test_importing_the_cli_loads_no_heavy_library():
    heavy = ("torch", "faiss", "numpy", "h5py", "training", "indexing", "evaluation")
    probe = ("import sys, jsa_retrieval.cli; "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_clips_is_the_clip_count_and_n_its_deprecated_spelling(tmp_path):
    for flag, out in (("--clips", tmp_path / "a"), ("--n", tmp_path / "b")):
        result = CliRunner().invoke(cli, ["synth", str(out), flag, "2", "--image-size", "32", "--seconds", "0.5"])
        assert result.exit_code == 0 and len(list((out / "frames").glob("*.jpg"))) == 2
        assert ("--n is deprecated; use --clips" in result.output) == (flag == "--n")
    assert "--n " not in CliRunner().invoke(cli, ["synth", "--help"]).output


def test_train_options_build_the_config_config_with_overrides_builds(tmp_path, monkeypatch):
    import training.trainer
    from jsa_retrieval.config import config_with_overrides

    seen = {}

    def record(data_dir, config, *args, **kwargs):
        seen["config"] = config
        return type("Result", (), {"best_path": tmp_path / "best.pt"})()

    monkeypatch.setattr(training.trainer, "train", record)
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--epochs", "3", "--workers", "0", "--audio-encoder",
                                      "yamnet", "--no-match", "--unshared-slots", "--target-slots", "2"])
    assert result.exit_code == 0 and f"best checkpoint: {tmp_path / 'best.pt'}" in result.output
    expected = config_with_overrides("cpu", {"epochs": 3, "workers": 0, "audio_encoder": "yamnet", "target_slots": 2},
                                     ["use_match", "share_initial_slots"])
    assert seen["config"].to_dict() == expected.to_dict()


def test_resume_passes_override_and_patience_and_override_alone_is_a_usage_error(tmp_path, monkeypatch):
    import training.trainer

    seen = {}

    def record(data_dir, config, *args, **kwargs):
        seen.update(config=config, **kwargs)
        return type("Result", (), {"best_path": tmp_path / "best.pt"})()

    monkeypatch.setattr(training.trainer, "train", record)
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--resume", "--override", "--patience", "3"])
    assert result.exit_code == 0, result.output
    assert seen["resume"] and seen["override"] and seen["config"].train.patience == 3
    alone = CliRunner().invoke(cli, ["train", str(tmp_path), "--override"])
    assert alone.exit_code == 2 and "--override only applies with --resume" in alone.output


def test_resume_under_another_config_is_refused_in_one_line(tmp_path):
    from jsa_retrieval.synth import SynthConfig, generate
    from training.trainer import train

    from conftest import tiny_config

    data = tmp_path / "data"
    generate(data, SynthConfig(n_clips=24, seed=0, image_size=64, seconds=1.0), progress=False)
    config = tiny_config(epochs=1)
    train(data, config, "ezvsl", tmp_path / "run", progress=False)
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(config.to_dict()))
    result = run_jsar("train", data, "--config", config_file, "--model", "ezvsl", "--out", tmp_path / "run",
                      "--resume", "--lr", "0.01")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "trained with train.lr = 0.0005, this run has 0.01" in result.stderr and "--override" in result.stderr


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and "0.1.0" in result.output


def test_unknown_layout_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    result = run_jsar("train", tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no known layout" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_text("not a checkpoint")
    image = tmp_path / "a.jpg"
    from PIL import Image
    Image.new("RGB", (32, 32)).save(image)
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    result = run_jsar("localize", "--image", image, "--audio", audio, "--checkpoint", fake, "--out", tmp_path / "o.png")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0


def test_query_without_an_index_is_one_line(tmp_path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    result = run_jsar("query", "--index", tmp_path, "--audio", audio)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "index.json" in result.stderr


def test_domain_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    from jsa_retrieval import cli as cli_module
    from jsa_retrieval.clips import LayoutError

    def layout_problem(*args, **kwargs):
        raise LayoutError("data/x: no known layout")

    monkeypatch.setattr(cli_module.cli, "main", layout_problem)
    monkeypatch.delenv("JSAR_DEBUG", raising=False)
    with pytest.raises(SystemExit) as stop:
        cli_module.main()
    assert stop.value.code == 1 and capsys.readouterr().err == "error: data/x: no known layout\n"

    def bug(*args, **kwargs):
        return {}["choice"]

    monkeypatch.setattr(cli_module.cli, "main", bug)
    with pytest.raises(KeyError, match="choice"):
        cli_module.main()


def test_verbosity_flags_set_jsar_log_levels_and_messages_reach_stderr(capsys):
    import logging

    from jsa_retrieval.cli import configure_logging

    try:
        configure_logging(0)
        logging.getLogger("training.trainer").info("epoch 1 | loss 0.5")
        logging.getLogger("indexing.store").debug("hidden at the default level")
        assert capsys.readouterr().err == "epoch 1 | loss 0.5\n"
        configure_logging(-1)
        logging.getLogger("evaluation.demo").info("not shown with -q")
        logging.getLogger("evaluation.demo").warning("shown with -q")
        assert capsys.readouterr().err == "warning: shown with -q\n"
        configure_logging(1)
        logging.getLogger("indexing.store").debug("shown with -v")
        assert capsys.readouterr().err == "shown with -v\n"
        ours = [h for h in logging.getLogger("training").handlers if getattr(h, "_jsar", False)]
        assert len(ours) == 1  # reconfiguring replaces, never stacks
    finally:
        configure_logging(0)


def test_quiet_flag_is_accepted_before_any_command():
    result = CliRunner().invoke(cli, ["-q", "localize", "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_quiet_index_shows_no_progress_bar(tmp_path):
    from helpers import tiny_checkpoint
    from jsa_retrieval.synth import SynthConfig, generate

    data = tmp_path / "data"
    generate(data, SynthConfig(n_clips=4, seed=3, image_size=64, seconds=1.0), progress=False)
    checkpoint = tiny_checkpoint(tmp_path / "model.pt")
    outputs = {}
    for name, flags in (("plain", []), ("quiet", ["-q"])):
        result = CliRunner().invoke(cli, [*flags, "index", str(data), "--checkpoint", str(checkpoint),
                                          "--out", str(tmp_path / name), "--workers", "0"])
        assert result.exit_code == 0, result.output
        outputs[name] = result.output
    assert "embedding" in outputs["plain"] and "4 clips in" in outputs["plain"]
    assert "embedding" not in outputs["quiet"] and "4 clips in" in outputs["quiet"]


@pytest.mark.parametrize("flags,message", [
    (["--backend", "milvus"], "Milvus needs --milvus-uri"),
    (["--push", "milvus"], "Milvus needs --milvus-uri"),
    (["--milvus-uri", "x.db"], "--milvus-uri goes with --backend milvus or --push milvus"),
])
def test_index_refuses_milvus_options_that_do_not_go_together(tmp_path, flags, message):
    result = CliRunner().invoke(cli, ["index", "--out", str(tmp_path / "out"), *flags])
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "out").exists()


def test_reproduce_refuses_a_seed_named_twice(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    result = CliRunner().invoke(cli, ["eval", "reproduce", str(data), "--out", str(tmp_path / "out"),
                                      "--seeds", "0,1,0", "--lrs", "1e-3"])
    assert result.exit_code == 2 and "names a seed twice: 0,1,0" in result.output
    assert not (tmp_path / "out").exists()


def test_eval_retrieval_prints_the_report_tables_without_the_configuration(tiny_index, tmp_path):
    index_dir, _ = tiny_index
    result = CliRunner().invoke(cli, ["eval", "retrieval", str(index_dir), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "Recall@K" in result.output and "## Configuration" not in result.output
    assert "## Configuration" in (tmp_path / "report" / "report.md").read_text()
    assert result.output.endswith(f"\n\nreport files in {tmp_path / 'report'}\n")


def test_eval_map_variants_prints_ap50_of_each_variant(tiny_index):
    index_dir, data = tiny_index
    checkpoint = index_dir.parent / "model.pt"
    result = CliRunner().invoke(cli, ["eval", "map-variants", str(checkpoint), str(data), "--split", "test",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{checkpoint} on test: 3 clips ({{'missing': 3}}); AP50 % at 0.6"
    assert [line.split()[:2] for line in lines[2:6]] == [["cross", "x1.0"], ["cross", "x0.1"], ["IQR", "alpha"],
                                                         ["IQR", "alpha"]]


def test_eval_map_variants_refuses_a_split_without_boxes(tiny_index, tmp_path):
    import shutil

    index_dir, data = tiny_index
    unboxed = tmp_path / "data"
    shutil.copytree(data, unboxed)
    (unboxed / "vggss.json").unlink()  # the boxes
    result = CliRunner().invoke(cli, ["eval", "map-variants", str(index_dir.parent / "model.pt"), str(unboxed)])
    assert result.exit_code == 2 and "no clip of val has boxes" in result.output


def test_eval_figures_writes_one_png_with_a_column_per_model(tiny_index, tmp_path):
    from PIL import Image

    index_dir, data = tiny_index
    checkpoint, out = index_dir.parent / "model.pt", tmp_path / "maps.png"
    result = CliRunner().invoke(cli, ["eval", "figures", str(data), str(out), "--model", f"A={checkpoint}",
                                      "--model", f"B={checkpoint}", "--clips", "2"])
    assert result.exit_code == 0, result.output
    assert result.output == f"{out}\n" and Image.open(out).size[0] > Image.open(out).size[1]
    refused = CliRunner().invoke(cli, ["eval", "figures", str(data), str(out), "--model", str(checkpoint)])
    assert refused.exit_code == 2 and "each --model is LABEL=CHECKPOINT" in refused.output


def test_eval_presence_prints_the_auroc_of_each_sounds_hits_over_the_split(tiny_index):
    index_dir, data = tiny_index
    checkpoint = index_dir.parent / "model.pt"
    result = CliRunner().invoke(cli, ["eval", "presence", str(checkpoint), str(data), "--split", "test", "-k", "3",
                                      "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{checkpoint} on test, top-3 hits: ") and "presence AUROC" in lines[0]
    assert len(lines) == 1  # an uncalibrated checkpoint has no cut to report


def test_eval_localization_negatives_prints_and_writes_ap_and_max_f1(tiny_index, tmp_path):
    _, data = tiny_index
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["eval", "localization", str(data), "--checkpoint",
                                      str(tiny_index[0].parent / "model.pt"), "--split", "test", "--workers", "0",
                                      "--negatives", "--negatives-seed", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "with negatives (seed 2)" in result.output and "plain: AP " in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["negatives_seed"] == 2 and 0 <= report["columns"]["plain"]["negatives_ap"] <= 1
    table = (out / "report.md").read_text()
    assert "AP, with negatives" in table and "max-F1, with negatives" in table  # the report's table has them


def test_calibrate_presence_says_how_it_mixes_and_eval_presence_reports_the_cut(tiny_index, tmp_path):
    index_dir, data = tiny_index
    calibrated = tmp_path / "calibrated.pt"
    result = CliRunner().invoke(cli, ["calibrate-presence", str(index_dir.parent / "model.pt"), str(data), "--out",
                                      str(calibrated), "--split", "test", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    meta = load_model(calibrated)[2]
    by_picture = meta["presence_mix"]["by_picture"]
    assert result.output.startswith("presence cut ") and f"written with the model to {calibrated}" in result.output
    assert ("each picture scored against the split's sounds" in result.output) == by_picture
    assert (meta["presence_reference"] is not None) == by_picture
    scored = CliRunner().invoke(cli, ["eval", "presence", str(calibrated), str(data), "--split", "test", "-k", "3",
                                      "--workers", "0", "--device", "cpu"])
    assert scored.exit_code == 0, scored.output
    assert scored.output.splitlines()[1].startswith(f"cut {meta['presence_cut']:.4f} (calibrated on test, top-")
