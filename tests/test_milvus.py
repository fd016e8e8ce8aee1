"""The Milvus back end on Milvus Lite: the same hits and scores as FAISS flat, resumable pushes, refusals."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("pymilvus", reason="the [milvus] extra is not installed")
pytest.importorskip("milvus_lite", reason="the [milvus] extra is not installed")

from pymilvus import MilvusClient  # noqa: E402

from indexing.engine import Engine  # noqa: E402
from indexing.faiss_index import build_indexes, open_indexes  # noqa: E402
from indexing.milvus_backend import (EXTRA_HINT, FINGERPRINT_PROPERTY, MAX_TOP_K, PUSH_STATE,  # noqa: E402
                                     MilvusError, MilvusIndexes, MilvusNotInstalled, MilvusTarget, collection_names,
                                     connect, open_milvus_indexes, push_store)
from indexing.store import EmbeddingStore, FingerprintMismatch, StoreRecords, StoreWriter  # noqa: E402
from jsa_retrieval.cli import cli  # noqa: E402


@pytest.fixture(scope="module")
def pushed(tiny_index, tmp_path_factory):
    """(index folder, data folder, Lite URI): a copy of the session's tiny index with FAISS flat indexes, pushed
    into one Milvus Lite file that every test of this module shares (Lite starts once per file and process)."""
    root = tmp_path_factory.mktemp("milvus")
    index_dir = root / "index"
    shutil.copytree(tiny_index[0], index_dir)
    build_indexes(index_dir, factory="Flat")
    uri = str(root / "milvus.db")
    push_store(index_dir, MilvusTarget(uri), progress=False)
    return index_dir, tiny_index[1], uri


def store_vectors(index_dir):
    with EmbeddingStore.open(index_dir) as store:
        rows = np.arange(len(store))
        return store.read_rows("audio_vectors", rows), store.read_rows("image_vectors", rows), store.ids()


@pytest.mark.parametrize("k", [1, 5, 16, 40])
def test_milvus_flat_gives_faiss_flat_hits_and_scores_both_directions(pushed, k):
    index_dir, _, _ = pushed
    audio, image, _ = store_vectors(index_dir)
    milvus, faiss_flat = open_milvus_indexes(index_dir), open_indexes(index_dir, gpu=False)
    for direction, queries in (("audio_to_image", audio), ("image_to_audio", image)):
        scores, rows = getattr(milvus, direction)(queries, k)
        expected_scores, expected_rows = getattr(faiss_flat, direction)(queries, k)
        assert rows.shape == expected_rows.shape == (len(queries), min(k, len(queries)))
        np.testing.assert_array_equal(rows, expected_rows, err_msg=direction)
        np.testing.assert_allclose(scores, expected_scores, atol=1e-5, err_msg=direction)


def test_index_json_names_the_backend_and_keeps_the_faiss_entries_of_the_same_store(pushed):
    index_dir, _, uri = pushed
    info = json.loads((index_dir / "index.json").read_text())
    with EmbeddingStore.open(index_dir) as store:
        names = collection_names("jsar", store.meta.fingerprint)
        assert info["store_rows"] == len(store) and info["store_ids_sha256"] == store.ids_sha256
    assert info["backend"] == "milvus" and info["milvus"]["uri"] == uri and info["milvus"]["collections"] == names
    assert info["milvus"]["index_type"] == "FLAT" and info["choice"]["factory"] == "Flat"
    assert set(MilvusClient(uri).list_collections()) >= set(names.values())


def test_engine_and_query_search_through_milvus_with_faiss_hits_and_maps(pushed, engine, tmp_path):
    index_dir, data, uri = pushed
    audio_path, image_path = data / "audio" / "synth_000003.wav", data / "frames" / "synth_000004.jpg"
    through_milvus = Engine.open(index_dir, device="cpu")
    assert isinstance(through_milvus.indexes, MilvusIndexes)
    for search in ("search_audio", "search_image"):
        found = getattr(through_milvus, search)(audio_path if search == "search_audio" else image_path, k=5)
        expected = getattr(engine, search)(audio_path if search == "search_audio" else image_path, k=5)
        assert [h.id for h in found.hits] == [h.id for h in expected.hits]
        np.testing.assert_allclose([h.score for h in found.hits], [h.score for h in expected.hits], atol=1e-5)
    result = through_milvus.search_audio(audio_path, k=3)
    through_milvus.write_outputs(result, tmp_path / "hits")
    np.testing.assert_allclose(through_milvus.hit_map(result.query_side, result.hits[0].image_path),
                               engine.hit_map(engine.embed_audio(audio_path), result.hits[0].image_path), atol=1e-5)
    answer = CliRunner().invoke(cli, ["query", "--index", str(index_dir), "--audio", str(audio_path), "-k", "4",
                                      "--json", "--milvus-uri", uri])
    assert answer.exit_code == 0, answer.output
    expected = engine.search_audio(audio_path, 4).hits
    assert [h["id"] for h in json.loads(answer.output)["hits"]] == [h.id for h in expected]


def test_a_killed_push_resumes_and_ends_with_every_row_once(pushed, monkeypatch):
    index_dir, _, uri = pushed
    target = MilvusTarget(uri, prefix="resumed")
    calls, killed = [], []
    upsert = MilvusClient.upsert

    def killed_on_the_third_upsert(self, collection_name, data, *args, **kwargs):
        calls.append(len(data))
        if len(calls) == 3 and not killed:  # batch 2's image rows are in, its audio rows are not
            killed.append(True)
            raise KeyboardInterrupt("simulated kill")
        return upsert(self, collection_name, data, *args, **kwargs)

    monkeypatch.setattr(MilvusClient, "upsert", killed_on_the_third_upsert)
    with pytest.raises(KeyboardInterrupt):
        push_store(index_dir, target, batch_rows=4, progress=False)
    assert json.loads((index_dir / PUSH_STATE).read_text())["rows_done"] == 4
    calls.clear()
    info = push_store(index_dir, target, batch_rows=4, progress=False)
    assert calls == [4] * 6 and info["milvus"]["last_push"]["rows"] == 12  # rows 4-15 of both collections only
    _, _, ids = store_vectors(index_dir)
    client = MilvusClient(uri)
    for name in info["milvus"]["collections"].values():
        found = client.query(name, filter="", output_fields=["id", "row"], limit=100, consistency_level="Strong")
        assert sorted((r["row"], r["id"]) for r in found) == list(enumerate(ids))  # no duplicates, none missing
    again = push_store(index_dir, target, batch_rows=4, progress=False)
    assert again["milvus"]["last_push"]["rows"] == 0  # nothing left to push
    push_store(index_dir, MilvusTarget(uri), progress=False)  # index.json back to the module's collections


def test_collections_of_another_model_are_refused(pushed, tmp_path):
    index_dir, _, uri = pushed
    with EmbeddingStore.open(index_dir) as store:
        name = collection_names("taken", store.meta.fingerprint)["image"]
    client = MilvusClient(uri)
    client.create_collection(name, dimension=4, properties={FINGERPRINT_PROPERTY: "0" * 64})
    with pytest.raises(FingerprintMismatch, match="000000000000, not"):
        push_store(index_dir, MilvusTarget(uri, prefix="taken"), progress=False)
    from helpers import tiny_checkpoint

    with pytest.raises(FingerprintMismatch, match="not the model"):
        Engine.open(index_dir, checkpoint=tiny_checkpoint(tmp_path / "other.pt", seed=1), device="cpu")


def test_without_pymilvus_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(MilvusNotInstalled) as raised:
        connect(str(tmp_path / "milvus.db"))
    assert str(raised.value) == EXTRA_HINT and "\n" not in str(raised.value) and "[milvus]" in EXTRA_HINT


@pytest.mark.parametrize("case", ["no pymilvus", "unreachable"])
def test_jsar_index_push_fails_in_one_line(pushed, tmp_path, case):
    index_dir, _, _ = pushed
    env = dict(os.environ)
    uri = str(tmp_path / "m.db")
    if case == "no pymilvus":
        (tmp_path / "pymilvus.py").write_text("raise ImportError('No module named pymilvus')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    else:
        uri = "http://127.0.0.1:9"
    result = subprocess.run([sys.executable, "-m", "jsa_retrieval.cli", "index", "--push", "milvus", "--out",
                             str(index_dir), "--milvus-uri", uri], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0
    assert ('pip install -e ".[milvus]"' if case == "no pymilvus" else "cannot reach Milvus at") in result.stderr


def test_jsar_index_backend_milvus_embeds_and_pushes_without_faiss_files(pushed, tiny_index, tmp_path):
    index_dir, data, uri = pushed
    out = tmp_path / "index"
    args = ["index", str(data), "--checkpoint", str(tiny_index[0].parent / "model.pt"), "--out", str(out),
            "--workers", "0", "--batch-size", "8", "--backend", "milvus"]
    missing = CliRunner().invoke(cli, args)
    assert missing.exit_code != 0 and "--milvus-uri" in missing.output
    done = CliRunner().invoke(cli, [*args, "--milvus-uri", uri, "--milvus-collection", "embedded"])
    assert done.exit_code == 0, done.output
    assert f"16 clips in {out}" in done.output and f"Milvus FLAT at {uri}" in done.output
    assert not (out / "image.faiss").exists() and json.loads((out / "index.json").read_text())["backend"] == "milvus"
    audio, _, _ = store_vectors(index_dir)
    scores, rows = open_milvus_indexes(out).audio_to_image(audio, 5)
    expected_scores, expected_rows = open_milvus_indexes(index_dir).audio_to_image(audio, 5)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)


# ------------------------------------------------------------------------------------------------ errors


def pushed_copy(pushed, tmp_path, prefix: str):
    """A copy of the pushed index folder, pushed again under collections of its own (`prefix`) in the same Lite
    file, so a test may break it without touching the module's index."""
    index_dir, _, uri = pushed
    copy = tmp_path / prefix
    shutil.copytree(index_dir, copy)
    push_store(copy, MilvusTarget(uri, prefix=prefix), progress=False)
    return copy, json.loads((copy / "index.json").read_text())["milvus"]["collections"]


