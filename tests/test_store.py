"""The HDF5 embedding store: round trip, crash-safe resume, appends, fingerprints, lazy reading."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from jsa_retrieval.files import file_sha256
from indexing.store import (PARTS_DIR, STORE_FILE, EmbeddingStore, FingerprintMismatch, StoreMeta, StoreRecords,
                            StoreWriter, l2_normalise, make_fingerprint)

DIM = 32
NUM_CLIPS = 300


def make_meta(fingerprint: str = "fp-a", dim: int = DIM) -> StoreMeta:
    return StoreMeta(fingerprint=fingerprint, model_name="jsa", config={"model": {"embed_dim": dim}, "name": "cpu"},
                     checkpoint="/ckpt/model.pt", dim=dim)


def make_dataset(num_clips: int = NUM_CLIPS, dim: int = DIM, seed: int = 0) -> StoreRecords:
    """The caller's full clip list: ids, mixed known/unknown labels, unicode paths, raw (unnormalised) vectors."""
    rng = np.random.default_rng(seed)
    return StoreRecords(
        ids=[f"clip_{i:05d}" for i in range(num_clips)],
        labels=[None if i % 7 == 0 else f"class_{i % 5}" for i in range(num_clips)],
        image_paths=[f"/data/frames/clip_{i:05d}_é.jpg" for i in range(num_clips)],
        audio_paths=[f"/data/audio/clip_{i:05d}_音.wav" for i in range(num_clips)],
        image_vectors=rng.normal(size=(num_clips, dim)) * 3.0,
        audio_vectors=rng.normal(size=(num_clips, dim)).astype(np.float32),
    )


def subset(records: StoreRecords, rows: np.ndarray | list[int]) -> StoreRecords:
    rows = list(rows)
    return StoreRecords(ids=[records.ids[i] for i in rows], labels=[records.labels[i] for i in rows],
                        image_paths=[records.image_paths[i] for i in rows],
                        audio_paths=[records.audio_paths[i] for i in rows],
                        image_vectors=records.image_vectors[rows], audio_vectors=records.audio_vectors[rows])


def embed(writer: StoreWriter, dataset: StoreRecords, batch_size: int, order: np.ndarray | None = None) -> None:
    """What the embedding loop does: skip done ids, write the rest in batches with their list positions."""
    done = writer.done_ids()
    todo = [i for i in (range(len(dataset)) if order is None else order) if dataset.ids[i] not in done]
    for start in range(0, len(todo), batch_size):
        rows = todo[start:start + batch_size]
        writer.write(subset(dataset, rows), positions=rows)


def read_all(index_dir: Path) -> dict[str, object]:
    with EmbeddingStore.open(index_dir) as store:
        return {"ids": store.ids(), "labels": store.labels(),
                "image_paths": store.column("image_paths"), "audio_paths": store.column("audio_paths"),
                "image_vectors": np.concatenate([b for _, b in store.iter_chunks("image_vectors", 64)]),
                "audio_vectors": np.concatenate([b for _, b in store.iter_chunks("audio_vectors", 64)])}


def assert_same_store(first: dict[str, object], second: dict[str, object]) -> None:
    for field in ("ids", "labels", "image_paths", "audio_paths"):
        assert first[field] == second[field], field
    for field in ("image_vectors", "audio_vectors"):
        assert np.array_equal(first[field], second[field]), field


def test_round_trip_keeps_vectors_ids_labels_paths_and_attrs(tmp_path: Path) -> None:
    dataset = make_dataset()
    writer = StoreWriter(tmp_path, make_meta(), chunk_rows=100)
    embed(writer, dataset, batch_size=64)
    assert writer.finalize() == tmp_path / STORE_FILE
    assert not (tmp_path / PARTS_DIR).exists()

    with EmbeddingStore.open(tmp_path) as store:
        assert len(store) == NUM_CLIPS and store.meta == make_meta()
        assert store.ids() == dataset.ids
        assert store.labels() == ["" if label is None else label for label in dataset.labels]
        assert store.column("image_paths") == dataset.image_paths
        assert store.column("audio_paths") == dataset.audio_paths
        chunks = list(store.iter_chunks("image_vectors", chunk_rows=128))
        assert [start for start, _ in chunks] == [0, 128, 256]
        image = np.concatenate([block for _, block in chunks])
        assert image.dtype == np.float32
        assert np.array_equal(image, l2_normalise(dataset.image_vectors))
        np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-6)
        rows = np.array([299, 3, 3, 150, 0])
        assert np.array_equal(store.read_rows("audio_vectors", rows), l2_normalise(dataset.audio_vectors)[rows])
        assert store.read_rows("ids", rows).tolist() == [dataset.ids[i] for i in rows]
        hit = store.record(14)
        assert (hit.row, hit.id, hit.label, hit.image_path) == (14, "clip_00014", None, dataset.image_paths[14])
        assert store.record(-1).label == dataset.labels[-1]

    with h5py.File(tmp_path / STORE_FILE, "r") as handle:
        vectors = handle["image_vectors"]
        assert vectors.compression is None and vectors.chunks is not None and vectors.maxshape == (None, DIM)
        assert handle.attrs["fingerprint"] == "fp-a" and handle.attrs["model_name"] == "jsa"
        assert handle.attrs["checkpoint"] == "/ckpt/model.pt" and int(handle.attrs["dim"]) == DIM


