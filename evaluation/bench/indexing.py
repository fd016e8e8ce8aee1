"""Is the model the bottleneck of `jsar index`? `index_dataset` clips/s against `bare_forward_rate` (the two
encoders alone on random tensors of the configured size, same batch size); goal ratio >= 0.8. The decode cost
per clip, the DataLoader's decode-only rate and the ratio ceiling when decoding shares the model's cores say why a
ratio is low."""
from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from indexing.embed import bare_forward_rate, index_dataset
from indexing.store import EmbeddingStore, StoreMeta, StoreRecords, StoreWriter
from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.clips import Clip, read_dataset
from jsa_retrieval.config import DataConfig
from jsa_retrieval.dataset import InferenceClipDataset, load_audio_window, make_loader
from jsa_retrieval.decode import load_image
from jsa_retrieval.inference import pick_device
from jsa_retrieval.transforms import log_spectrogram, normalise_pixels, squash_image

INDEXING_RATIO_GOAL = 0.8


@dataclass
class IndexingBench:
    """Clips/s of the indexing pipeline against the model alone, and where a clip's time goes.

    model_ms_per_clip is wall time with torch using every core; decode_ms_per_clip is the CPU time one worker
    process spends per clip (1000 / its decode-only rate); the *_ms stages are per clip: worker stages on one
    thread, the main process's batch stages (normalise, spectrogram, transfer) at the torch threads.
    """

    clips: int
    batch_size: int
    workers: int
    torch_threads: int
    index_rate: float  # clips/s through index_dataset: decoding in workers + both encoders + store writes
    bare_rate: float  # clips/s of encode_image + encode_audio on random tensors of the configured size
    decode_rate: float  # clips/s of the DataLoader alone (same workers and batch size, no model)
    decode_ms_per_clip: float
    image_decode_ms: float  # worker: read + decode one image (full decode unless draft), one thread
    image_resize_ms: float  # worker: squash to the model's size (bicubic), one thread
    audio_decode_ms: float  # worker: read + mix to mono + resample + centred window, one thread
    normalise_ms: float  # main process: uint8 -> normalised float, per clip of a batch
    spectrogram_ms: float  # main process: log spectrograms of the batch, per clip
    transfer_ms: float  # main process: batch to the model's device (0 on the CPU)
    store_write_ms: float  # StoreWriter.write + finalize, per clip
    seconds: float

    @property
    def ratio(self) -> float:
        return self.index_rate / self.bare_rate if self.bare_rate > 0 else 0.0

    @property
    def model_ms_per_clip(self) -> float:
        return 1000.0 / self.bare_rate if self.bare_rate > 0 else math.inf

    @property
    def batch_prep_ms(self) -> float:
        """Main-process work per clip between the loader and the encoders (it does not overlap them)."""
        return self.normalise_ms + self.spectrogram_ms + self.transfer_ms

    @property
    def shared_core_ceiling(self) -> float:
        """Best ratio possible when decoding runs on the model's cores: the model needs t_model of every core
        per clip, decoding t_decode of one and the batch preparation t_prep of every core, so a clip takes at
        least t_model + t_prep + t_decode / cores of wall time."""
        model, decode = self.model_ms_per_clip, self.decode_ms_per_clip
        cores = max(self.torch_threads, 1)
        return model / (model + self.batch_prep_ms + decode / cores) if math.isfinite(model) else 0.0

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(ratio=self.ratio, model_ms_per_clip=self.model_ms_per_clip, batch_prep_ms=self.batch_prep_ms,
                      shared_core_ceiling=self.shared_core_ceiling)
        return values


def decode_rate(clips: Sequence[Clip], data_config: DataConfig, batch_size: int, workers: int) -> float:
    """Clips/s of the DataLoader that `index_dataset` uses (same dataset, workers and batch size), no model."""
    loader = make_loader(InferenceClipDataset(clips, data_config), batch_size, num_workers=workers)
    started, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["index"]) if "image" in batch else 0
    return count / (time.perf_counter() - started)


@dataclass
class StageTimes:
    """Milliseconds per clip of each stage of `index_dataset` apart from the encoders (see IndexingBench)."""

    image_decode: float
    image_resize: float
    audio_decode: float
    normalise: float
    spectrogram: float
    transfer: float
    store_write: float


def _per_clip_ms(seconds: float, count: int) -> float:
    return seconds * 1000 / max(count, 1)


