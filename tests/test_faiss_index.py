"""Index choice, FAISS build/search against brute force, recall of approximate types, save/load, index.json."""
from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexing import faiss_index
from indexing.faiss_index import (CALIBRATION_RECALL, INDEX_JSON, build_index, build_indexes, load_index, num_gpus, open_indexes,
                                  save_index, search, to_gpu)
from jsa_retrieval.metrics import rank_by_similarity
from indexing.index_choice import CPU_COARSE_QUANTIZER, QUANTIZER_EF_SEARCH, choose_index, ivf_nlist
from indexing.store import EmbeddingStore, FingerprintMismatch, StoreMeta, StoreRecords, StoreWriter, l2_normalise

from helpers import brute_force_top_k, clustered_pairs, recall_at_10, write_store

NUM = 3000
DIM = 64


@pytest.fixture(scope="module")
def pairs() -> tuple[np.ndarray, np.ndarray]:
    return clustered_pairs(NUM, DIM)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, pairs: tuple[np.ndarray, np.ndarray]) -> EmbeddingStore:
    index_dir = tmp_path_factory.mktemp("store")
    write_store(index_dir, *pairs)
    opened = EmbeddingStore.open(index_dir)
    yield opened
    opened.close()


def test_choose_index_by_size() -> None:
    assert choose_index(50_000, 512).factory == "Flat"
    assert choose_index(50_000, 512).train_size == 0
    middle = choose_index(500_000, 512)  # CPU: fast-scan PQ + exact re-ranking, HNSW only over the centroids
    assert middle.factory == "IVF1414_HNSW32,PQ256x4fsr,RFlat"
    assert middle.search_params == {"nprobe": 70, "quantizer_efSearch": 70, "k_factor_rf": 64}
    assert middle.train_size == 64 * 1414 and middle.build_params == {}
    million = choose_index(1_000_000, 512)
    assert million.factory == "IVF2000_HNSW32,PQ256x4fsr,RFlat" and million.search_params["nprobe"] == 100
    ivf = choose_index(4_000_000, 512)
    assert ivf.factory == "IVF4000_HNSW32,PQ256x4fsr,RFlat" and ivf_nlist(1_000_000) == 2000
    assert ivf_nlist(1_000_000, gpu=True) == 4000
    assert ivf.search_params == {"nprobe": 200, "quantizer_efSearch": 200, "k_factor_rf": 64}  # walk >= nprobe
    assert ivf.train_size == 64 * 4000
    assert choose_index(1_000_000, 129).factory == "IVF2000,Flat"  # fast-scan PQ needs an even dimension
    assert choose_index(500_000, 512, gpu=True).factory == "Flat"
    assert choose_index(3_000_000, 512, gpu=True).factory == "IVF6928,Flat"
    hnsw = choose_index(500_000, 512, factory="HNSW32")  # still available by name
    assert hnsw.search_params == {"efSearch": 128} and hnsw.build_params == {"efConstruction": 40}


def test_choose_index_by_memory_budget() -> None:
    gib = 1 << 30
    assert choose_index(4_000_000, 512, memory_budget_bytes=16 * gib).factory == "IVF4000_HNSW32,PQ256x4fsr,RFlat"
    # 8.4 GB cannot hold the float32 copy plus fast-scan codes (8.74 GB): a float16 copy (4.64 GB) re-ranks instead
    half = choose_index(4_000_000, 512, memory_budget_bytes=8_400_000_000)
    assert half.factory == "IVF4000_HNSW32,PQ256x4fsr,Refine(SQfp16)" and half.estimated_bytes < 4.7e9
    assert choose_index(4_000_000, 512, memory_budget_bytes=3 * gib).factory == "IVF4000,SQ8"
    assert choose_index(4_000_000, 512, memory_budget_bytes=gib).factory == "OPQ64,IVF4000,PQ64"
    small = choose_index(4_000_000, 512, memory_budget_bytes=200 << 20)
    assert small.factory == "OPQ32,IVF4000,PQ32" and small.estimated_bytes <= 200 << 20
    assert small.train_size == 64 * 4000
    assert choose_index(4_000_000, 512, memory_budget_bytes=200 << 20, gpu=True).factory == "IVF8000,PQ32"
    assert choose_index(50_000, 512, memory_budget_bytes=40 << 20).factory.startswith("IVF")
    with pytest.raises(ValueError, match="budget"):
        choose_index(4_000_000, 512, memory_budget_bytes=10 << 20)