def test_rows_follow_caller_positions_not_write_order(tmp_path: Path) -> None:
    dataset = make_dataset(120)
    writer = StoreWriter(tmp_path, make_meta(), chunk_rows=25)
    embed(writer, dataset, batch_size=16, order=np.random.default_rng(3).permutation(120))
    writer.finalize()
    assert read_all(tmp_path)["ids"] == dataset.ids


def test_resume_after_crash_gives_the_store_of_an_uninterrupted_run(tmp_path: Path) -> None:
    dataset = make_dataset()
    clean_dir, crash_dir = tmp_path / "clean", tmp_path / "crash"
    clean = StoreWriter(clean_dir, make_meta(), chunk_rows=64)
    embed(clean, dataset, batch_size=32)
    clean.finalize()

    crashed = StoreWriter(crash_dir, make_meta(), chunk_rows=64)
    for start in range(0, 150, 30):  # 150 rows written: parts of 90 rows flushed, 60 still buffered
        crashed.write(subset(dataset, range(start, start + 30)), positions=range(start, start + 30))
    del crashed  # killed: no flush, no finalize
    (crash_dir / PARTS_DIR / ".tmp-part-r000-000001.h5").write_bytes(b"half-written part")
    (crash_dir / ".tmp-store.h5").write_bytes(b"half-written merge")

    resumed = StoreWriter(crash_dir, make_meta(), chunk_rows=50)
    assert not list((crash_dir / PARTS_DIR).glob(".tmp-*"))
    assert resumed.done_ids() == set(dataset.ids[:90])
    embed(resumed, dataset, batch_size=17)
    resumed.finalize()
    assert_same_store(read_all(clean_dir), read_all(crash_dir))
    assert not (crash_dir / PARTS_DIR).exists() and not list(crash_dir.glob(".tmp-*"))


def test_parts_left_by_a_finalize_that_died_after_the_rename_are_not_merged_twice(tmp_path: Path) -> None:
    dataset = make_dataset(90)
    writer = StoreWriter(tmp_path / "index", make_meta(), chunk_rows=40)
    embed(writer, dataset, batch_size=40)
    writer.flush()
    shutil.copytree(tmp_path / "index" / PARTS_DIR, tmp_path / "parts_copy")
    writer.finalize()
    before = read_all(tmp_path / "index")
    shutil.copytree(tmp_path / "parts_copy", tmp_path / "index" / PARTS_DIR)

    again = StoreWriter(tmp_path / "index", make_meta(), chunk_rows=40)
    assert again.done_ids() == set(dataset.ids)
    again.finalize()
    assert_same_store(before, read_all(tmp_path / "index"))


def test_appending_new_clips_keeps_existing_rows_first(tmp_path: Path) -> None:
    dataset = make_dataset(160)
    first = StoreWriter(tmp_path, make_meta(), chunk_rows=64)
    embed(first, subset(dataset, range(100)), batch_size=32)
    first.finalize()
    old = read_all(tmp_path)

    second = StoreWriter(tmp_path, make_meta(), chunk_rows=64)
    assert second.done_ids() == set(dataset.ids[:100])
    embed(second, dataset, batch_size=13, order=np.random.default_rng(1).permutation(160))
    second.finalize()
    new = read_all(tmp_path)
    assert new["ids"] == dataset.ids
    assert np.array_equal(new["image_vectors"][:100], old["image_vectors"])
    assert np.array_equal(new["audio_vectors"][100:], l2_normalise(dataset.audio_vectors[100:]))


