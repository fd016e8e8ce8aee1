"""`run_benchmarks`: the indexing and FAISS benchmarks side by side in one run, so every ratio compares numbers
taken under the same load (the project's machines: 2 shared cores, no GPU; the target scale: up to a few million
clips on one machine)."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from indexing.embed import index_dataset
from indexing.store import EmbeddingStore
from jsa_retrieval.machine import machine_info

from .augmented import augmented_encodings
from .config import DEFAULT_CLIPS, QUICK_CLIPS, BenchConfig, FaissSettings
from .faiss_scale import FaissBench, GivenRows, bench_faiss_scale
from .indexing import bench_indexing
from .report import BenchReport
from .workspace import checkpoint_or_random, clips_or_synthetic, workspace

logger = logging.getLogger(__name__)


def run_benchmarks(config: BenchConfig | None = None, indexing: bool = True, faiss_scale: bool = True) -> BenchReport:
    """Run the indexing and FAISS benchmarks of `config` (either may be switched off) and return the report.

    The FAISS bases are the vectors the indexing step stored, so that step runs (untimed when indexing=False),
    unless `config.faiss.vectors_from` names a folder `jsar index` made: its vectors are the bases. The 1M
    benchmark needs about 12 GB of disk in the work folder; its store is removed after the run, the clips and
    their index are kept with a kept work folder.
    """
    config = config or BenchConfig()
    settings = config.faiss.resolved(config.quick)
    started = time.perf_counter()
    machine = machine_info(config.device)
    with workspace(config.work_dir) as root:
        checkpoint, data_dir = config.checkpoint, config.data_dir
        if indexing or settings.vectors_from is None:
            checkpoint = checkpoint_or_random(root, checkpoint, config.seed)
            data_dir = clips_or_synthetic(root, data_dir, config.clip_count(DEFAULT_CLIPS, QUICK_CLIPS), config.seed)
        clip_index = root / "clip-index"
        if clip_index.exists():
            shutil.rmtree(clip_index)
        indexing_bench = None
        if indexing:
            logger.info("indexing benchmark: bare encoders, index_dataset, decode-only")
            indexing_bench = bench_indexing(data_dir, checkpoint, clip_index, config.batch_size, config.workers,
                                            device=config.device)
        elif faiss_scale and settings.vectors_from is None:
            index_dataset(Path(data_dir), Path(checkpoint), clip_index, batch_size=config.batch_size,
                          num_workers=config.workers, device=config.device, progress=False)
        faiss_bench = None
        if faiss_scale:
            image, audio = store_vectors(Path(settings.vectors_from) if settings.vectors_from else clip_index)
            scale_dir = root / "scale-index"
            if scale_dir.exists():
                shutil.rmtree(scale_dir)
            faiss_bench = bench_faiss_scale(scale_dir, image, audio, settings, seed=config.seed)
            shutil.rmtree(scale_dir)  # gigabytes: a kept work folder keeps the clips, not the scale store
        augmented_bench = None
        if faiss_scale and settings.augmented_from is not None:
            augmented_bench = bench_augmented(root / "augmented-index", settings, checkpoint or config.checkpoint,
                                              config.batch_size, config.workers, config.seed,
                                              cache_dir=root / "augmented-encodings")
        report = BenchReport(machine=machine, indexing=indexing_bench, faiss_scale=faiss_bench,
                             seconds=time.perf_counter() - started, faiss_augmented=augmented_bench)
    if config.json_path is not None:
        Path(config.json_path).write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return report


def bench_augmented(index_dir: Path, settings: FaissSettings, checkpoint: Path | None, batch_size: int,
                    workers: int, seed: int, cache_dir: Path | None = None) -> FaissBench:
    """The FAISS benchmark on real augmented encodings (bench.augmented) of `settings.augmented_from`'s clips:
    `augmented_vectors` rows (default: as many as the noisy-copy store) and each direction's queries, further
    augmentations from another seed. The encodings are kept in `cache_dir`, one file per seed (the work folder's:
    a kept `--work-dir` reuses them for any count and resumes an interrupted encoding)."""
    if checkpoint is None:
        raise ValueError("real augmented encodings need the trained model: give --checkpoint")
    rows = settings.augmented_vectors or settings.vectors
    count = max(settings.latency_queries, settings.batch_queries, settings.recall_queries)
    logger.info(f"encoding {rows:,} augmented views of {settings.augmented_from} (+ {count:,} query views)")

    def cache(views_seed: int) -> Path | None:
        return None if cache_dir is None else cache_dir / f"views-seed{views_seed}.h5"

    image, audio, clips = augmented_encodings(settings.augmented_from, Path(checkpoint), rows, settings.dim, seed,
                                              batch_size, workers, cache(seed))
    query_image, query_audio, _ = augmented_encodings(settings.augmented_from, Path(checkpoint), count, settings.dim,
                                                      seed + 1, batch_size, workers, cache(seed + 1))
    given = GivenRows(image=image, audio=audio, clips=clips,
                      queries={"audio->image": query_audio, "image->audio": query_image})
    if index_dir.exists():
        shutil.rmtree(index_dir)
    try:
        return bench_faiss_scale(index_dir, image, audio, settings, seed=seed, given=given)
    finally:
        shutil.rmtree(index_dir, ignore_errors=True)


def store_vectors(index_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every (image, audio) vector of the store in `index_dir`: the bases of the FAISS benchmark."""
    with EmbeddingStore.open(index_dir) as store:
        rows = np.arange(len(store))
        return store.read_rows("image_vectors", rows), store.read_rows("audio_vectors", rows)