def test_user_factory_overrides_the_rule() -> None:
    choice = choose_index(3000, 64, memory_budget_bytes=1, factory="IVF256,PQ16,RFlat")
    assert choice.factory == "IVF256,PQ16,RFlat"
    assert choice.search_params == {"nprobe": 16, "k_factor_rf": 64} and choice.train_size == 3000


def test_exact_choice_matches_brute_force(store: EmbeddingStore, pairs: tuple[np.ndarray, np.ndarray]) -> None:
    image, audio = pairs
    choice = choose_index(len(store), store.dim)
    assert choice.factory == "Flat"
    index = build_index(store, "image_vectors", choice)
    assert index.ntotal == NUM
    queries = audio[:200]
    expected_scores, expected_ids = brute_force_top_k(image, queries, 11)
    tie_free = np.min(np.diff(-expected_scores, axis=1), axis=1) > 1e-5  # order decided by more than rounding
    assert tie_free.sum() >= 150
    scores, ids = search(index, queries, 10)
    assert np.array_equal(ids[tie_free], expected_ids[tie_free, :10])
    np.testing.assert_allclose(scores, expected_scores[:, :10], rtol=0, atol=2e-6)
    one_by_one = np.concatenate([search(index, q, 10)[1] for q in queries[:5]])  # below/above BLAS threshold
    assert np.array_equal(one_by_one, ids[:5])
    assert faiss.cvar.distance_compute_blas_threshold == 16


@pytest.mark.parametrize("factory", ["IVF64,Flat", "HNSW32", "OPQ16,IVF64,PQ16,RFlat", "IVF64,PQ32x4fs,RFlat"])
def test_approximate_indexes_reach_recall_095(store: EmbeddingStore, pairs: tuple[np.ndarray, np.ndarray],
                                               factory: str) -> None:
    image, audio = pairs
    queries = audio[::10]
    _, exact = brute_force_top_k(image, queries, 10)
    index = build_index(store, "image_vectors", choose_index(NUM, DIM, factory=factory))
    _, ids = search(index, queries, 10)
    assert recall_at_10(ids, exact) >= 0.95


@pytest.mark.parametrize("budget", [500_000, 200_000])
def test_budget_constrained_choices_keep_the_true_neighbour(store: EmbeddingStore,
                                                            pairs: tuple[np.ndarray, np.ndarray], budget: int) -> None:
    """SQ8 keeps recall@10 >= 0.95; PQ (no refine under a budget) keeps the exact top-1 within its top 10."""
    image, audio = pairs
    choice = choose_index(NUM, DIM, memory_budget_bytes=budget)
    assert choice.factory == ("IVF76,SQ8" if budget == 500_000 else "OPQ16,IVF76,PQ16")
    queries = audio[::10]
    _, exact = brute_force_top_k(image, queries, 10)
    _, ids = search(build_index(store, "image_vectors", choice), queries, 10)
    if "SQ8" in choice.factory:
        assert recall_at_10(ids, exact) >= 0.95
    assert np.mean([exact[i, 0] in ids[i] for i in range(len(ids))]) >= 0.95


def test_exact_search_equals_a_full_stable_sort_with_ties_across_blocks() -> None:
    rng = np.random.default_rng(0)
    gallery = rng.integers(-2, 3, (40, 4)).astype(np.float32)  # many equal scores
    queries = rng.integers(-2, 3, (25, 4)).astype(np.float32)
    expected = rank_by_similarity(queries @ gallery.T, 7)  # ties go to the lower row
    blocks = [(start, gallery[start:start + 9]) for start in range(0, 40, 9)]
    np.testing.assert_array_equal(faiss_index.exact_top_k(blocks, queries, 7, block_bytes=4 * 9 * 3), expected)
    np.testing.assert_array_equal(faiss_index.exact_top_k([(0, gallery)], queries, 7), expected)
    assert faiss_index.exact_top_k([(0, gallery)], queries, 100).shape == (25, 40)


def test_exact_search_over_a_store_reads_it_chunk_by_chunk(store: EmbeddingStore,
                                                            pairs: tuple[np.ndarray, np.ndarray]) -> None:
    image, audio = pairs
    found = faiss_index.exact_top_k(store.iter_chunks("image_vectors", 700), audio[:50], 10)
    np.testing.assert_array_equal(found, rank_by_similarity(audio[:50] @ image.T, 10))


