"""Probe (not shipped). Question: what does the trunk-feature cache cost in memory at scale, the old in-memory
cache against the memory-mapped one read with pread? Answer: the in-memory cache's anonymous RSS grows by the whole
feature array (2 x 1280 x 7 x 7 float16 = 245 KiB a clip, 4.7 GiB at 20k clips), the mapped one's stays flat and
its file pages stay out of the RSS (tests/test_bench_trunk_cache.py asserts both on 12 clips); indexing the map
instead of pread had reached 3.8 GiB of RSS after one epoch over 20k clips. Feeds the memory claims of
training/trunk_cache.py and jsa_retrieval/dataset.py (`CachedImageFeatures`); no doc holds its 20k-clip table.

    python -m evaluation.probes.bench_trunk_cache                 # 20,000 clips, EfficientNet-Lite0's 1280 x 7 x 7
    python -m evaluation.probes.bench_trunk_cache --clips 2000 --channels 256

The features' size per clip is what matters, not the trunk, so a stand-in trunk (average-pool to the grid, a
1x1 convolution to the real channel count) runs on small synthetic images: 20k clips cost about a minute
instead of an hour, and each clip still caches 2 x 1280 x 7 x 7 float16 = 245 KiB, as the `real` preset does.

Each cache runs in its own process, twice: a first run (compute and write the cache, then one training epoch
over every clip) and a later run (read the cache, one epoch). Printed side by side per run: peak RSS (VmHWM), and
above the process's RSS before the cache, the peak anonymous RSS (memory the process owns) and the peak
file-backed RSS (pages of the mapped cache file: clean page cache the kernel reclaims under pressure, so it never
makes a run run out of memory). The decoding workers' memory is the same for both and not counted.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from jsa_retrieval.checkpoints import save_checkpoint
from jsa_retrieval.clips import Clip
from jsa_retrieval.config import JSARConfig, get_config
from jsa_retrieval.dataset import CachedImageFeatures, make_loader
from training.trunk_cache import CACHE_VIEWS, TrunkInputs, cached_trunk_features

MODES = ("in-memory", "memmap")
IMAGE_SIZE = 32


class StandInTrunk(nn.Module):
    """(B, 3, S, S) -> (B, channels, grid, grid): a real trunk's output shape at a tiny fraction of its cost."""

    def __init__(self, channels: int, grid: int):
        super().__init__()
        self.out_channels, self.grid = channels, grid
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.projection = nn.Conv2d(3, channels, kernel_size=1)

    def output_size(self, size: int) -> int:
        return self.grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.pool(images))


class PeakSampler:
    """Peak RssAnon and RssFile of this process, sampled from /proc/self/status every `interval` seconds."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peaks = interval, {"RssAnon": 0, "RssFile": 0}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        self._sample()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        status = _proc_status()
        for name in self.peaks:
            self.peaks[name] = max(self.peaks[name], status.get(name, 0))


def _proc_status() -> dict[str, int]:
    """The kB fields of /proc/self/status, in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def make_images(folder: Path, count: int, seed: int = 0) -> list[Clip]:
    """`count` small noise PNGs (each clip's image; the trunk cache never reads the audio)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = []
    for index in tqdm(range(count), desc="synthetic images", leave=False):
        path = folder / f"clip{index:06d}.png"
        if not path.is_file():
            Image.fromarray(rng.integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(path)
        clips.append(Clip(f"clip{index:06d}", path, path))
    return clips


def bench_config() -> JSARConfig:
    config = get_config("cpu")
    config.data.image_size, config.data.train_resize = IMAGE_SIZE, IMAGE_SIZE + 4
    return config


@torch.no_grad()
def in_memory_features(trunk: nn.Module, clips: list[Clip], config: JSARConfig, path: Path) -> torch.Tensor:
    """The cache as it was: the whole (N, 2, C, h, w) float16 tensor built in memory, saved with torch, and on a
    later run loaded whole again."""
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)["features"]
    features = None
    for batch in make_loader(TrunkInputs(clips, config.data), 256, num_workers=2):
        images = batch["image"]
        views = trunk(images.flatten(0, 1))
        views = views.reshape(*images.shape[:2], *views.shape[1:]).half()
        if features is None:
            features = torch.zeros(len(clips), CACHE_VIEWS, *views.shape[2:], dtype=torch.float16)
        features[batch["index"]] = views
    save_checkpoint(path, {"features": features})
    return features


def one_epoch(features: CachedImageFeatures) -> float:
    """Read every clip's training view once in a shuffled order, as a training epoch does; returns a checksum."""
    order = list(range(len(features)))
    random.Random(0).shuffle(order)
    total = 0.0
    for index in order:
        total += float(features.images(index, 1, train=True)[0][0, 0, 0])
    return total


