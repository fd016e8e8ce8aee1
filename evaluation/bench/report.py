"""The summary table of a run: one renderer for every benchmark's table, and the rows of indexing and FAISS."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from .config import TOP_K
from .faiss_scale import LATENCY_GOAL_MS, RECALL_GOAL, FaissBench, IndexBench
from .indexing import INDEXING_RATIO_GOAL, IndexingBench


def render_table(header: str, titles: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Fixed-width text: `header`, a blank line, the column titles, a rule, the rows; every column but the last
    (a free-text note) padded to its widest cell."""
    body = [tuple(titles), *(tuple(row) for row in rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(titles) - 1)]
    lines = [header, ""]
    for number, row in enumerate(body):
        lines.append("  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]).rstrip())
        if number == 0:
            lines.append("  ".join(["-" * width for width in widths] + ["-" * 4]))
    return "\n".join(lines)


def goal_met(met: bool) -> str:
    return "met" if met else "MISSED"


@dataclass
class BenchReport:
    """The indexing and FAISS benchmarks of one run, the machine they ran on, and the summary table."""

    machine: dict[str, Any]
    indexing: IndexingBench | None
    faiss_scale: FaissBench | None
    seconds: float
    faiss_augmented: FaissBench | None = None  # the same measurements on real augmented encodings

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(section, measure, value, note) rows of the summary table."""
        rows: list[tuple[str, str, str, str]] = []
        if self.indexing is not None:
            rows += _indexing_rows(self.indexing)
        if self.faiss_scale is not None:
            rows += _faiss_rows(self.faiss_scale)
        if self.faiss_augmented is not None:
            rows += _faiss_rows(self.faiss_augmented, "faiss-real")
        return rows

    def table(self) -> str:
        """The summary table as fixed-width text, headed by the machine and its load."""
        machine = self.machine
        load = machine.get("load_average") or [0.0]
        header = (f"jsar benchmarks: {machine['usable_cores']} cores, load average {load[0]:.2f} at start, "
                  f"torch {machine['torch_version']} ({machine['torch_threads']} threads), "
                  f"faiss {machine.get('faiss_version', '?')}, "
                  f"{self.seconds:.0f} s in all")
        return render_table(header, ("section", "measure", "value", "note"), self.rows())

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "seconds": self.seconds,
                "indexing": None if self.indexing is None else self.indexing.to_dict(),
                "faiss_scale": None if self.faiss_scale is None else self.faiss_scale.to_dict(),
                "faiss_augmented": None if self.faiss_augmented is None else self.faiss_augmented.to_dict(),
                "table": self.table()}


def _gib(value: int) -> str:
    return f"{value / (1 << 30):.2f} GiB"


def _indexing_rows(bench: IndexingBench) -> list[tuple[str, str, str, str]]:
    section = "indexing"
    ratio_note = f"goal >= {INDEXING_RATIO_GOAL}: {goal_met(bench.ratio >= INDEXING_RATIO_GOAL)}"
    return [
        (section, f"index_dataset ({bench.clips} clips, batch {bench.batch_size}, {bench.workers} workers)",
         f"{bench.index_rate:.1f} clips/s", "decode in workers + encoders + store writes"),
        (section, "bare encoders, random tensors (same batch)", f"{bench.bare_rate:.1f} clips/s",
         f"torch {bench.torch_threads} threads; before and after indexing (harmonic mean)"),
        (section, "ratio index / bare", f"{bench.ratio:.2f}", ratio_note),
        (section, f"decode only (DataLoader, {bench.workers} workers)", f"{bench.decode_rate:.1f} clips/s", "no model"),
        (section, "decode CPU per clip (one worker)", f"{bench.decode_ms_per_clip:.2f} ms",
         f"image decode {bench.image_decode_ms:.2f} + resize {bench.image_resize_ms:.2f} ms, audio read + window "
         f"{bench.audio_decode_ms:.2f} ms (one thread, in process)"),
        (section, "batch preparation per clip (main process)", f"{bench.batch_prep_ms:.2f} ms",
         f"normalise {bench.normalise_ms:.2f} + spectrograms {bench.spectrogram_ms:.2f} + transfer "
         f"{bench.transfer_ms:.2f} ms; store write {bench.store_write_ms:.2f} ms"),
        (section, "model wall time per clip (all cores)", f"{bench.model_ms_per_clip:.1f} ms", ""),
        (section, "ratio ceiling, decode sharing the cores", f"{bench.shared_core_ceiling:.2f}",
         "t_model / (t_model + t_prep + t_decode / cores)"),
    ]


def _faiss_rows(bench: FaissBench, section: str = "faiss") -> list[tuple[str, str, str, str]]:
    bases = bench.bases
    store = bench.rss["store"]
    rows = [
        (section, f"store {bench.vectors:,} x {bench.dim}, 2 modalities: {bench.source}",
         f"{bench.store_seconds:.1f} s",
         f"StoreWriter + finalize; peak RSS {_gib(store['peak'])} ({_gib(store['start'])} at start)"),
    ]
    if bases:
        rows += [
            (section, "bases", f"{bench.base_clips} clips",
             f"model dim {bases['model_dim']} -> {bench.dim}; mean cos {bases['mean_cosine_model']:.3f}"
             f"{' -> centred ' + format(bases['mean_cosine'], '.3f') if bases['centred'] else ''}; "
             f"image-audio pair cos {bases['pair_cosine']:.3f}"),
            (section, f"noise sigma {bench.sigma}", f"cos(copy, base) {bench.copy_base_cosine:.3f}", "measured"),
        ]
    else:
        rows.append((section, "clips behind the rows", f"{bench.base_clips}", "each row a new crop and audio window"))
    rows.append((section, "cross-modal gap: cos(image r, audio r) / random audio",
                 f"{bench.pair_cosine:.3f} / {bench.random_cosine:.3f}", "measured on the store's first rows"))
    raw = 2 * bench.vectors * bench.dim * 4
    for index in [bench, *bench.compared]:
        rows += _index_rows(section, index, bench.faiss_threads, raw, bench.peak_rss_exact)
    return rows


def _index_rows(section: str, bench: IndexBench, threads: int, raw_bytes: int,
                peak_exact: bool) -> list[tuple[str, str, str, str]]:
    """Rows of one index: choice, build, memory, then per direction latency, throughput, recall and sweep."""
    params = ", ".join(f"{key}={value}" for key, value in bench.search_params.items()) or "exact"
    def rss(phase: str) -> str:
        values = bench.rss[phase]
        lifetime = "" if peak_exact else ", lifetime peak: VmHWM reset not allowed"
        return f"peak RSS {_gib(values['peak'])} ({_gib(values['start'])} at start{lifetime})"

    rows = [
        (section, "index (build_indexes, automatic choice)" if bench.automatic else "index (factory given)",
         bench.label, f"{params}; {bench.reason}"),
        (section, "build both indexes (train + add + save)", f"{bench.build_seconds:.1f} s",
         f"{threads} threads; {rss('build')}; files {_gib(bench.index_bytes)} "
         f"({bench.index_bytes / raw_bytes:.2f} x the raw float32 vectors)"),
        (section, "search phase", _gib(bench.rss["search"]["peak"]), f"{rss('search')}: both indexes open"),
    ]
    for direction in bench.directions:
        name = direction.name
        latency_ok = direction.median_ms <= LATENCY_GOAL_MS
        recall_ok = direction.recall_vs_flat >= RECALL_GOAL
        rows += [
            (section, f"{name} single query median / p95 / p99",
             f"{direction.median_ms:.2f} / {direction.p95_ms:.2f} / {direction.p99_ms:.2f} ms",
             f"goal <= {LATENCY_GOAL_MS} ms: {goal_met(latency_ok)}; exact flat {direction.flat_median_ms:.1f} ms "
             f"({direction.flat_median_ms / max(direction.median_ms, 1e-9):.0f}x)"),
            (section, f"{name} single query, lists split over the cores, median / p99",
             f"{direction.split_median_ms:.2f} / {direction.split_p99_ms:.2f} ms",
             f"split / one thread: {direction.split_median_ms / max(direction.median_ms, 1e-9):.2f}x"),
            (section, f"{name} score margin 10th - 640th / first-stage error (std)",
             f"{direction.margin_gap:.4f} / {direction.first_stage_error:.4f}",
             "the index does not expose its first stage's scores (ScaNN)" if math.isnan(direction.first_stage_error)
             else f"ratio {direction.margin_gap / max(direction.first_stage_error, 1e-9):.1f}: how many error widths "
             "separate the top 10 from the shortlist's end"),
            (section, f"{name} batch of {direction.batch_size}", f"{direction.batch_qps:,.0f} q/s",
             f"exact flat {direction.flat_qps:,.0f} q/s, numpy {direction.numpy_qps:,.0f} q/s"),
            (section, f"{name} recall@{TOP_K} vs flat / vs numpy",
             f"{direction.recall_vs_flat:.3f} / {direction.recall_vs_numpy:.3f}",
             f"goal >= {RECALL_GOAL}: {goal_met(recall_ok)}; flat vs numpy {direction.flat_vs_numpy:.3f}"),
        ]
        if direction.stages_ms:
            stages = direction.stages_ms
            rows.append((section, f"{name} one query by stage, one thread (median)",
                         " / ".join(f"{value:.2f}" for value in stages.values()) + " ms",
                         " / ".join(stages) + ": each includes the ones before it"))
        for point in direction.sweep:
            rows.append((section, f"{name} sweep {bench.sweep_param}={point.value}",
                         f"recall {point.recall:.3f}, {point.median_ms:.2f} ms",
                         f"p95 {point.p95_ms:.2f} ms" + "".join(
                             f", {param} {value}" for param, value in point.applied.items()
                             if param != bench.sweep_param)))
    return rows
