"""evaluation.bench_trunk_cache on a few clips: both caches measured, the same features, a table of both."""
from __future__ import annotations

from evaluation import bench_trunk_cache as bench


def test_both_caches_are_measured_and_printed_side_by_side(tmp_path):
    records = [{"run": "first", **bench.run_child(mode, tmp_path, clips=12, channels=8, grid=2)}
               for mode in bench.MODES]
    assert [record["mode"] for record in records] == list(bench.MODES)
    for record in records:
        assert record["peak_rss"] >= record["baseline_rss"] > 0
        assert record["added_anon"] >= 0 and record["seconds_features"] >= 0
    assert (tmp_path / "in-memory.pt").is_file() and len(list((tmp_path / "memmap").glob("*-views.npy"))) == 1
    table = bench.format_table(records, clips=12, channels=8, grid=2)
    assert "in-memory  first" in table and "memmap     first" in table and "12 clips" in table
