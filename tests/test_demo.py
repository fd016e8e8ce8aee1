"""`jsar demo` end to end on a very small synthetic set: every stage runs and leaves its outputs, and a second
call reuses the finished training instead of training again."""
import json

import pytest
from PIL import Image

import evaluation.demo
from evaluation.demo import run_demo


def check_localization_report(report: dict, threshold: str, checkpoint) -> None:
    assert report["kind"] == "localization" and report["threshold"] == threshold
    assert report["checkpoint"] == str(checkpoint) and report["split"] == "test"
    assert report["n_clips"] == report["n_evaluated"] == 12  # 60 clips: the test split holds 12
    assert set(report["columns"]) == {"plain", "+IQR"}
    for column in report["columns"].values():
        assert column["n"] == 12
        assert all(0.0 <= column[key] <= 1.0 for key in ("ap50", "mean_ciou", "auc", "pointing_game"))
        per_clip = report["per_clip"]["ciou"][column["column"]]
        assert column["mean_ciou"] == pytest.approx(sum(per_clip) / len(per_clip))


def check_retrieval_report(report: dict) -> None:
    assert report["kind"] == "retrieval" and report["n_items"] == report["gallery_size"] == 12
    for direction in ("audio_to_image", "image_to_audio"):
        recall = report["directions"][direction]["recall"]
        assert recall["1"] <= recall["5"] <= recall["10"] <= 1.0
        assert all((value * 12) == pytest.approx(round(value * 12)) for value in recall.values())  # hits of 12


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes_without_training_again(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    result = run_demo(out, n_clips=60, epochs=1, workers=0)
    checkpoint = out / "run" / "best.pt"
    assert result.checkpoint == checkpoint and checkpoint.is_file() and (out / "index" / "store.h5").is_file()
    for threshold in ("fixed", "median"):
        report = json.loads((result.reports[f"localization_{threshold}"] / "report.json").read_text())
        check_localization_report(report, threshold, checkpoint)
    check_retrieval_report(json.loads((result.reports["retrieval"] / "report.json").read_text()))
    for sheet in result.pictures.values():
        assert Image.open(sheet).width > 100
    hits = json.loads((out / "audio_query" / "results.json").read_text())["hits"]
    assert len(hits) == 10 and all(Image.open(h["picture"]).size == (160, 160) for h in hits)

    trained = checkpoint.stat().st_mtime_ns, checkpoint.read_bytes()
    monkeypatch.setattr(evaluation.demo, "train", lambda *args, **kwargs: pytest.fail("the demo trained again"))
    again = run_demo(out, n_clips=60, epochs=1, workers=0)
    assert again.checkpoint == checkpoint and (checkpoint.stat().st_mtime_ns, checkpoint.read_bytes()) == trained