def stage_times(clips: Sequence[Clip], data_config: DataConfig, store_meta: StoreMeta, work_dir: Path,
                device: torch.device) -> StageTimes:
    """Where a clip's time goes outside the encoders: the worker stages one by one on one thread, as in a
    DataLoader worker; the main process's stages on the batch of `clips` at the torch threads; the store write
    of as many rows into `work_dir`."""
    size, threads = data_config.image_size, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        began = time.perf_counter()
        images = [load_image(clip.image) for clip in clips]
        decoded = time.perf_counter()
        pixels = torch.stack([torch.from_numpy(np.array(squash_image(image, size))) for image in images])
        resized = time.perf_counter()
        waves = torch.stack([torch.from_numpy(load_audio_window(clip.audio, data_config)) for clip in clips])
        audio_done = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    normalise_pixels(pixels[:1].to(device))  # warm-up: setting up kernels and FFT plans is not per-clip cost
    log_spectrogram(waves[:1].to(device), data_config)
    marks = [time.perf_counter()]
    pixels, waves = pixels.to(device), waves.to(device)
    _synchronize(device)
    marks.append(time.perf_counter())
    normalise_pixels(pixels)
    _synchronize(device)
    marks.append(time.perf_counter())
    log_spectrogram(waves, data_config)
    _synchronize(device)
    marks.append(time.perf_counter())
    count = len(clips)
    writer = StoreWriter(work_dir, store_meta)
    vectors = np.random.default_rng(0).normal(size=(count, store_meta.dim)).astype(np.float32)
    write_started = time.perf_counter()
    writer.write(StoreRecords(ids=[clip.id for clip in clips], labels=[clip.label for clip in clips],
                              image_paths=[str(clip.image) for clip in clips],
                              audio_paths=[str(clip.audio) for clip in clips],
                              image_vectors=vectors, audio_vectors=vectors), list(range(count)))
    writer.finalize()
    written = time.perf_counter()
    return StageTimes(image_decode=_per_clip_ms(decoded - began, count),
                      image_resize=_per_clip_ms(resized - decoded, count),
                      audio_decode=_per_clip_ms(audio_done - resized, count),
                      transfer=_per_clip_ms(marks[1] - marks[0], count) if device.type != "cpu" else 0.0,
                      normalise=_per_clip_ms(marks[2] - marks[1], count),
                      spectrogram=_per_clip_ms(marks[3] - marks[2], count),
                      store_write=_per_clip_ms(written - write_started, count))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_indexing(data_dir: str | Path, checkpoint: str | Path, index_dir: str | Path, batch_size: int = 64,
                   workers: int = 2, bare_batches: int = 10, device: str | None = None) -> IndexingBench:
    """Index `data_dir` into `index_dir` (which must not hold a store yet) and compare with the bare model.

    The bare rate is measured right before and right after indexing, so both see the same machine load; their
    harmonic mean (total clips over total time) is the reference.
    """
    started = time.perf_counter()
    bare_before = bare_forward_rate(Path(checkpoint), batch_size=batch_size, batches=bare_batches, device=device)
    summary = index_dataset(Path(data_dir), Path(checkpoint), Path(index_dir), batch_size=batch_size,
                            num_workers=workers, device=device, progress=False)
    if summary.already_done:
        raise ValueError(f"{index_dir} already held {summary.already_done} embedded clips; give an empty folder")
    bare_after = bare_forward_rate(Path(checkpoint), batch_size=batch_size, batches=bare_batches, device=device)
    bare = 2 / (1 / bare_before + 1 / bare_after)
    _, config, _ = load_model(checkpoint)
    with EmbeddingStore.open(index_dir) as store:  # the store index_dataset just wrote knows its meta
        meta = store.meta
    clips = read_dataset(data_dir).clips
    loader_rate = decode_rate(clips, config.data, batch_size, workers)
    one_worker = loader_rate if workers == 1 else decode_rate(clips, config.data, batch_size, min(workers, 1))
    with tempfile.TemporaryDirectory(prefix="jsar-stage-times-") as scratch:
        stages = stage_times(clips[:batch_size], config.data, meta, Path(scratch), pick_device(device))
    return IndexingBench(clips=summary.embedded, batch_size=batch_size, workers=workers,
                         torch_threads=torch.get_num_threads(), index_rate=summary.clips_per_second,
                         bare_rate=bare, decode_rate=loader_rate, decode_ms_per_clip=1000.0 / one_worker,
                         image_decode_ms=stages.image_decode, image_resize_ms=stages.image_resize,
                         audio_decode_ms=stages.audio_decode, normalise_ms=stages.normalise,
                         spectrogram_ms=stages.spectrogram, transfer_ms=stages.transfer,
                         store_write_ms=stages.store_write, seconds=time.perf_counter() - started)
