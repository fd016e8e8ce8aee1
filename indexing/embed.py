"""Embed a dataset into the HDF5 store, then build its FAISS indexes (or push it to Milvus): the library side
of `jsar index`.

DataLoader workers read, decode and resize each clip (`InferenceClipDataset`); normalisation and spectrograms run
per batch where the model runs (`model_inputs`), so the model is the bottleneck. The store writer keeps every batch in
crash-safe part files, so a killed run resumes by embedding only what is missing; clips that fail to decode
are skipped and listed in INDEX_DIR/skipped.tsv. Under torchrun each rank embeds its share of the clips
into its own parts and rank 0 merges them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.clips import read_dataset
from jsa_retrieval.dataset import FailureLog, InferenceClipDataset, make_loader, model_inputs
from jsa_retrieval.inference import iter_embeddings, pick_device
from jsa_retrieval.files import file_sha256
from jsa_retrieval import distributed

from .faiss_index import build_indexes
from .milvus_backend import MilvusTarget, check_reachable, push_store
from .store import StoreMeta, StoreRecords, StoreWriter, make_fingerprint

SKIPPED_REPORT = "skipped.tsv"


@dataclass
class IndexSummary:
    index_dir: Path
    clips_found: int
    embedded: int
    already_done: int
    skipped: int
    rows: int
    seconds: float
    index_info: dict

    @property
    def clips_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0




def store_meta_for(checkpoint: Path, config, model_name: str, dim: int) -> StoreMeta:
    """The store's identity: checkpoint hash + config + model name; queries refuse any other model."""
    fingerprint = make_fingerprint(file_sha256(checkpoint), config.to_dict(), model_name)
    return StoreMeta(fingerprint=fingerprint, model_name=model_name, config=config.to_dict(),
                     checkpoint=str(Path(checkpoint).resolve()), dim=dim)


def index_dataset(data_dir: Path, checkpoint: Path, index_dir: Path, split: str | None = None,
                  annotations: Path | None = None, batch_size: int = 64, num_workers: int = 2,
                  device: str | None = None, factory: str | None = None, memory_budget: int | None = None,
                  progress: bool = True, draft: bool = False, milvus: MilvusTarget | None = None) -> IndexSummary:
    """Embed every clip of `data_dir` not yet in INDEX_DIR's store, finalise the store, build both indexes
    (FAISS; or with `milvus`, upsert the store into its collections instead: `milvus_backend.push_store`).

    draft: decode large JPEGs (>= 4x the image size) in Pillow's draft mode, several times cheaper, at a small
    cost in fidelity (`InferenceClipDataset`); off: every image decoded in full, as evaluation does.
    """
    index_dir = Path(index_dir)
    if milvus is not None:
        check_reachable(milvus)
    joined_here = not distributed.is_distributed()
    device_ = distributed.setup_distributed(device)  # joins torchrun's group (gloo on CPU, nccl on CUDA)
    rank, world = distributed.rank(), distributed.world_size()
    try:
        return _index_shard(data_dir, checkpoint, index_dir, split, annotations, batch_size, num_workers,
                            device_, factory, memory_budget, progress and rank == 0, draft, rank, world, milvus)
    finally:
        if joined_here:
            distributed.cleanup_distributed()


def _index_shard(data_dir: Path, checkpoint: Path, index_dir: Path, split: str | None, annotations: Path | None,
                 batch_size: int, num_workers: int, device_: torch.device, factory: str | None,
                 memory_budget: int | None, progress: bool, draft: bool, rank: int, world: int,
                 milvus: MilvusTarget | None = None) -> IndexSummary:
    """This rank's share of `index_dataset`; rank 0 merges the parts once every rank has flushed its own."""
    model, config, _ = load_model(checkpoint, map_location=device_)
    clips = read_dataset(data_dir, split, annotations).clips
    writer = StoreWriter(index_dir, store_meta_for(checkpoint, config, model.model_name, model.vector_dim),
                         rank=rank)
    done = writer.done_ids()
    if world > 1:
        dist.barrier()  # every rank has listed what is done before any rank writes a part: the shards agree
    todo = [position for position, clip in enumerate(clips) if clip.id not in done][rank::world]
    dataset = InferenceClipDataset([clips[p] for p in todo], config.data, draft=draft)
    loader = make_loader(dataset, batch_size, num_workers=num_workers, device=device_)
    failures = FailureLog()
    started = time.monotonic()
    embedded = 0
    with tqdm(total=len(todo), desc="embedding", unit="clip", disable=not progress) as bar:
        batches = (model_inputs(batch, config.data, device_) for batch in loader)
        for batch in iter_embeddings(model, batches, device_):
            failures.extend(batch.failed)
            bar.update(len(batch.indices) + len(batch.failed))
            if batch.image is None:
                continue
            chosen = [clips[todo[i]] for i in batch.indices.tolist()]
            writer.write(StoreRecords(
                ids=[c.id for c in chosen], labels=[c.label or "" for c in chosen],
                image_paths=[str(Path(c.image).resolve()) for c in chosen],
                audio_paths=[str(Path(c.audio).resolve()) for c in chosen],
                image_vectors=batch.image.vector.numpy(), audio_vectors=batch.audio.vector.numpy(),
            ), [todo[i] for i in batch.indices.tolist()])
            embedded += len(chosen)
    writer.flush()
    seconds = time.monotonic() - started
    if world > 1:
        dist.barrier()
    skipped = _gather_failures(failures, world)
    if rank != 0:
        return IndexSummary(index_dir, len(clips), embedded, len(done), len(skipped), 0, seconds, {})
    writer.finalize()
    (index_dir / SKIPPED_REPORT).write_text("".join(f"{i}\t{reason}\n" for i, reason in skipped))
    info = (push_store(index_dir, milvus, progress=progress) if milvus is not None
            else build_indexes(index_dir, factory=factory, memory_budget=memory_budget, progress=progress))
    return IndexSummary(index_dir, len(clips), embedded, len(done), len(skipped), info["store_rows"], seconds, info)


def _gather_failures(failures: FailureLog, world: int) -> list[tuple[str, str]]:
    if world == 1:
        return list(failures.failures)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, failures.failures)
    return [item for part in gathered for item in part]


@torch.no_grad()
def bare_forward_rate(checkpoint: Path, batch_size: int = 64, batches: int = 5, device: str | None = None) -> float:
    """Clips/s of the model's two encoders alone on random inputs of the configured size (no decoding):
    the ceiling the indexing loop is measured against."""
    device_ = pick_device(device)
    model, config, _ = load_model(checkpoint, map_location=device_)
    size = config.data.image_size
    images = torch.randn(batch_size, 3, size, size, device=device_)
    audio = torch.randn(batch_size, 1, *config.data.spectrogram_shape, device=device_)
    model.encode_image(images), model.encode_audio(audio)
    started = time.monotonic()
    for _ in range(batches):
        model.encode_image(images), model.encode_audio(audio)
    if device_.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * batches / (time.monotonic() - started)
