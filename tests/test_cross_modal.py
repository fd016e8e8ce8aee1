"""Query-guided cross-modal graph (indexing.experimental.query_guided): edge projection and insertion by hand,
recall against exact search on paired vectors with a modality gap (both directions), save/load round trip; and
the calibration of the product's indexes on the same pairs."""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from indexing.experimental.query_guided import (add_query_guided_edges, build_query_guided_index, insert_edges,
                                                projected_edges)
from indexing.faiss_index import (CALIBRATION_LADDERS, CALIBRATION_RECALL, build_indexes, calibrate_search_param, configure_faiss,
                                  load_index, open_indexes, save_index, search)
from indexing.index_choice import choose_index
from indexing.store import EmbeddingStore, l2_normalise

from helpers import brute_force_top_k, recall_at_10, write_store

NUM = 4000
DIM = 48


def gapped_pairs(num: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(num, dim) image and audio vectors of `num` paired clips with a cross-modal gap.

    A clip is a latent topic (one of 60) plus its own detail; each modality sees the latent through its own
    fixed offset (the modality gap) and its own noise, so a pair is closer than two random clips of the two
    modalities but much farther apart than two clips of one modality.
    """
    rng = np.random.default_rng(seed)
    topics = l2_normalise(rng.normal(size=(60, dim)))
    latent = topics[rng.integers(0, 60, num)] + 0.8 * rng.normal(size=(num, dim)) / np.sqrt(dim)
    offsets = 1.2 * l2_normalise(rng.normal(size=(2, dim)))
    image = l2_normalise(latent + offsets[0] + 0.9 * rng.normal(size=(num, dim)) / np.sqrt(dim))
    audio = l2_normalise(latent + offsets[1] + 0.9 * rng.normal(size=(num, dim)) / np.sqrt(dim))
    return image.astype(np.float32), audio.astype(np.float32)


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    return gapped_pairs(NUM + 200, DIM)


@pytest.fixture(scope="module")
def guided(tmp_path_factory: pytest.TempPathFactory,
           pairs: tuple[np.ndarray, np.ndarray]) -> dict[str, tuple[faiss.Index, dict]]:
    """Query-guided graphs over a store of NUM pairs, by the field they index; 200 more pairs are queries."""
    index_dir = tmp_path_factory.mktemp("guided")
    image, audio = pairs
    write_store(index_dir, image[:NUM], audio[:NUM])
    with EmbeddingStore.open(index_dir) as store:
        return {field: build_query_guided_index(store, field) for field in ("image_vectors", "audio_vectors")}


@pytest.mark.parametrize("direction", ["audio_to_image", "image_to_audio"])
def test_guided_graph_finds_exact_neighbours_of_cross_modal_queries(
        guided: dict[str, tuple[faiss.Index, dict]], pairs: tuple[np.ndarray, np.ndarray], direction: str) -> None:
    image, audio = pairs
    queries, gallery, field = ((audio, image, "image_vectors") if direction == "audio_to_image"
                               else (image, audio, "audio_vectors"))
    _, exact = brute_force_top_k(gallery[:NUM], queries[NUM:], 10)
    index, calibration = guided[field]
    _, found = search(index, queries[NUM:], 10)
    assert recall_at_10(found, exact) >= 0.95
    assert calibration["calibration_recall"] >= CALIBRATION_RECALL and calibration["efSearch"] in CALIBRATION_LADDERS["efSearch"]
    assert faiss.downcast_index(index).hnsw.efSearch == calibration["efSearch"]


def test_calibration_picks_the_smallest_ef_search_that_reaches_the_target(
        pairs: tuple[np.ndarray, np.ndarray]) -> None:
    image, audio = pairs
    _, exact = brute_force_top_k(audio[:NUM], image[NUM:], 10)
    index = faiss.IndexHNSWFlat(DIM, 8, faiss.METRIC_INNER_PRODUCT)
    index.add(audio[:NUM])
    ladder = (8, 16, 32, 64, 128, 256)
    ef_search, recall = calibrate_search_param(index, "efSearch", ladder, image[NUM:], exact, target=0.9)
    assert recall >= 0.9 and index.hnsw.efSearch == ef_search
    if ef_search > ladder[0]:
        below = ladder[ladder.index(ef_search) - 1]
        index.hnsw.efSearch = below
        assert recall_at_10(index.search(image[NUM:], 10)[1], exact) < 0.9
    assert calibrate_search_param(index, "efSearch", (8, 16), image[NUM:], exact, target=1.01)[0] == 16  # the last


def test_guided_graph_survives_save_and_load(guided: dict[str, tuple[faiss.Index, dict]],
                                            pairs: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    image, audio = pairs
    built = guided["image_vectors"][0]
    params = {"efSearch": faiss.downcast_index(built).hnsw.efSearch}
    loaded = load_index(save_index(built, tmp_path / "image.faiss"), params)
    before_scores, before = built.search(audio[NUM:], 10)
    after_scores, after = loaded.search(audio[NUM:], 10)
    assert isinstance(faiss.downcast_index(loaded), faiss.IndexHNSWFlat)
    assert np.array_equal(before, after) and np.allclose(before_scores, after_scores)


def test_automatic_ivf_gets_nprobe_and_k_factor_calibrated_per_modality(
        tmp_path: Path, pairs: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    import indexing.index_choice as index_choice

    monkeypatch.setattr(index_choice, "FLAT_MAX_VECTORS", 1000)  # 4,000 vectors: IVF, as 1M are in production
    image, audio = pairs
    write_store(tmp_path, image[:NUM], audio[:NUM])
    info = build_indexes(tmp_path, gpu=False)
    assert info["choice"]["factory"] == "IVF102_HNSW32,PQ24x4fsr,RFlat" and info["choice"]["search_params"]["nprobe"] == 16
    for entry in info["indexes"].values():
        assert entry["calibration_recall"] >= CALIBRATION_RECALL  # nprobe and the re-ranking depth calibrated together
        assert entry["search_params"]["k_factor_rf"] in CALIBRATION_LADDERS["k_factor_rf"]
        assert entry["search_params"]["nprobe"] in CALIBRATION_LADDERS["nprobe"] + (102,)
    indexes = open_indexes(tmp_path, gpu=False)
    try:
        for side, queries, gallery, search in (("image", audio, image, indexes.audio_to_image),
                                               ("audio", image, audio, indexes.image_to_audio)):
            ivf = faiss.extract_index_ivf(getattr(indexes, side))
            assert ivf.nprobe == info["indexes"][side]["search_params"]["nprobe"]  # re-applied on load
            _, found = search(queries[NUM:], 10)
            assert recall_at_10(found, brute_force_top_k(gallery[:NUM], queries[NUM:], 10)[1]) >= 0.9
    finally:
        indexes.store.close()


def test_named_factories_keep_their_search_parameters(tmp_path: Path, pairs: tuple[np.ndarray, np.ndarray]) -> None:
    image, audio = pairs
    write_store(tmp_path, image[:NUM], audio[:NUM])
    info = build_indexes(tmp_path, factory="IVF64,Flat", gpu=False)
    assert all(entry["search_params"] == {"nprobe": 16} and "calibration_recall" not in entry
               for entry in info["indexes"].values())
    assert choose_index(1_000_000, 512).factory == "IVF2000_HNSW32,PQ256x4fsr,RFlat"  # graphs only when named
