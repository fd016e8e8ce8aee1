"""Probe (not shipped). Question: is a lone sound's audio-encoder pass on a worker thread slower when a second
OpenMP team (the model-loading main thread's) lives in the process? Answer (2 shared cores, three rounds): yes,
1.55-1.75x as slow (8.4-8.8 ms against 4.8-5.7 ms), which is why `jsar serve` loads the model on a thread that then
ends (`indexing.service.app`). Kept while that design rests on it: a torch upgrade can change the answer. Feeds
docs/service.md, "One OpenMP team".

    python -m evaluation.probes.bench_torch_teams                 # a random cpu-config JSA, 100 passes, 2 rounds
    python -m evaluation.probes.bench_torch_teams --checkpoint runs/realsound/seed0/jsa/best.pt

torch's OpenMP threads belong to the thread that starts a parallel region and live as long as it does. Each case
runs in its own process (a team cannot be removed once made) and encodes one spectrogram on a worker thread 100
times, 10 ms apart like a service's searches:

- `main-loads`: the main thread loads the model (which makes its team), the worker encodes. This was `jsar serve`.
- `loader-ends`: a thread that then ends loads the model, the worker encodes: its team is the only one. This is
  `jsar serve` now (`indexing.service.app`).

Printed per round: each case's median pass and their ratio. The timing does not depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CASES = ("main-loads", "loader-ends")
PASSES = 100
WARM_UP = 10
GAP_S = 0.01


def encoder_case(case: str, checkpoint: str) -> float:
    """Median milliseconds of one spectrogram's encoder pass on a worker thread, after loading as `case` says."""
    import numpy as np
    import torch

    from jsa_retrieval.checkpoints import load_model
    from jsa_retrieval.transforms import log_spectrogram

    def load():
        model, config, _ = load_model(checkpoint)
        model.eval()
        wave = torch.randn(config.data.num_samples) * 0.1
        spectrogram = log_spectrogram(wave, config.data).unsqueeze(0).to(memory_format=torch.channels_last)
        return model, spectrogram

    if case == "main-loads":
        loaded = load()
    else:
        box: list = []
        loader = threading.Thread(target=lambda: box.append(load()))
        loader.start()
        loader.join()
        loaded = box[0]
    model, spectrogram = loaded
    times: list[float] = []

    def encode_repeatedly():
        for _ in range(PASSES):
            time.sleep(GAP_S)
            with torch.no_grad():
                began = time.perf_counter()
                model.encode_audio(spectrogram)
                times.append(time.perf_counter() - began)

    worker = threading.Thread(target=encode_repeatedly)
    worker.start()
    worker.join()
    return 1000 * float(np.median(times[WARM_UP:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="model checkpoint [a random cpu-config JSA]")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args()
    if args.case:
        print(json.dumps({"ms": encoder_case(args.case, args.checkpoint)}))
        return
    with tempfile.TemporaryDirectory(prefix="jsar-teams-") as folder:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from evaluation.bench.workspace import make_random_checkpoint

            checkpoint = str(make_random_checkpoint(Path(folder) / "random-cpu-jsa.pt"))
        print(f"{'round':>5}  {'main-loads':>11}  {'loader-ends':>11}  ratio")
        for round_ in range(1, args.rounds + 1):
            ms = {}
            for case in CASES:
                answer = subprocess.run([sys.executable, "-m", "evaluation.probes.bench_torch_teams", "--case", case,
                                         "--checkpoint", checkpoint], check=True, capture_output=True, text=True)
                ms[case] = json.loads(answer.stdout.strip().splitlines()[-1])["ms"]
            print(f"{round_:>5}  {ms['main-loads']:>8.2f} ms  {ms['loader-ends']:>8.2f} ms  "
                  f"{ms['main-loads'] / ms['loader-ends']:.2f}x")


if __name__ == "__main__":
    main()