def test_build_streams_the_store_in_chunks(store: EmbeddingStore, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    original = EmbeddingStore.iter_chunks

    def recording(self: EmbeddingStore, field: str = "image_vectors", chunk_rows: int = 65536):
        for start, block in original(self, field, chunk_rows):
            seen.append(block.shape[0])
            yield start, block

    monkeypatch.setattr(EmbeddingStore, "iter_chunks", recording)
    index = build_index(store, "audio_vectors", choose_index(NUM, DIM), chunk_rows=512)
    assert max(seen) == 512 and sum(seen) == NUM and index.ntotal == NUM


def test_k_larger_than_ntotal_returns_every_vector_once() -> None:
    gallery = l2_normalise(np.random.default_rng(5).normal(size=(7, 16)))
    index = faiss.IndexFlatIP(16)
    index.add(gallery)
    scores, ids = search(index, gallery[:3], 50)
    assert ids.shape == (3, 7) and (ids >= 0).all()
    assert all(sorted(row) == list(range(7)) for row in ids.tolist())
    assert (np.diff(scores, axis=1) <= 0).all()


def test_sparse_ivf_results_drop_empty_columns_and_mark_gaps() -> None:
    gallery, _ = clustered_pairs(400, 16, seed=2)
    index = faiss.index_factory(16, "IVF8,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(gallery)
    index.add(gallery)
    faiss.extract_index_ivf(index).nprobe = 1
    scores, ids = search(index, gallery[:20], 400)
    assert ids.shape[1] < 400 and (ids >= 0).any(axis=0).all()
    assert np.array_equal(ids < 0, np.isneginf(scores))


def test_save_and_load_keep_search_params_and_results(store: EmbeddingStore, tmp_path: Path,
                                                       pairs: tuple[np.ndarray, np.ndarray]) -> None:
    queries = pairs[1][:50]
    for factory, read_param in [("IVF64,Flat", lambda ix: faiss.extract_index_ivf(ix).nprobe),
                                ("HNSW32", lambda ix: faiss.downcast_index(ix).hnsw.efSearch)]:
        choice = choose_index(NUM, DIM, factory=factory)
        index = build_index(store, "image_vectors", choice)
        before = search(index, queries, 10)
        path = save_index(index, tmp_path / "image.faiss")
        assert not list(tmp_path.glob(".tmp-*"))
        loaded = load_index(path, choice.search_params)
        assert read_param(loaded) == next(iter(choice.search_params.values()))
        after = search(loaded, queries, 10)
        assert np.array_equal(before[1], after[1]) and np.array_equal(before[0], after[0])


def test_build_and_open_indexes_answer_both_directions(tmp_path: Path) -> None:
    image, audio = clustered_pairs(600, 32, seed=4)
    write_store(tmp_path, image, audio)
    info = build_indexes(tmp_path)
    written = json.loads((tmp_path / INDEX_JSON).read_text())
    assert written == info and info["fingerprint"] == "fp-test" and info["choice"]["factory"] == "Flat"
    assert info["indexes"]["image"]["ntotal"] == 600 and info["dim"] == 32
    opened = open_indexes(tmp_path, gpu=False)
    _, image_rows = opened.audio_to_image(audio[:100], 1)
    _, audio_rows = opened.image_to_audio(image[:100], 1)
    assert np.mean(image_rows[:, 0] == np.arange(100)) >= 0.9
    assert np.mean(audio_rows[:, 0] == np.arange(100)) >= 0.9
    assert opened.store.record(int(image_rows[0, 0])).id == f"c{image_rows[0, 0]}"
    opened.store.close()


def test_open_indexes_refuses_another_fingerprint_or_a_changed_store(tmp_path: Path) -> None:
    image, audio = clustered_pairs(300, 16, seed=6)
    write_store(tmp_path, image, audio)
    build_indexes(tmp_path, factory="IVF8,Flat")
    info_path = tmp_path / INDEX_JSON
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps(dict(info, fingerprint="another-model")))
    with pytest.raises(FingerprintMismatch, match="fingerprint"):
        open_indexes(tmp_path, gpu=False)
    info_path.write_text(json.dumps(info))
    extra_image, extra_audio = clustered_pairs(10, 16, seed=7)
    meta = EmbeddingStore.open(tmp_path).meta
    writer = StoreWriter(tmp_path, meta)
    writer.write(StoreRecords(ids=[f"new{i}" for i in range(10)], labels=[None] * 10, image_paths=["x"] * 10,
                              audio_paths=["y"] * 10, image_vectors=extra_image, audio_vectors=extra_audio),
                 positions=range(10))
    writer.finalize()
    with pytest.raises(FingerprintMismatch, match="rebuild"):
        open_indexes(tmp_path, gpu=False)


def test_to_gpu_without_gpus_returns_the_cpu_index() -> None:
    if num_gpus() > 0:
        pytest.skip("this machine has GPUs")
    index = faiss.IndexFlatIP(8)
    assert to_gpu(index) is index


@pytest.mark.gpu
@pytest.mark.skipif(num_gpus() == 0, reason="needs faiss-gpu and a GPU")
def test_gpu_search_matches_cpu(store: EmbeddingStore, pairs: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    choice = choose_index(NUM, DIM, factory="IVF64,Flat")
    index = build_index(store, "image_vectors", choice)
    cpu_ids = search(index, pairs[1][:50], 10)[1]
    for shard in (False, True):
        placed = to_gpu(index, shard=shard, search_params=choice.search_params)
        assert recall_at_10(search(placed, pairs[1][:50], 10)[1], cpu_ids) >= 0.99
    reloaded = load_index(save_index(to_gpu(index), tmp_path / "gpu.faiss"), choice.search_params)
    assert np.array_equal(search(reloaded, pairs[1][:50], 10)[1], cpu_ids)


@pytest.fixture(scope="module")
def refine_index(store: EmbeddingStore) -> faiss.Index:
    """Fast-scan PQ lists re-ranked on float16 vectors: the kind of index whose nprobe and k_factor are tuned
    together."""
    return build_index(store, "image_vectors", choose_index(NUM, DIM, factory="IVF64,PQ32x4fs,Refine(SQfp16)"))


def test_joint_calibration_picks_the_cheapest_point_that_reaches_the_recall_target(
        refine_index: faiss.Index, pairs: tuple[np.ndarray, np.ndarray]) -> None:
    image, audio = pairs
    queries = audio[::15]
    _, exact = brute_force_top_k(image, queries, 10)
    grid = faiss_index.calibration_grid(refine_index)
    assert {tuple(point) for point in grid} == {("nprobe", "k_factor_rf")}
    point, recall = faiss_index.calibrate(refine_index, grid, queries, exact, target=0.95)
    assert recall >= 0.95
    assert faiss.extract_index_ivf(refine_index).nprobe == point["nprobe"]  # left set to the chosen point
    assert faiss.downcast_index(refine_index).k_factor == point["k_factor_rf"]
    assert recall_at_10(search(refine_index, queries, 10)[1], exact) >= 0.95
    cost = faiss_index.query_cost(refine_index, point)
    for cheaper in (p for p in grid if faiss_index.query_cost(refine_index, p) < cost):  # every cheaper point misses
        found = refine_index.search(queries, 10, params=faiss_index.search_parameters(refine_index, cheaper))[1]
        assert recall_at_10(found, exact) < 0.95, cheaper


def test_per_call_parameters_leave_the_shared_index_unchanged(refine_index: faiss.Index,
                                                              pairs: tuple[np.ndarray, np.ndarray]) -> None:
    faiss_index.apply_search_params(refine_index, {"nprobe": 4, "k_factor_rf": 8})
    queries = pairs[1][:40]
    wide = {"nprobe": 64, "k_factor_rf": 128}
    found = refine_index.search(queries, 10, params=faiss_index.search_parameters(refine_index, wide))[1]
    assert faiss.extract_index_ivf(refine_index).nprobe == 4 and faiss.downcast_index(refine_index).k_factor == 8
    faiss_index.apply_search_params(refine_index, wide)
    assert np.array_equal(found, refine_index.search(queries, 10)[1])


def test_one_query_on_both_cores_finds_what_the_batch_and_the_one_thread_path_find(
        refine_index: faiss.Index, pairs: tuple[np.ndarray, np.ndarray]) -> None:
    faiss_index.apply_search_params(refine_index, {"nprobe": 16, "k_factor_rf": 32})
    queries = pairs[1][:60]
    batch_scores, batch_ids = search(refine_index, queries, 10)
    one = [search(refine_index, query, 10, single_query_parallel=True) for query in queries]
    serial = [search(refine_index, query, 10) for query in queries]  # the default path
    assert np.array_equal(np.concatenate([ids for _, ids in one]), batch_ids)
    assert np.array_equal(np.concatenate([ids for _, ids in serial]), batch_ids)
    np.testing.assert_allclose(np.concatenate([scores for scores, _ in one]), batch_scores, atol=1e-6)
    fast_scan = faiss.downcast_index(faiss.extract_index_ivf(refine_index))
    assert fast_scan.implem == 0  # left on the batch path by the last (one-thread) call
    search(refine_index, queries[0], 10, single_query_parallel=True)
    assert fast_scan.implem == faiss_index.SINGLE_QUERY_IMPLEM[True]  # 10 x 32 candidates: the reservoir variant
    threads = faiss.omp_get_max_threads()
    search(refine_index, queries[0], 10)
    assert faiss.omp_get_max_threads() == threads  # the caller's OpenMP setting is restored


def test_call_threads_follow_the_call_size() -> None:
    cores = faiss_index.configure_faiss()
    assert faiss_index.call_threads(1, single_query_parallel=False) == 1
    assert faiss_index.call_threads(1, single_query_parallel=True) == cores
    assert faiss_index.call_threads(500, single_query_parallel=False) == cores


def test_calibrated_build_records_both_refine_parameters_in_index_json(tmp_path: Path) -> None:
    image, audio = clustered_pairs(3000, 32, seed=8)
    write_store(tmp_path, image, audio)
    info = build_indexes(tmp_path, factory="IVF32,PQ16x4fs,Refine(SQfp16)", calibrate=True, gpu=False)
    written = json.loads((tmp_path / INDEX_JSON).read_text())
    for side in ("image", "audio"):
        entry = written["indexes"][side]
        assert set(entry["search_params"]) == {"nprobe", "k_factor_rf"} and entry["calibration_recall"] >= CALIBRATION_RECALL
        assert entry["single_query_path"] == "one thread"  # faiss_index.SINGLE_QUERY_PARALLEL
    held = build_indexes(tmp_path, factory="IVF32,PQ16x4fs,Refine(SQfp16)", calibrate=True, gpu=False,
                         fixed_params={"k_factor_rf": 64})
    assert all(entry["search_params"]["k_factor_rf"] == 64 for entry in held["indexes"].values())
    opened = open_indexes(tmp_path, gpu=False)
    try:
        refine = faiss.downcast_index(opened.image)
        assert refine.k_factor == 64  # re-applied on load
        assert "implem 15" in faiss_index.single_query_path(opened.image, parallel=True)  # 10 x 64: reservoir
        assert faiss.extract_index_ivf(opened.image).nprobe == held["indexes"]["image"]["search_params"]["nprobe"]
    finally:
        opened.store.close()


def test_cost_model_prices_a_shorter_shortlist_and_fewer_lists_lower(refine_index: faiss.Index) -> None:
    cost = faiss_index.query_cost
    assert cost(refine_index, {"nprobe": 8, "k_factor_rf": 16}) < cost(refine_index, {"nprobe": 8, "k_factor_rf": 32})
    assert cost(refine_index, {"nprobe": 8, "k_factor_rf": 16}) < cost(refine_index, {"nprobe": 16, "k_factor_rf": 16})


def test_residual_codes_estimate_scores_more_closely_than_codes_of_the_vectors(
        store: EmbeddingStore, pairs: tuple[np.ndarray, np.ndarray]) -> None:
    """Why the CPU choice codes residuals (`fsr`): the same 4-bit codes, a residual shorter than its vector, so
    the first stage's scores are nearer the exact ones and a shorter shortlist reaches the same recall."""
    image, audio = pairs
    queries = audio[:50]
    errors = {}
    for codes in ("fs", "fsr"):
        index = build_index(store, "image_vectors", choose_index(NUM, DIM, factory=f"IVF30,PQ{DIM // 2}x4{codes}"))
        faiss_index.apply_search_params(index, {"nprobe": 30})
        estimates, rows = index.search(queries, 50)
        exact = np.einsum("qd,qkd->qk", queries, image[rows])
        errors[codes] = float(np.std(estimates - exact))
        assert faiss.downcast_index(index).by_residual == (codes == "fsr")
    assert errors["fsr"] < 0.8 * errors["fs"], errors  # 0.016 against 0.024 here


LADDER_NUM, LADDER_DIM, LADDER_LISTS = 6000, 32, 150  # 150 lists: a ladder long enough to run past the walk


@pytest.fixture(scope="module")
def ladder_pairs() -> tuple[np.ndarray, np.ndarray]:
    return clustered_pairs(LADDER_NUM, LADDER_DIM, seed=3)


@pytest.fixture(scope="module")
def hnsw_quantized_index(tmp_path_factory: pytest.TempPathFactory,
                         ladder_pairs: tuple[np.ndarray, np.ndarray]) -> faiss.Index:
    """The CPU choice's kind (fast-scan residual PQ in lists found through an HNSW graph of their centroids,
    re-ranked on the flat vectors), with enough lists that the nprobe ladder runs past the graph's efSearch of 64."""
    index_dir = tmp_path_factory.mktemp("ladder")
    write_store(index_dir, *ladder_pairs)
    factory = f"IVF{LADDER_LISTS}_{CPU_COARSE_QUANTIZER},PQ{LADDER_DIM // 2}x4fsr,RFlat"
    with EmbeddingStore.open(index_dir) as store:
        return build_index(store, "image_vectors", choose_index(LADDER_NUM, LADDER_DIM, factory=factory))


def test_recall_never_falls_along_the_nprobe_ladder(
        hnsw_quantized_index: faiss.Index, ladder_pairs: tuple[np.ndarray, np.ndarray]) -> None:
    """Probing more lists never loses hits, set on the index (`jsar query`, `jsar serve`, the Engine, the bench's
    sweep) or per call (calibration). Before the HNSW quantizer's efSearch followed nprobe, its walk stopped after
    64 steps and handed a fifth of these queries fewer than 150 lists, padded with score -3.4e38; fast-scan took
    that score as a list's bias, scaled every look-up table to 0, and those queries' shortlists were arbitrary
    (recall 0.79 at 150 lists against 0.98 at 128)."""
    image, audio = ladder_pairs
    queries = audio[::12]
    exact_scores, exact = brute_force_top_k(image, queries, 11)
    tie_free = exact_scores[:, 9] - exact_scores[:, 10] > 1e-5  # the 10th hit decided by more than rounding
    queries, exact = queries[tie_free], exact[tie_free, :10]
    assert len(queries) >= 400
    name, ladder = faiss_index.calibration_ladder(hnsw_quantized_index)
    assert name == "nprobe" and ladder[-1] == LADDER_LISTS and ladder[-2] > QUANTIZER_EF_SEARCH
    on_index, per_call = [], []
    for nprobe in ladder:
        faiss_index.apply_search_params(hnsw_quantized_index, {"nprobe": nprobe, "k_factor_rf": 4})
        on_index.append(recall_at_10(search(hnsw_quantized_index, queries, 10)[1], exact))
        params = faiss_index.search_parameters(hnsw_quantized_index, {"nprobe": nprobe, "k_factor_rf": 4})
        per_call.append(recall_at_10(hnsw_quantized_index.search(queries, 10, params=params)[1], exact))
    assert np.all(np.diff(on_index) >= 0), dict(zip(ladder, on_index))
    assert np.all(np.diff(per_call) >= 0), dict(zip(ladder, per_call))
    assert on_index[-1] >= on_index[0] + 0.1, dict(zip(ladder, on_index))  # and searching harder does find more


def test_the_coarse_graph_walks_at_least_as_far_as_the_lists_asked_for(hnsw_quantized_index: faiss.Index) -> None:
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(hnsw_quantized_index).quantizer)
    for nprobe, walk in ((16, QUANTIZER_EF_SEARCH), (128, 128), (150, 150)):
        faiss_index.apply_search_params(hnsw_quantized_index, {"nprobe": nprobe})
        assert quantizer.hnsw.efSearch == walk
    assert choose_index(4_000_000, 512).search_params["quantizer_efSearch"] == 200  # nprobe 200 there
    assert faiss_index.effective_search_params(hnsw_quantized_index, {"k_factor_rf": 8}) == {"k_factor_rf": 8}
