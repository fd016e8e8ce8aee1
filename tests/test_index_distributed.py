"""`jsar index` under torchrun: two ranks (gloo, CPU) embed their shares and one merge makes the store that a
single process makes, and every rank exits cleanly."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from indexing.embed import index_dataset
from indexing.store import PARTS_DIR, EmbeddingStore
from jsa_retrieval.synth import SynthConfig, generate
from helpers import tiny_checkpoint


def read_store(index_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with EmbeddingStore.open(index_dir) as store:
        rows = np.arange(len(store))
        return store.ids(), store.read_rows("image_vectors", rows), store.read_rows("audio_vectors", rows)


def test_torchrun_two_ranks_write_the_single_process_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate(data, SynthConfig(n_clips=21, seed=5, image_size=64, seconds=1.0), progress=False)
    checkpoint = tiny_checkpoint(tmp_path / "model.pt")
    single = index_dataset(data, checkpoint, tmp_path / "single", batch_size=4, num_workers=0, device="cpu",
                           progress=False)
    assert single.rows == 21

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "jsa_retrieval.cli", "-q", "index", str(data), "--checkpoint", str(checkpoint),
               "--out", str(tmp_path / "ranks"), "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert run.stdout.count("21 clips in") == 1  # only rank 0 reports, once the store is merged
    assert "(11 embedded now" in run.stdout  # rank 0 embedded its share: clips 0, 2, ..., 20

    ids, image, audio = read_store(tmp_path / "ranks")
    expected_ids, expected_image, expected_audio = read_store(tmp_path / "single")
    assert ids == expected_ids  # the clip list's order, whichever rank embedded a clip
    np.testing.assert_allclose(image, expected_image, rtol=0, atol=1e-6)  # other batches: float rounding only
    np.testing.assert_allclose(audio, expected_audio, rtol=0, atol=1e-6)
    assert not (tmp_path / "ranks" / PARTS_DIR).exists()
    assert {"image.faiss", "audio.faiss", "store.h5"} <= {p.name for p in (tmp_path / "ranks").iterdir()}
