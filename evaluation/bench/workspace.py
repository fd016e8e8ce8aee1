"""Where a benchmark works and what it measures when it is given nothing: a kept or temporary folder, a randomly
initialised checkpoint and a synthetic set made there. Every benchmark of the package sets up through here."""
from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from jsa_retrieval.checkpoints import checkpoint_state
from jsa_retrieval.config import get_config
from jsa_retrieval.models import create_model
from jsa_retrieval.synth import SynthConfig, generate

logger = logging.getLogger(__name__)


@contextmanager
def workspace(work_dir: str | Path | None, prefix: str = "jsar-bench-") -> Iterator[Path]:
    """`work_dir` (made if missing, kept), or a temporary folder removed when the block ends."""
    temporary = tempfile.TemporaryDirectory(prefix=prefix) if work_dir is None else None
    root = Path(temporary.name if temporary else work_dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    finally:
        if temporary is not None:
            temporary.cleanup()


def make_random_checkpoint(path: str | Path, config_name: str = "cpu", model_name: str = "jsa",
                           seed: int = 0) -> Path:
    """A randomly initialised checkpoint in the trainer's format (`checkpoint_state`): lets a benchmark run where
    no trained model exists. Timing does not depend on the weights; the FAISS benchmark centres the collapsed
    vectors such a model makes."""
    config = get_config(config_name)
    config.model.image_weights = "none"  # the benchmark must run offline, without ImageNet weights
    torch.manual_seed(seed)
    model = create_model(config, model_name)
    path = Path(path)
    torch.save(checkpoint_state(model, config, meta={"note": f"random initialisation, seed {seed}"}), path)
    return path


def make_synthetic_data(out_dir: str | Path, clips: int, seed: int = 0) -> Path:
    """The synthetic benchmark (jsa_retrieval.synth) at its default 160 px / 3 s: what `jsar demo` indexes."""
    generate(out_dir, SynthConfig(n_clips=clips, seed=seed), progress=False)
    return Path(out_dir)


def checkpoint_or_random(root: Path, checkpoint: str | Path | None, seed: int = 0) -> Path:
    """`checkpoint`, else a random cpu-config JSA saved in `root`."""
    if checkpoint is not None:
        return Path(checkpoint)
    made = make_random_checkpoint(root / "random-cpu-jsa.pt", seed=seed)
    logger.info(f"random cpu-config JSA checkpoint: {made}")
    return made


def clips_or_synthetic(root: Path, data_dir: str | Path | None, clips: int, seed: int = 0) -> Path:
    """`data_dir`, else `clips` synthetic clips made in ROOT/synthetic."""
    if data_dir is not None:
        return Path(data_dir)
    logger.info(f"making {clips} synthetic clips")
    return make_synthetic_data(root / "synthetic", clips, seed)