def test_ranks_write_their_own_parts_and_one_merge_orders_them(tmp_path: Path) -> None:
    dataset = make_dataset(100)
    ranks = [StoreWriter(tmp_path, make_meta(), chunk_rows=16, rank=rank) for rank in range(2)]
    for rank, writer in enumerate(ranks):  # DistributedSampler-style shards: every second clip
        embed(writer, dataset, batch_size=8, order=np.arange(rank, 100, 2))
        writer.flush()
    ranks[0].finalize()
    assert_same_store(read_all(tmp_path), {**vars(dataset), "labels": [label or "" for label in dataset.labels],
                                          "image_vectors": l2_normalise(dataset.image_vectors),
                                          "audio_vectors": l2_normalise(dataset.audio_vectors)})


def test_writer_can_append_again_after_finalize(tmp_path: Path) -> None:
    dataset = make_dataset(40)
    writer = StoreWriter(tmp_path, make_meta(), chunk_rows=16)
    writer.write(subset(dataset, range(25)), positions=range(25))
    writer.finalize()
    writer.write(subset(dataset, range(25, 40)), positions=range(25, 40))
    writer.finalize()
    assert read_all(tmp_path)["ids"] == dataset.ids


def test_other_fingerprint_is_refused_for_a_store_and_for_parts(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "finished", make_meta("fp-a"), chunk_rows=16)
    embed(writer, make_dataset(20), batch_size=8)
    writer.finalize()
    with pytest.raises(FingerprintMismatch, match="fingerprint") as refused:
        StoreWriter(tmp_path / "finished", make_meta("fp-b"))
    assert "\n" not in str(refused.value)

    partial = StoreWriter(tmp_path / "partial", make_meta("fp-a"), chunk_rows=16)
    embed(partial, make_dataset(20), batch_size=16)
    with pytest.raises(FingerprintMismatch):
        StoreWriter(tmp_path / "partial", make_meta("fp-b"))


def test_fingerprint_depends_on_checkpoint_config_and_model(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    digest = file_sha256(checkpoint)
    base = make_fingerprint(digest, {"a": 1, "b": 2}, "jsa")
    assert base == make_fingerprint(digest, {"b": 2, "a": 1}, "jsa")
    variants = {base, make_fingerprint(digest, {"a": 1, "b": 3}, "jsa"),
                make_fingerprint(digest, {"a": 1, "b": 2}, "ezvsl"),
                make_fingerprint(file_sha256(__file__), {"a": 1, "b": 2}, "jsa")}
    assert len(variants) == 4


def test_duplicate_clip_ids_are_rejected(tmp_path: Path) -> None:
    dataset = make_dataset(10)
    writer = StoreWriter(tmp_path, make_meta(), chunk_rows=4)
    writer.write(subset(dataset, [0, 1, 2]), positions=[0, 1, 2])
    writer.write(subset(dataset, [2, 3]), positions=[7, 3])
    with pytest.raises(ValueError, match="clip_00002"):
        writer.finalize()


def test_write_rejects_bad_shapes_and_non_finite_vectors(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path, make_meta())
    dataset = make_dataset(4)
    with pytest.raises(ValueError, match="positions"):
        writer.write(dataset, positions=[0, 1])
    wrong_dim = subset(dataset, range(4))
    wrong_dim.image_vectors = wrong_dim.image_vectors[:, :5]
    with pytest.raises(ValueError, match="image_vectors"):
        writer.write(wrong_dim, positions=range(4))
    broken = subset(dataset, range(4))
    broken.audio_vectors[2, 0] = np.nan
    with pytest.raises(ValueError, match="clip_00002"):
        writer.write(broken, positions=range(4))


def test_empty_run_makes_an_empty_store(tmp_path: Path) -> None:
    StoreWriter(tmp_path, make_meta()).finalize()
    with EmbeddingStore.open(tmp_path) as store:
        assert len(store) == 0 and store.ids() == []
        assert store.read_rows("image_vectors", []).shape == (0, DIM)


def test_store_reopens_its_file_after_pickling(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path, make_meta(), chunk_rows=32)
    embed(writer, make_dataset(50), batch_size=32)
    writer.finalize()
    store = EmbeddingStore.open(tmp_path)
    expected = store.read_rows("image_vectors", [5, 7])
    copy = pickle.loads(pickle.dumps(store))  # what a spawned DataLoader worker receives
    assert copy._handle is None
    assert np.array_equal(copy.read_rows("image_vectors", [5, 7]), expected)
    store.close()
    copy.close()
