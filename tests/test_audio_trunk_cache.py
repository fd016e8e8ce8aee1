"""A frozen audio trunk's output cached once per clip over the jittered window: computed once and read back,
the centre run for test and random runs for training, broken recordings counted, and a trainer that uses it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_config, write_tone
from jsa_retrieval.clips import Clip
from jsa_retrieval.config import use_yamnet_audio
from jsa_retrieval.decode import DecodeError
from jsa_retrieval.encoders import AudioEncoder
from training.audio_trunk_cache import cached_audio_features, wide_samples


class CountingTrunk(torch.nn.Module):
    """The YAMNet trunk, counting the clips it is run on."""

    def __init__(self, trunk):
        super().__init__()
        self.inner, self.seen = trunk, 0
        self.out_channels = trunk.out_channels

    def forward(self, spectrograms):
        self.seen += spectrograms.shape[0]
        return self.inner(spectrograms)


def make_clips(folder, count: int) -> list[Clip]:
    clips = []
    for i in range(count):
        audio = write_tone(folder / f"c{i}.wav", seconds=2.5, freq=300.0 + 150 * i)
        clips.append(Clip(id=f"c{i}", image=folder / f"c{i}.jpg", audio=audio, label="x"))
    (folder / "broken.wav").write_bytes(b"RIFF....not a wave")
    clips.append(Clip(id="broken", image=folder / "broken.jpg", audio=folder / "broken.wav", label="x"))
    return clips


def test_cache_is_computed_once_and_gives_the_centre_run_in_test_and_shifted_runs_in_training(tmp_path):
    config = use_yamnet_audio(tiny_config())
    config.data.audio_seconds, config.data.train_audio_jitter = 1.0, 0.5
    torch.manual_seed(0)
    encoder = AudioEncoder(16, backbone="yamnet", freeze="all").eval()
    trunk = CountingTrunk(encoder.trunk)
    clips = make_clips(tmp_path, 3)
    tokens = encoder.num_tokens(config.data.spectrogram_shape)  # 101 frames -> 4 tokens
    first = cached_audio_features(trunk, clips, config, torch.device("cpu"), tokens, tmp_path / "cache",
                                  num_workers=0, progress=False)
    assert trunk.seen == 3 and set(first.failures) == {3}
    wide_tokens = encoder.trunk.output_size(1 + wide_samples(config.data) // config.data.hop_length)
    assert first.wide.shape == (4, 1024, 2, wide_tokens) and wide_tokens == 7 and tokens == 4
    again = cached_audio_features(trunk, clips, config, torch.device("cpu"), tokens, tmp_path / "cache",
                                  num_workers=0, progress=False)
    assert trunk.seen == 3  # read, not recomputed
    centre = again.audio(0, train=False)
    assert centre.shape == (1024, 2, 4)
    assert torch.equal(centre, torch.from_numpy(np.asarray(again.wide[0, ..., 1:5], dtype=np.float32)))
    wide = torch.from_numpy(np.asarray(again.wide[1], dtype=np.float32))
    for _ in range(10):  # a training item is always some run of 4 of the 7 steps
        run = again.audio(1, train=True)
        assert any(torch.equal(run, wide[..., start:start + 4]) for start in range(4))
    with pytest.raises(DecodeError):
        again.audio(3, train=True)
    # the encoder takes the cached trunk output in place of a spectrogram
    tokens_out = encoder(centre[None])
    assert tokens_out.shape == (1, 4, 16)


def test_a_changed_recording_changes_the_key(tmp_path):
    config = use_yamnet_audio(tiny_config())
    config.data.audio_seconds = 1.0
    encoder = AudioEncoder(16, backbone="yamnet", freeze="all").eval()
    trunk = CountingTrunk(encoder.trunk)
    clips = make_clips(tmp_path, 2)
    cached_audio_features(trunk, clips, config, torch.device("cpu"), 4, tmp_path / "cache", 0, False)
    write_tone(clips[0].audio, seconds=2.0, freq=900.0)
    cached_audio_features(trunk, clips, config, torch.device("cpu"), 4, tmp_path / "cache", 0, False)
    assert trunk.seen == 4
    assert not list((tmp_path / "cache").glob(".*tmp*"))  # no temporary file left behind


def test_trainer_trains_on_a_frozen_yamnet_through_the_cache(tmp_path):
    from jsa_retrieval.synth import SynthConfig, generate
    from training.trainer import train

    generate(tmp_path / "data", SynthConfig(n_clips=24, seed=0, image_size=64, seconds=2.0), progress=False)
    config = use_yamnet_audio(tiny_config(epochs=2))
    config.model.audio_weights = "none"  # random trunk: no download; the path is what is tested
    config.data.train_audio_jitter = 0.5
    result = train(tmp_path / "data", config, "jsa", tmp_path / "run", progress=False, device="cpu",
                   feature_cache=tmp_path / "cache")
    assert len(result.history) == 2 and result.best_path.is_file()
    assert len(list((tmp_path / "cache").glob("*-audio.npy"))) == 1
    assert all(record["steps"] > 0 and np.isfinite(record["loss_total"]) for record in result.history)


def test_training_runs_start_anywhere_in_the_wide_window_and_pickle_as_the_file(tmp_path):
    import pickle

    from jsa_retrieval.dataset import CachedAudioFeatures

    wide = np.arange(3 * 4 * 2 * 13, dtype=np.float16).reshape(3, 4, 2, 13)
    np.save(tmp_path / "wide.npy", wide)
    features = CachedAudioFeatures(np.load(tmp_path / "wide.npy", mmap_mode="r"), 10)
    starts = {int(features.audio(2, train=True)[0, 0, 0] - wide[2, 0, 0, 0]) for _ in range(80)}
    assert starts == {0, 1, 2, 3}
    assert torch.equal(features.audio(2, train=False), torch.from_numpy(wide[2, ..., 1:11].astype(np.float32)))
    copy = pickle.loads(pickle.dumps(features))  # what a loader worker receives
    assert len(pickle.dumps(features)) < 1000
    assert torch.equal(copy.audio(1, train=False), torch.from_numpy(wide[1, ..., 1:11].astype(np.float32)))
