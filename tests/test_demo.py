"""`jsar demo` end to end on a very small synthetic set: every stage runs and leaves its outputs."""
import json

from PIL import Image

from evaluation.demo import run_demo


def test_demo_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, n_clips=60, epochs=1, workers=0)
    assert (out / "run" / "best.pt").is_file() and (out / "index" / "store.h5").is_file()
    for name in ("localization_fixed", "localization_median", "retrieval"):
        report = json.loads((result.reports[name] / "report.json").read_text())
        assert report
    for sheet in result.pictures.values():
        assert Image.open(sheet).width > 100
    hits = json.loads((out / "audio_query" / "results.json").read_text())["hits"]
    assert len(hits) == 10 and all(Image.open(h["picture"]).size == (160, 160) for h in hits)
    again = run_demo(out, n_clips=60, epochs=1, workers=0)
    assert again.seconds["train"] < 1.0  # the finished run is not trained again
