"""`jsar demo`: the whole product on the embedded synthetic data, end to end, in minutes on a CPU.

synth → train JSA (cpu configuration) → index the test split → one audio and one image query →
localization and retrieval reports. Each stage is skipped when its output already exists, so an
interrupted demo resumes where it stopped.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from indexing.embed import index_dataset
from indexing.engine import Engine
from jsa_retrieval.clips import read_dataset
from jsa_retrieval.config import get_config
from jsa_retrieval.synth import SynthConfig, generate
from training.trainer import train

from .localization import evaluate_localization
from .reports import write_report
from .retrieval import evaluate_retrieval

logger = logging.getLogger(__name__)


@dataclass
class DemoResult:
    out_dir: Path
    checkpoint: Path
    index_dir: Path
    reports: dict[str, Path] = field(default_factory=dict)
    pictures: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(out_dir: Path = Path("demo_out"), n_clips: int = 2000, train_minutes: float = 9.0,
             epochs: int | None = None, seed: int = 0, workers: int = 2) -> DemoResult:
    """Run every stage into `out_dir`; `train_minutes` caps training (it stops after the epoch that passes it)."""
    out_dir = Path(out_dir)
    data_dir, run_dir, index_dir = out_dir / "data", out_dir / "run", out_dir / "index"
    seconds: dict[str, float] = {}

    started = time.monotonic()
    if not (data_dir / "synth.json").is_file():
        logger.info(f"[1/5] writing {n_clips} synthetic clips to {data_dir}")
        generate(data_dir, SynthConfig(n_clips=n_clips, seed=seed))
    seconds["synth"] = time.monotonic() - started

    started = time.monotonic()
    config = get_config("cpu")
    config.train.seed = seed
    config.train.num_workers = workers
    checkpoint = run_dir / "best.pt"
    if not (run_dir / "done").is_file():
        logger.info(f"[2/5] training JSA (cpu configuration, at most ~{train_minutes:g} min) into {run_dir}")
        train(data_dir, config, "jsa", run_dir, resume=True, epochs=epochs, max_minutes=train_minutes)
        (run_dir / "done").write_text("training finished\n")
    seconds["train"] = time.monotonic() - started

    started = time.monotonic()
    logger.info(f"[3/5] indexing the test split into {index_dir}")
    index_dataset(data_dir, checkpoint, index_dir, split="test", num_workers=workers)
    seconds["index"] = time.monotonic() - started

    started = time.monotonic()
    logger.info("[4/5] querying by sound and by picture")
    query_clip = read_dataset(data_dir, split="test").clips[0]
    engine = Engine.open(index_dir)
    pictures = {}
    for kind, search, path in (("audio_query", engine.search_audio, query_clip.audio),
                               ("image_query", engine.search_image, query_clip.image)):
        result = search(path, 10)
        engine.write_outputs(result, out_dir / kind)
        pictures[kind] = Path(result.contact_sheet)
        top = ", ".join(f"{h.label} {h.score:.2f}" for h in result.hits[:3])
        logger.info(f"  {kind.replace('_', ' ')} ({query_clip.label}, {Path(path).name}): top hits {top}")
    seconds["query"] = time.monotonic() - started

    started = time.monotonic()
    logger.info("[5/5] evaluating localization and retrieval on the test split")
    reports = {}
    for threshold in ("fixed", "median"):
        report = evaluate_localization(checkpoint, data_dir, split="test", threshold=threshold, num_workers=workers)
        reports[f"localization_{threshold}"] = write_report(
            report, out_dir / "reports" / f"localization_{threshold}", f"Localization on synthetic test ({threshold})")
    reports["retrieval"] = write_report(evaluate_retrieval(index_dir), out_dir / "reports" / "retrieval",
                                        "Cross-modal retrieval on synthetic test")
    seconds["eval"] = time.monotonic() - started
    return DemoResult(out_dir, checkpoint, index_dir, reports, pictures, seconds)
