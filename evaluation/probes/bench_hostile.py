"""Probe (not shipped). Question: how much memory does a hostile file (a small file whose header describes
gigabytes) cost the decode path that `jsar serve` and `jsar index` use? Answer (2 shared cores, one run): every
file now stays under the +200 MB goal (at most +128 MB, a 4,096 x 4,096 RGBA PNG; the 13,000 x 13,000 PNG and the
5 MHz WAV are refused in one line), where the previous decoder took up to +1.7 GB or crashed. Feeds
docs/service.md, the table of peak RSS growth through the decode path.

    python -m evaluation.probes.bench_hostile                     # this checkout's decode path
    python -m evaluation.probes.bench_hostile --code /tmp/before  # another checkout's (a git worktree of an old commit)

Each file is decoded in a fresh subprocess the way `jsar serve` and `jsar index` decode a query or a clip
(`load_spectrogram` / `load_image_tensor` with the `cpu` preset's data settings), after one ordinary file has
gone through the same path, so imports and first-use allocations are not counted. The number printed is the
child's peak resident memory (VmHWM) over its peak before the hostile file. A child that passes `--kill-mb` over
its baseline is killed (shown as "> N MB"), so an old decoder cannot take the machine down. Goal: under +200 MB
for every file. A benchmark, not a test: it prints figures and does not time anything.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

GOAL_MB = 200.0
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class HostileFile:
    name: str
    path: Path
    kind: str  # 'audio' | 'image'


def _wav_at(path: Path, rate: int, samples: int = 100) -> Path:
    """A 16-bit mono WAV at `rate` (soundfile refuses odd rates for writing nothing: any int is accepted)."""
    soundfile.write(str(path), (0.1 * np.sin(np.arange(samples) / 3)).astype(np.float32), rate, subtype="PCM_16")
    return path


def _long_silence_flac(path: Path, seconds: int, rate: int = 48_000) -> Path:
    with soundfile.SoundFile(str(path), "w", samplerate=rate, channels=2, format="FLAC") as sound:
        block = np.zeros((rate * 10, 2), np.float32)
        for _ in range(seconds // 10):
            sound.write(block)
    return path


def make_hostile_files(folder: Path) -> list[HostileFile]:
    """The files of the red-team pass, and their neighbours, made small on disk."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [
        HostileFile("WAV at 4,001 Hz (100 samples)", _wav_at(folder / "rate4001.wav", 4_001), "audio"),
        HostileFile("WAV at 44,101 Hz (100 samples)", _wav_at(folder / "rate44101.wav", 44_101), "audio"),
        HostileFile("WAV at 767,999 Hz (100 samples)", _wav_at(folder / "rate767999.wav", 767_999), "audio"),
        HostileFile("WAV at 5,000,001 Hz (100 samples)", _wav_at(folder / "rate5000001.wav", 5_000_001), "audio"),
        HostileFile("FLAC, 20 min of stereo silence at 48 kHz", _long_silence_flac(folder / "silence.flac", 1200),
                    "audio"),
    ]
    grey = folder / "grey13000.png"
    Image.new("L", (13_000, 13_000)).save(grey, optimize=False)
    files.append(HostileFile("PNG 13,000 x 13,000 grey", grey, "image"))
    rgba = folder / "rgba4096.png"
    Image.new("RGBA", (4096, 4096), (40, 80, 120, 128)).save(rgba)
    files.append(HostileFile("PNG 4,096 x 4,096 RGBA (the largest accepted)", rgba, "image"))
    jpeg = folder / "grey12000.jpg"
    Image.new("L", (12_000, 12_000), 90).save(jpeg, quality=50)
    files.append(HostileFile("JPEG 12,000 x 12,000 grey", jpeg, "image"))
    return files


CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np, soundfile
    from PIL import Image
    from jsa_retrieval.config import get_config
    from jsa_retrieval.dataset import load_image_tensor, load_spectrogram
    from jsa_retrieval.decode import DecodeError

    def peak_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    kind, path, warm = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    data = get_config("cpu").data
    decode = load_spectrogram if kind == "audio" else load_image_tensor
    decode(warm / ("warm.wav" if kind == "audio" else "warm.png"), data)
    before = peak_kb()
    print(json.dumps({"baseline_kb": before}), flush=True)
    try:
        decode(path, data)
        outcome = "decoded"
    except DecodeError as error:
        outcome = "refused: " + str(error).replace(str(path), path.name)
    print(json.dumps({"outcome": outcome, "peak_kb": peak_kb(), "baseline_kb": before}), flush=True)
""")


def measure(file: HostileFile, code: Path, warm: Path, kill_mb: float) -> dict:
    """Run one decode in a subprocess; return its outcome and peak RSS growth (MB), killing it past kill_mb."""
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1")
    errors = tempfile.TemporaryFile("w+")
    child = subprocess.Popen([sys.executable, "-c", CHILD, file.kind, str(file.path), str(warm)], cwd=str(code),
                             env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
    baseline_kb = None
    killed_at = None
    while child.poll() is None:
        if baseline_kb is None:
            line = child.stdout.readline()
            if line.startswith("{"):
                baseline_kb = json.loads(line)["baseline_kb"]
            elif not line:
                break
            continue
        rss_kb = _rss_kb(child.pid)
        if rss_kb is not None and (rss_kb - baseline_kb) / 1024 > kill_mb:
            killed_at = (rss_kb - baseline_kb) / 1024
            child.kill()
            break
        time.sleep(0.01)
    out = child.stdout.read()  # after the baseline line: what the reader has not buffered yet
    child.wait()
    errors.seek(0)
    err = errors.read()
    errors.close()
    if killed_at is not None:
        return {"outcome": f"killed at > {kill_mb:,.0f} MB", "growth_mb": killed_at, "killed": True}
    lines = [json.loads(line) for line in out.splitlines() if line.startswith('{"outcome"')]
    if not lines or "outcome" not in lines[-1]:
        last = (err.strip().splitlines() or ["no output"])[-1]
        return {"outcome": f"crashed: {last}", "growth_mb": float("nan"), "killed": False}
    result = lines[-1]
    return {"outcome": result["outcome"], "growth_mb": (result["peak_kb"] - result["baseline_kb"]) / 1024,
            "killed": False}


def _rss_kb(pid: int) -> int | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _warm_files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(folder / "warm.wav"), np.zeros(44_100 * 3, np.float32), 44_100)
    Image.new("RGB", (640, 480), (10, 20, 30)).save(folder / "warm.png")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose decode path is measured")
    parser.add_argument("--kill-mb", type=float, default=3000.0, help="kill a child past this growth (MB)")
    parser.add_argument("--work-dir", type=Path, help="where the files are made (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jsar-hostile-") as temporary:
        folder = args.work_dir or Path(temporary)
        files = make_hostile_files(folder / "files")
        warm = _warm_files(folder / "warm")
        print(f"decode path of {args.code}; peak RSS growth per file (goal < {GOAL_MB:.0f} MB)")
        print(f"{'file':<48} {'bytes':>9} {'growth':>10}  outcome")
        missed = 0
        for file in files:
            result = measure(file, args.code, warm, args.kill_mb)
            growth = result["growth_mb"]
            shown = f"> {args.kill_mb:,.0f} MB" if result["killed"] else f"{growth:,.1f} MB"
            met = not result["killed"] and growth < GOAL_MB
            missed += not met
            print(f"{file.name:<48} {file.path.stat().st_size:>9,} {shown:>10}  {'' if met else '[over goal] '}"
                  f"{result['outcome'][:110]}", flush=True)
        print(f"{len(files) - missed} of {len(files)} files under +{GOAL_MB:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
