"""Benchmarks at toy sizes: the numbers they report are sane (rates whose times fit in the run, recall in [0, 1],
exact = 1)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from evaluation.bench import (BenchConfig, BenchReport, FaissSettings, bench_faiss_scale, make_random_checkpoint,
                              run_benchmarks)
from evaluation.bench import augmented
from evaluation.bench.faiss_scale import GivenRows, compare_spec, exact_neighbours
from evaluation.bench.memory import PeakMemory
from evaluation.bench.report import render_table
from evaluation.bench.vectors import (mean_pairwise_cosine, noisy_copies, orthogonal_map, prepare_bases,
                                      write_structured_store)
from indexing.faiss_index import neighbour_recall_at_k
from indexing.store import EmbeddingStore, l2_normalise
from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.cli import cli
from jsa_retrieval.config import cpu_config
from jsa_retrieval.synth import SynthConfig, generate


def tiny_config_file(path: Path) -> Path:
    """cpu preset shrunk to 64 px, 1 s of audio and 8-wide encoders: a forward pass takes milliseconds."""
    config = cpu_config()
    config.data.image_size, config.data.audio_seconds = 64, 1.0
    config.model.encoder_width, config.model.embed_dim, config.model.decoder_hidden = 8, 32, 32
    path.write_text(json.dumps(config.to_dict()))
    return path


@pytest.fixture(scope="module")
def clips_and_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bench")
    data = root / "data"
    generate(data, SynthConfig(n_clips=12, seed=3, image_size=64, seconds=1.0), progress=False)
    checkpoint = make_random_checkpoint(root / "model.pt", config_name=str(tiny_config_file(root / "tiny.json")))
    return data, checkpoint


def spread_bases(count: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = l2_normalise(rng.normal(size=(count, dim)))
    return image, l2_normalise(image + 0.5 * rng.normal(size=(count, dim)) / np.sqrt(dim))


def test_random_checkpoint_loads_in_the_trainer_format(clips_and_checkpoint: tuple[Path, Path]) -> None:
    _, checkpoint = clips_and_checkpoint
    saved = torch.load(checkpoint, weights_only=True)
    assert set(saved) == {"model_name", "config", "model", "epoch", "meta"}  # checkpoint_state without training state
    model, config, _ = load_model(checkpoint)
    assert model.model_name == "jsa" and config.model.embed_dim == 32 and config.model.image_weights == "none"


def test_run_benchmarks_reports_rates_that_fit_in_its_own_time_and_exact_recall_of_one(
        clips_and_checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    data, checkpoint = clips_and_checkpoint
    config = BenchConfig(data_dir=data, checkpoint=checkpoint, work_dir=tmp_path / "work", batch_size=4, workers=0,
                         json_path=tmp_path / "bench.json",
                         faiss=FaissSettings(vectors=1500, dim=48, latency_queries=8, batch_queries=40,
                                             recall_queries=30))
    started = time.perf_counter()
    report = run_benchmarks(config)
    wall = time.perf_counter() - started
    indexing = report.indexing
    assert indexing.clips == 12 and indexing.workers == 0 and indexing.seconds <= wall
    # each rate is clips over a stretch of time spent inside the benchmark, one after the other: a rate off by a
    # unit (ms for s) or inverted gives times that do not fit in the benchmark's own seconds
    assert 12 / indexing.index_rate + 12 / indexing.decode_rate + 2 * 4 / indexing.bare_rate <= indexing.seconds
    assert 12 * indexing.decode_ms_per_clip / 1000 <= indexing.seconds
    stages_ms = (indexing.image_decode_ms + indexing.image_resize_ms + indexing.audio_decode_ms + indexing.normalise_ms
                 + indexing.spectrogram_ms + indexing.store_write_ms)
    assert 0 < 4 * stages_ms / 1000 <= indexing.seconds  # the stages are timed on one batch of 4 clips
    assert indexing.ratio == pytest.approx(indexing.index_rate / indexing.bare_rate)
    assert 0 < indexing.shared_core_ceiling < 1
    scale = report.faiss_scale
    assert scale.factory == "Flat" and scale.vectors == 1500 and scale.dim == 48  # 1,500 <= 100k: exact
    assert scale.bases["model_dim"] == 32 and scale.bases["centred"] == (scale.bases["mean_cosine_model"] > 0.9)
    assert 0.8 < scale.copy_base_cosine < 0.9  # sigma 0.6 -> 1 / sqrt(1.36) = 0.857
    assert [d.name for d in scale.directions] == ["audio->image", "image->audio"]
    for direction in scale.directions:
        assert direction.recall_vs_flat == 1.0 and direction.flat_vs_numpy == 1.0
        assert direction.recall_vs_numpy == 1.0
        assert direction.median_ms > 0 and direction.p95_ms >= direction.median_ms
        assert 8 / 2 * direction.median_ms / 1000 <= scale.seconds  # half of the 8 timed queries took the median
        assert 40 / direction.batch_qps + 30 / direction.flat_qps + 30 / direction.numpy_qps <= scale.seconds
        assert direction.batch_size == 40 and direction.sweep == []
    assert all(phase["peak"] > 0 for phase in scale.rss.values())
    assert 0 < scale.build_seconds <= scale.seconds <= report.seconds <= wall
    assert scale.index_bytes > 1500 * 48 * 4 * 2
    assert not (tmp_path / "work" / "scale-index").exists()  # gigabytes at full size: removed after the run
    table = report.table()
    assert "ratio index / bare" in table and "audio->image recall@10 vs flat / vs numpy" in table
    assert "1.000 / 1.000" in table
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["faiss_scale"]["factory"] == "Flat" and saved["indexing"]["clips"] == 12


def test_ivf_benchmark_sweeps_nprobe_and_is_exact_when_every_list_is_probed(tmp_path: Path) -> None:
    image, audio = spread_bases(40, 24)
    settings = FaissSettings(vectors=4000, dim=64, factory="IVF32,Flat", latency_queries=5, batch_queries=50,
                             recall_queries=50, sweep_values=(1, 4, 32, 64))
    bench = bench_faiss_scale(tmp_path / "scale", image, audio, settings)
    assert bench.factory == "IVF32,Flat" and bench.sweep_param == "nprobe"
    assert set(bench.search_params) == {"nprobe"}  # calibrated by build_indexes, a named factory too
    assert not bench.bases["centred"] and bench.source == "noisy copies"
    for direction in bench.directions:
        assert 0.0 <= direction.recall_vs_flat <= 1.0 and direction.flat_vs_numpy == 1.0
        assert [point.value for point in direction.sweep] == [1, 4, 32]  # 64 > nlist is dropped
        assert all(0.0 <= point.recall <= 1.0 and point.median_ms > 0 for point in direction.sweep)
        assert direction.sweep[-1].recall == 1.0  # every list probed = exhaustive search
        assert direction.sweep[0].recall <= direction.sweep[-1].recall
        assert [point.applied for point in direction.sweep] == [{"nprobe": value} for value in (1, 4, 32)]
        assert direction.split_median_ms > 0 and direction.margin_gap > 0
        assert direction.first_stage_error < 1e-6  # IVF over flat vectors: the scores are exact
    assert "sweep nprobe=1" in BenchReport({"usable_cores": 2, "load_average": [0.0], "torch_version": "t",
                                            "torch_threads": 2, "faiss_version": "f"}, None, bench, 1.0).table()


def test_compared_indexes_share_the_store_and_the_exact_neighbours(tmp_path: Path) -> None:
    image, audio = spread_bases(60, 24)
    settings = FaissSettings(vectors=3000, dim=48, factory="Flat", compare=("HNSW32",),
                             latency_queries=5, batch_queries=50, recall_queries=50, sweep_values=(16, 64))
    bench = bench_faiss_scale(tmp_path / "scale", image, audio, settings)
    assert bench.factory == "Flat" and [index.factory for index in bench.compared] == ["HNSW32"]
    assert 1 > bench.pair_cosine > bench.random_cosine + 0.2  # the gap the benchmark reports
    guided = bench.compared[0]
    assert bench.sweep_param is None and guided.sweep_param == "efSearch"
    assert set(guided.rss) == {"build", "search"} and guided.build_seconds > 0 and not guided.automatic
    assert set(guided.search_params) == {"efSearch"}  # calibrated on the store's paired vectors
    for exact, found in zip(bench.directions, guided.directions):
        assert exact.recall_vs_flat == 1.0 and found.recall_vs_flat >= 0.9
        assert found.flat_median_ms == exact.flat_median_ms  # one exact pass, shared
        assert [point.value for point in found.sweep] == [16, 64] and found.p99_ms >= found.median_ms
    table = BenchReport({"usable_cores": 2, "load_average": [0.0], "torch_version": "t", "torch_threads": 2,
                         "faiss_version": "f"}, None, bench, 1.0).table()
    assert "HNSW32" in table and "sweep efSearch=16" in table and "cross-modal gap" in table


def test_one_renderer_pads_every_column_but_the_note() -> None:
    table = render_table("head", ("a", "bb", "note"), [("xxx", "y", "free text"), ("z", "wwww", "")])
    assert table.splitlines() == ["head", "", "a    bb    note", "---  ----  ----", "xxx  y     free text", "z    wwww"]


def test_recall_at_k_counts_the_overlap_and_ignores_missing_ids() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert neighbour_recall_at_k(found, truth, k=4) == pytest.approx((2 / 4 + 4 / 4) / 2)
    assert neighbour_recall_at_k(truth, truth, k=4) == 1.0
    assert neighbour_recall_at_k(np.full((2, 4), -1), truth, k=4) == 0.0


def test_orthogonal_map_keeps_inner_products_when_it_widens() -> None:
    vectors = l2_normalise(np.random.default_rng(1).normal(size=(30, 16)))
    widened = vectors @ orthogonal_map(16, 512, seed=4)
    assert widened.shape == (30, 512)
    np.testing.assert_allclose(widened @ widened.T, vectors @ vectors.T, atol=1e-5)
    assert orthogonal_map(64, 32).shape == (64, 32) and np.array_equal(orthogonal_map(8, 8), np.eye(8))


def test_collapsed_bases_are_centred_and_spread_ones_kept() -> None:
    rng = np.random.default_rng(2)
    cone = l2_normalise(np.ones(32) + 0.05 * rng.normal(size=(50, 32)))  # an untrained network's vectors
    assert mean_pairwise_cosine(cone) > 0.99
    collapsed = prepare_bases(cone, cone[::-1], dim=64)
    assert collapsed.centred and abs(collapsed.mean_cosine) < 0.1 and collapsed.image.shape == (50, 64)
    np.testing.assert_allclose(np.linalg.norm(collapsed.audio, axis=1), 1.0, rtol=1e-5)
    kept = prepare_bases(*spread_bases(50, 32), dim=64)
    assert not kept.centred and kept.pair_cosine > 0.8


def test_mean_pairwise_cosine_matches_all_pairs() -> None:
    vectors = l2_normalise(np.random.default_rng(3).normal(size=(20, 8)) + 0.5)
    gram = vectors @ vectors.T
    expected = (gram.sum() - np.trace(gram)) / (20 * 19)
    assert mean_pairwise_cosine(vectors) == pytest.approx(expected, abs=1e-6)


def test_noisy_copies_sit_at_the_intended_cosine_to_their_base() -> None:
    bases = l2_normalise(np.random.default_rng(4).normal(size=(5, 512)))
    rows = np.repeat(np.arange(5), 200)
    copies = noisy_copies(bases, rows, sigma=0.6, rng=np.random.default_rng(5))
    np.testing.assert_allclose(np.linalg.norm(copies, axis=1), 1.0, rtol=1e-5)
    assert np.mean(np.sum(copies * bases[rows], axis=1)) == pytest.approx(1 / np.sqrt(1.36), abs=0.01)


def test_exact_neighbours_agree_with_a_full_sort(tmp_path: Path) -> None:
    bases = prepare_bases(*spread_bases(10, 16), dim=32)
    write_structured_store(tmp_path, bases, 700, chunk_rows=128)
    queries = l2_normalise(np.random.default_rng(6).normal(size=(9, 32)))
    with EmbeddingStore.open(tmp_path) as store:
        gallery = store.read_rows("image_vectors", np.arange(len(store)))
        exact = exact_neighbours(store, "image_vectors", queries, k=5, chunk_rows=100)
    expected = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :5]
    assert np.array_equal(exact.numpy_ids, expected) and np.array_equal(exact.flat_ids, expected)
    assert exact.flat_index.ntotal == 700


def test_peak_memory_sees_an_allocation_made_inside_the_block() -> None:
    with PeakMemory() as memory:
        block = np.ones(200 << 17)  # 200 MiB of float64
        block[::4096] = 2.0
        del block
    assert memory.peak - memory.start > 150 << 20


def test_each_jsar_bench_command_has_only_its_own_options() -> None:
    def options(command: str) -> str:
        result = CliRunner().invoke(cli, ["bench", command, "--help"])
        assert result.exit_code == 0
        return result.output

    faiss, serve, indexing = options("faiss"), options("serve"), options("indexing")
    assert all(flag in faiss for flag in ("--quick", "--vectors", "--factory", "--sweep", "--device", "--clips"))
    assert "--requests" in serve and "--concurrency" in serve
    assert not any(flag in serve for flag in ("--device", "--factory", "--sweep", "--vectors", "--batch-size"))
    assert "--device" in indexing and not any(flag in indexing for flag in ("--factory", "--sweep", "--requests"))
    assert "--factory" in options("all") and "--requests" not in options("all")


def test_jsar_bench_serve_refuses_an_option_it_would_ignore() -> None:
    result = CliRunner().invoke(cli, ["bench", "serve", "--device", "cuda"])
    assert result.exit_code == 2 and "No such option '--device'" in result.output


def test_jsar_bench_faiss_takes_repeated_sweep_and_compare_values(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr("evaluation.bench.run_benchmarks", lambda config, **parts: calls.append((config, parts))
                        or BenchReport({"usable_cores": 2, "torch_version": "t", "torch_threads": 2}, None, None, 0.0))
    result = CliRunner().invoke(cli, ["bench", "faiss", "--sweep", "8", "--sweep", "16", "--compare", "HNSW32",
                                      "--compare", "Flat", "--vectors", "5000", "--clips", "12", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    config, parts = calls[0]
    assert parts == {"indexing": False} and config.clips == 12 and config.device == "cpu"
    assert config.faiss.sweep_values == (8, 16) and config.faiss.compare == ("HNSW32", "Flat")
    assert config.faiss.vectors == 5000 and config.faiss.factory is None


def test_jsar_bench_rejects_a_bad_sweep_in_one_line() -> None:
    result = CliRunner().invoke(cli, ["bench", "faiss", "--sweep", "x"])
    assert result.exit_code == 2 and "--sweep" in result.output and "Traceback" not in result.output


def test_jsar_bench_refuses_a_bad_compare_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("evaluation.bench.run_benchmarks", lambda *args, **kwargs: pytest.fail("the bench started"))
    result = CliRunner().invoke(cli, ["bench", "faiss", "--compare", "IVF8,Flat|nprobe"])
    assert result.exit_code == 2 and "--compare" in result.output and "name=integer" in result.output


def test_refine_comparisons_hold_fixed_parameters_and_measure_the_first_stage_error(tmp_path: Path) -> None:
    image, audio = spread_bases(60, 24)
    settings = FaissSettings(vectors=4000, dim=64, factory="IVF32,PQ32x4fs,Refine(SQfp16)",
                             compare=("IVF32,PQ32x4fs,RFlat|k_factor_rf=64",), latency_queries=5, batch_queries=50,
                             recall_queries=50, sweep_values=(8,), margin_queries=20)
    bench = bench_faiss_scale(tmp_path / "scale", image, audio, settings)
    assert set(bench.search_params) == {"nprobe", "k_factor_rf"} or "image index nprobe" in bench.search_params
    held = bench.compared[0]
    assert held.label == "IVF32,PQ32x4fs,RFlat | k_factor_rf=64"
    assert all(value == 64 for key, value in held.search_params.items() if key.endswith("k_factor_rf"))
    for direction in bench.directions + held.directions:
        assert direction.first_stage_error > 0 and direction.margin_gap > 0  # 4-bit PQ scores are approximate
        assert direction.median_ms > 0 and direction.split_median_ms > 0
        assert list(direction.stages_ms) == ["coarse quantizer", "first stage", "whole index", "through search()"]
        assert all(value > 0 for value in direction.stages_ms.values())
    table = BenchReport({"usable_cores": 2, "load_average": [0.0], "torch_version": "t", "torch_threads": 2,
                         "faiss_version": "f"}, None, bench, 1.0).table()
    assert "k_factor_rf=64" in table and "first-stage error" in table and "one thread" in table
    assert "one query by stage" in table


def test_given_rows_are_stored_as_given_and_searched_with_their_own_queries(tmp_path: Path) -> None:
    image, audio = spread_bases(30, 64)
    rows = 2000
    rng = np.random.default_rng(3)
    store_image = noisy_copies(image, np.arange(rows) % 30, 0.5, rng)
    store_audio = noisy_copies(audio, np.arange(rows) % 30, 0.5, rng)
    queries = {"audio->image": noisy_copies(audio, np.arange(60) % 30, 0.5, rng),
               "image->audio": noisy_copies(image, np.arange(60) % 30, 0.5, rng)}
    settings = FaissSettings(vectors=rows, dim=64, factory="Flat", latency_queries=5, batch_queries=50,
                             recall_queries=50, margin_queries=10)
    bench = bench_faiss_scale(tmp_path / "given", image, audio, settings,
                              given=GivenRows(store_image, store_audio, queries, clips=30))
    assert bench.source == "augmented encodings" and bench.vectors == rows and bench.base_clips == 30
    with EmbeddingStore.open(tmp_path / "given") as store:
        np.testing.assert_allclose(store.read_rows("audio_vectors", np.arange(5)), store_audio[:5], atol=1e-6)
    assert all(direction.recall_vs_flat == 1.0 for direction in bench.directions)
    table = BenchReport({"usable_cores": 2, "load_average": [0.0], "torch_version": "t", "torch_threads": 2,
                         "faiss_version": "f"}, None, None, 1.0, faiss_augmented=bench).table()
    assert "faiss-real" in table and "augmented encodings" in table


def test_compare_spec_reads_fixed_parameters_and_refuses_bad_ones() -> None:
    assert compare_spec("HNSW32") == ("HNSW32", {})
    assert compare_spec("IVF8,PQ4x4fs,RFlat|k_factor_rf=64|nprobe=4") == ("IVF8,PQ4x4fs,RFlat",
                                                                          {"k_factor_rf": 64, "nprobe": 4})
    with pytest.raises(ValueError, match="name=integer"):
        compare_spec("IVF8,Flat|nprobe")


def test_augmented_encodings_resume_from_their_cache_and_match_an_uncached_run(
        clips_and_checkpoint: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, checkpoint = clips_and_checkpoint
    encode = dict(dim=64, seed=2, batch_size=8, workers=0)
    plain_image, plain_audio, clips = augmented.augmented_encodings(data, checkpoint, 28, **encode)
    assert plain_image.shape == (28, 64) and clips == 12
    cache = tmp_path / "views.h5"
    batches, starts = augmented.encoded_batches, []

    def killed_after_one_batch(*args, **kwargs):
        for number, batch in enumerate(batches(*args, **kwargs)):
            if number == 1:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(augmented, "encoded_batches", killed_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        augmented.augmented_encodings(data, checkpoint, 20, cache=cache, **encode)
    with h5py.File(cache, "r") as handle:
        assert int(handle.attrs["done"]) == 8

    def recording(*args, **kwargs):
        starts.append(kwargs["start"])
        yield from batches(*args, **kwargs)

    monkeypatch.setattr(augmented, "encoded_batches", recording)
    image, audio, _ = augmented.augmented_encodings(data, checkpoint, 20, cache=cache, **encode)
    assert starts == [8]  # resumed at the first view not written
    np.testing.assert_allclose(image, plain_image[:20], atol=1e-5)
    np.testing.assert_allclose(audio, plain_audio[:20], atol=1e-5)
    image, _, _ = augmented.augmented_encodings(data, checkpoint, 12, cache=cache, **encode)
    assert starts == [8]  # fewer views than the cache holds: read back, nothing encoded
    np.testing.assert_allclose(image, plain_image[:12], atol=1e-5)
    image, _, _ = augmented.augmented_encodings(data, checkpoint, 28, cache=cache, **encode)
    assert starts == [8, 20]  # more: only the views it lacked
    np.testing.assert_allclose(image, plain_image, atol=1e-5)
    augmented.augmented_encodings(data, checkpoint, 12, cache=cache, **{**encode, "seed": 3})
    assert starts == [8, 20, 0]  # other views: the cache is begun afresh