def test_a_search_milvus_fails_is_one_line_naming_the_collection(pushed, tmp_path):
    index_dir, _, uri = pushed
    copy, collections = pushed_copy(pushed, tmp_path, "unloaded")
    indexes = open_milvus_indexes(copy)
    MilvusClient(uri).drop_collection(collections["image"])  # gone under a client that had it loaded
    audio, _, _ = store_vectors(index_dir)
    with pytest.raises(MilvusError) as raised:
        indexes.audio_to_image(audio[:2], 3)
    message = str(raised.value)
    assert message.startswith(f"Milvus failed to search {collections['image']}: ") and "\n" not in message


def test_a_missing_collection_is_refused_saying_to_push_again(pushed, tmp_path):
    _, _, uri = pushed
    copy, collections = pushed_copy(pushed, tmp_path, "dropped")
    MilvusClient(uri).drop_collection(collections["audio"])
    with pytest.raises(MilvusError, match=f"has no collection {collections['audio']}; push the store"):
        open_milvus_indexes(copy)


def test_a_store_changed_since_the_push_is_refused(pushed, tmp_path):
    copy, _ = pushed_copy(pushed, tmp_path, "changed")
    with EmbeddingStore.open(copy) as store:
        meta, dim = store.meta, store.dim
    vectors = np.eye(2, dim, dtype=np.float32)
    writer = StoreWriter(copy, meta)
    writer.write(StoreRecords(ids=["new0", "new1"], labels=[None] * 2, image_paths=["x"] * 2, audio_paths=["y"] * 2,
                              image_vectors=vectors, audio_vectors=vectors), positions=range(2))
    writer.finalize()
    with pytest.raises(FingerprintMismatch, match=r"push it again \(jsar index --push milvus"):
        open_milvus_indexes(copy)


def test_k_above_milvus_limit_is_a_one_line_error(pushed):
    index_dir, data, _ = pushed
    audio, _, _ = store_vectors(index_dir)
    with pytest.raises(ValueError, match=f"k must be between 1 and {MAX_TOP_K} with Milvus, got {MAX_TOP_K + 1}"):
        open_milvus_indexes(index_dir).audio_to_image(audio[:1], MAX_TOP_K + 1)
    result = CliRunner().invoke(cli, ["query", "--index", str(index_dir), "--audio",  # in process: Lite is one
                                      str(data / "audio" / "synth_000003.wav"), "-k", str(MAX_TOP_K + 1)])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)  # `jsar` prints it as one line
    assert str(result.exception).startswith(f"k must be between 1 and {MAX_TOP_K} with Milvus")
