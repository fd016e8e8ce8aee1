"""evaluation.probes.bench_trunk_cache on a few clips: both caches measured, the same features, a table of both. The
features are made large (12 clips x 2 views x 2048 x 16 x 16 float16 = 24 MiB) so that the memory each cache
costs stands out of the pytest process's own."""
from __future__ import annotations

import time

from evaluation.probes import bench_trunk_cache as bench

CLIPS, CHANNELS, GRID = 12, 2048, 16
CACHE_BYTES = CLIPS * 2 * CHANNELS * GRID * GRID * 2


def test_both_caches_are_measured_and_printed_side_by_side(tmp_path):
    records, walls = [], []
    for mode in bench.MODES:
        started = time.monotonic()
        records.append({"run": "first", **bench.run_child(mode, tmp_path, clips=CLIPS, channels=CHANNELS, grid=GRID)})
        walls.append(time.monotonic() - started)
    assert [record["mode"] for record in records] == list(bench.MODES)
    in_memory, memmap = records
    assert in_memory["added_anon"] >= CACHE_BYTES  # the old cache holds every feature in the process's memory
    assert memmap["added_file"] < CACHE_BYTES / 10  # pread: the cache file's pages never enter the RSS
    for record, wall in zip(records, walls):
        assert record["peak_rss"] >= record["baseline_rss"] > 0
        assert 0 < record["seconds_features"] and record["seconds_features"] + record["seconds_epoch"] <= wall + 0.1
    assert (tmp_path / "in-memory.pt").is_file() and len(list((tmp_path / "memmap").glob("*-views.npy"))) == 1
    table = bench.format_table(records, clips=CLIPS, channels=CHANNELS, grid=GRID)
    assert "in-memory  first" in table and "memmap     first" in table and "12 clips" in table
    assert f"= {CACHE_BYTES / 2**30:.2f} GiB of features" in table
