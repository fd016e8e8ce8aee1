"""ScaNN as a named index type: recall and exact scores against brute force, repeatable builds, both directions through
build_indexes / open_indexes / the Engine, the saved folder, and the one-line error without the package."""
import json
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from indexing import scann_index
from indexing.faiss_index import (CALIBRATION_RECALL, build_indexes, index_bytes, load_index,
                                  open_indexes, query_cost, save_index, search)
from indexing.index_choice import choose_index
from indexing.scann_index import EXTRA_HINT, ScannIndex, ScannNotInstalled, scann_module
from indexing.store import EmbeddingStore

from helpers import brute_force_top_k, clustered_pairs, recall_at_10, write_store

FACTORY = "ScaNN40,AH2,RFlat"
needs_scann = pytest.mark.skipif(not scann_index.scann_available(), reason="the scann package is not installed")


def test_scann_is_built_only_when_named_with_its_own_training_sample() -> None:
    assert choose_index(1_000_000, 512).factory == "IVF2000_HNSW32,PQ256x4fsr,RFlat"  # the automatic choice: FAISS
    million = choose_index(1_000_000, 512, factory="ScaNN2000,AH2,RFlat")
    assert million.search_params == {"nprobe": 100, "k_factor_rf": 64} and million.train_size == 128 * 2000
    named = choose_index(5000, 64, factory="ScaNN20,AH2,RFlat")
    assert named.search_params == {"nprobe": 16, "k_factor_rf": 64} and named.train_size == 128 * 20


@needs_scann
def test_build_indexes_with_scann_reaches_recall_and_scores_exactly_both_ways(tmp_path) -> None:
    image, audio = clustered_pairs(3000, 64)
    write_store(tmp_path, image, audio)
    info = build_indexes(tmp_path, factory=FACTORY, calibrate=True)
    assert info["choice"]["factory"] == FACTORY and info["scann_version"] == "1.4.2"
    for name in ("image", "audio"):
        entry = info["indexes"][name]
        assert entry["file"] == f"{name}.scann" and (tmp_path / entry["file"]).is_dir()
        assert set(entry["search_params"]) == {"nprobe", "k_factor_rf"} and entry["calibration_recall"] >= CALIBRATION_RECALL
    assert not any(path.name.startswith(".tmp") for path in tmp_path.iterdir())
    opened = open_indexes(tmp_path)
    assert isinstance(opened.image, ScannIndex) and opened.image.params == info["indexes"]["image"]["search_params"]
    queries = {"image": audio[:300], "audio": image[:300]}  # each index answers the other modality
    for name, gallery in (("image", image), ("audio", audio)):
        scores, rows = search(getattr(opened, name), queries[name], 10)
        _, exact = brute_force_top_k(gallery, queries[name], 10)
        assert rows.dtype == np.int64 and rows.shape == (300, 10)
        assert recall_at_10(rows, exact) >= 0.95
        # re-ranked against the float32 vectors: the scores are the exact inner products, best first
        np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries[name], gallery[rows]), atol=1e-5)
        assert (np.diff(scores, axis=1) <= 1e-6).all()
        one_scores, one_rows = search(getattr(opened, name), queries[name][7], 10)  # one query: another path
        np.testing.assert_array_equal(one_rows[0], rows[7])
        np.testing.assert_allclose(one_scores[0], scores[7], atol=1e-6)
    again = tmp_path / "again"  # the same store builds the same index (seeded k-means++ leaves)
    again.mkdir()
    write_store(again, image, audio)
    assert build_indexes(again, factory=FACTORY, calibrate=True)["indexes"] == info["indexes"]
    np.testing.assert_array_equal(open_indexes(again).audio_to_image(audio[:300], 10)[1],
                                  opened.audio_to_image(audio[:300], 10)[1])
    scores, rows = opened.audio_to_image(audio[:2], 5000)  # k beyond what the searched leaves hold: each once
    held = rows >= 0
    assert rows.shape[1] < 3000 and not held.all() and np.isneginf(scores[~held]).all()
    assert all(len(set(row[row >= 0].tolist())) == (row >= 0).sum() for row in rows)
    opened.image.set_params({"nprobe": 40})  # every leaf: every row once
    scores, rows = opened.audio_to_image(audio[:2], 5000)
    assert rows.shape == (2, 3000) and all(len(set(row.tolist())) == 3000 for row in rows)
    assert np.isfinite(scores).all()
    opened.store.close()