def run_child(mode: str, workdir: Path, clips: int, channels: int, grid: int) -> dict:
    """One run of one cache in this process: its seconds and peak memory."""
    torch.manual_seed(0)
    torch.set_num_threads(2)
    config, trunk = bench_config(), StandInTrunk(channels, grid).eval()
    clip_list = make_images(workdir / "images", clips)
    baseline = _proc_status()
    started = time.monotonic()
    with PeakSampler() as sampler:
        if mode == "in-memory":
            features = CachedImageFeatures(in_memory_features(trunk, clip_list, config, workdir / "in-memory.pt"))
        else:
            features = cached_trunk_features(trunk, clip_list, config, torch.device("cpu"), workdir / "memmap",
                                             num_workers=2, progress=False)
        ready = time.monotonic()
        one_epoch(features)
    status = _proc_status()
    return {"mode": mode, "seconds_features": round(ready - started, 1),
            "seconds_epoch": round(time.monotonic() - ready, 1), "peak_rss": status["VmHWM"],
            "baseline_rss": baseline["VmRSS"], "added_anon": sampler.peaks["RssAnon"] - baseline["RssAnon"],
            "added_file": sampler.peaks["RssFile"] - baseline["RssFile"]}


def run(clips: int = 20_000, channels: int = 1280, grid: int = 7, workdir: Path | None = None,
        modes: tuple[str, ...] = MODES) -> list[dict]:
    """Each cache of `modes` in a fresh process, first run then later run; one record per (cache, run)."""
    with tempfile.TemporaryDirectory(prefix="jsar-bench-trunk-") as scratch:
        workdir = Path(workdir or scratch)
        make_images(workdir / "images", clips)
        records = []
        for mode in modes:
            for run_name in ("first", "later"):
                command = [sys.executable, "-m", "evaluation.probes.bench_trunk_cache", "--child", mode,
                           "--workdir", str(workdir), "--clips", str(clips), "--channels", str(channels),
                           "--grid", str(grid)]
                output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
                records.append({"run": run_name, **json.loads(output.strip().splitlines()[-1])})
        return records


def format_table(records: list[dict], clips: int, channels: int, grid: int) -> str:
    per_clip = CACHE_VIEWS * channels * grid * grid * 2
    lines = [f"trunk-feature cache, {clips:,} clips x {per_clip / 1024:.0f} KiB "
             f"(2 views x {channels} x {grid} x {grid} float16) = {clips * per_clip / 2**30:.2f} GiB of features",
             "peak RSS is the process's whole high-water mark; 'anon' and 'file' are the peaks above the RSS before "
             "the cache was touched (torch and its libraries): memory the process owns, and mapped cache-file pages "
             "(clean page cache, reclaimed by the kernel under pressure)",
             f"{'cache':<10} {'run':<6} {'features s':>10} {'epoch s':>8} {'peak RSS':>10} {'+anon':>10} "
             f"{'+file':>10}"]
    for record in records:
        gib = [f"{record[key] / 2**30:.2f} GiB" for key in ("peak_rss", "added_anon", "added_file")]
        lines.append(f"{record['mode']:<10} {record['run']:<6} {record['seconds_features']:>10} "
                     f"{record['seconds_epoch']:>8} {gib[0]:>10} {gib[1]:>10} {gib[2]:>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=20_000)
    parser.add_argument("--channels", type=int, default=1280, help="trunk channels (EfficientNet-Lite0: 1280)")
    parser.add_argument("--grid", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None, help="keep images and caches here (default: temp)")
    parser.add_argument("--modes", default=",".join(MODES), help="caches to measure, comma-separated")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clips < 1 or args.channels < 1 or args.grid < 1:
        parser.error("--clips, --channels and --grid must be positive")
    modes = tuple(args.modes.split(","))
    if not set(modes) <= set(MODES):
        parser.error(f"--modes takes {', '.join(MODES)}")
    if args.child:
        print(json.dumps(run_child(args.child, args.workdir, args.clips, args.channels, args.grid)))
        return
    records = run(args.clips, args.channels, args.grid, args.workdir, modes)
    print(format_table(records, args.clips, args.channels, args.grid))


if __name__ == "__main__":
    main()