@needs_scann
def test_a_saved_scann_folder_loads_with_its_parameters_and_answers_the_same(tmp_path, monkeypatch) -> None:
    image, audio = clustered_pairs(2000, 32, seed=3)
    write_store(tmp_path, image, audio)
    build_indexes(tmp_path, factory="ScaNN20,AH2,RFlat", fixed_params={"nprobe": 6, "k_factor_rf": 8})
    loaded = load_index(tmp_path / "image.scann", {"nprobe": 6, "k_factor_rf": 8})
    assert loaded.params == {"nprobe": 6, "k_factor_rf": 8}
    assert (loaded.d, loaded.ntotal, loaded.leaves, loaded.code_bytes) == (32, 2000, 20, 8)  # 16 blocks of 4 bits
    before = search(loaded, audio[:50], 10)
    again = save_index(loaded, tmp_path / "copy.scann")  # over a folder that does not exist yet, then over itself
    save_index(load_index(again, loaded.params), again)
    after = search(load_index(again, loaded.params), audio[:50], 10)
    np.testing.assert_array_equal(before[1], after[1])
    assert index_bytes(again) == sum(path.stat().st_size for path in again.iterdir()) > 2000 * 32 * 4
    # more leaves searched and a longer shortlist cost more in the model calibration ranks by
    assert query_cost(loaded, {"nprobe": 12, "k_factor_rf": 8}) > query_cost(loaded, {"nprobe": 6, "k_factor_rf": 8})
    assert query_cost(loaded, {"nprobe": 6, "k_factor_rf": 16}) > query_cost(loaded, {"nprobe": 6, "k_factor_rf": 8})
    def broken_serialize(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(loaded.searcher, "serialize", broken_serialize)  # a save that fails keeps the old folder
    with pytest.raises(OSError, match="disk full"):
        save_index(loaded, again)
    np.testing.assert_array_equal(search(load_index(again, loaded.params), audio[:50], 10)[1], before[1])
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith((".tmp", ".old"))]
    build_indexes(tmp_path, factory="Flat")  # another kind in the same folder: the ScaNN folders go
    assert (tmp_path / "image.faiss").is_file() and not (tmp_path / "image.scann").exists()
    build_indexes(tmp_path, factory="ScaNN20,AH2,RFlat")
    assert (tmp_path / "audio.scann").is_dir() and not (tmp_path / "audio.faiss").exists()
    (again / "scann_docids.pkl").write_bytes(b"not ours")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_index(again, None)


@needs_scann
def test_the_engine_and_jsar_query_search_a_scann_index_like_flat(tiny_index, engine, tmp_path) -> None:
    from indexing.engine import Engine
    from jsa_retrieval.cli import cli

    index_dir, data = tiny_index[0].parent / "scann-index", tiny_index[1]
    shutil.copytree(tiny_index[0], index_dir)
    build_indexes(index_dir, factory="ScaNN4,AH2,RFlat", fixed_params={"nprobe": 4, "k_factor_rf": 4})
    through_scann = Engine.open(index_dir, device="cpu")
    assert isinstance(through_scann.indexes.image, ScannIndex)
    audio_path, image_path = data / "audio" / "synth_000003.wav", data / "frames" / "synth_000004.jpg"
    for method, path in (("search_audio", audio_path), ("search_image", image_path)):
        found, expected = getattr(through_scann, method)(path, k=5), getattr(engine, method)(path, k=5)
        assert [hit.id for hit in found.hits] == [hit.id for hit in expected.hits]  # every leaf searched: exact
        np.testing.assert_allclose([hit.score for hit in found.hits], [hit.score for hit in expected.hits], atol=1e-5)
    answer = CliRunner().invoke(cli, ["query", "--index", str(index_dir), "--audio", str(audio_path), "-k", "3",
                                      "--json"])
    assert answer.exit_code == 0, answer.output
    assert [hit["id"] for hit in json.loads(answer.output)["hits"]] == [
        hit.id for hit in engine.search_audio(audio_path, 3).hits]
    with EmbeddingStore.open(index_dir) as store:
        assert json.loads((index_dir / "index.json").read_text())["store_rows"] == len(store)


def test_without_scann_the_error_names_the_extra(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "scann", None)
    assert not scann_index.scann_available()
    with pytest.raises(ScannNotInstalled) as raised:
        scann_module()
    assert str(raised.value).startswith(EXTRA_HINT) and "\n" not in str(raised.value) and "[scann]" in EXTRA_HINT
    image, audio = clustered_pairs(500, 16)
    write_store(tmp_path, image, audio)
    with pytest.raises(ScannNotInstalled):
        build_indexes(tmp_path, factory="ScaNN8,AH2,RFlat")
    assert build_indexes(tmp_path)["choice"]["factory"] == "Flat"  # the automatic choice never needs it
