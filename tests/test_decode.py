import math
import random
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile
import torch

from jsa_retrieval.clips import Clip
from jsa_retrieval.config import get_config
from jsa_retrieval.dataset import (ClipDataset, FailureLog, collate_skipping_failures, load_pair,
                                   load_spectrogram)
from jsa_retrieval import decode
from jsa_retrieval.decode import DecodeError, load_audio, load_image
from jsa_retrieval.transforms import crop_or_tile, log_spectrogram

from conftest import write_image, write_tone
from helpers import png_header


def write_mp4(path, seconds=2.0, fps=10, size=32, rate=16000):
    """A tiny video whose frame k is filled with grey level 10*k, plus a 440 Hz tone."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        for k in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 10 * k, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        t = np.arange(int(seconds * rate)) / rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return path


def test_paper_spectrogram_is_257_by_501_and_matches_numpy(tmp_path):
    config = get_config("paper").data
    assert config.spectrogram_shape == (257, 501)
    rng = np.random.default_rng(0)
    samples = rng.standard_normal(config.num_samples).astype(np.float32) * 0.1
    spec = log_spectrogram(samples, config)
    assert spec.shape == (1, 257, 501)
    # direct numpy computation: reflect-pad n_fft/2, periodic Hann, frame every hop, |rfft|^2
    padded = np.pad(samples.astype(np.float64), config.n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(config.n_fft) / config.n_fft)
    for frame in (0, 250, 500):
        chunk = padded[frame * config.hop_length: frame * config.hop_length + config.n_fft] * window
        power = np.abs(np.fft.rfft(chunk)) ** 2
        expected = np.log(power + 1e-7) / 12
        np.testing.assert_allclose(spec[0, :, frame].numpy(), expected, atol=2e-4)


def test_silent_and_constant_audio_give_finite_spectrograms():
    config = get_config("cpu").data
    for samples in (np.zeros(config.num_samples, np.float32), np.full(config.num_samples, 0.5, np.float32)):
        spec = log_spectrogram(samples, config)
        assert spec.shape == (1, *config.spectrogram_shape)
        assert torch.isfinite(spec).all()
    silent = log_spectrogram(np.zeros(config.num_samples, np.float32), config)
    assert torch.allclose(silent, torch.full_like(silent, np.log(1e-7) / 12))


def test_crop_is_centred_and_short_audio_is_tiled():
    samples = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(crop_or_tile(samples, 4), [3, 4, 5, 6])
    # tiled to 9 samples, then the centred 7
    np.testing.assert_array_equal(crop_or_tile(np.arange(3, dtype=np.float32), 7), [1, 2, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(crop_or_tile(samples, 4, offset=100), [6, 7, 8, 9])
    assert crop_or_tile(np.zeros(0, np.float32), 5).tolist() == [0.0] * 5


def test_stereo_44k_wav_is_mixed_to_mono_and_resampled(tmp_path):
    path = write_tone(tmp_path / "stereo.wav", seconds=1.0, rate=44100, channels=2, freq=1000)
    samples = load_audio(path, 16000)
    assert samples.dtype == np.float32 and abs(samples.size - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 16000 / samples.size - 1000) < 5
    # channels are 0.5 and 1.0 times the tone: the mono mix has amplitude 0.75 * 0.3
    assert np.abs(samples).max() == pytest.approx(0.225, abs=0.01)


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "RGBA", "LA"])
def test_any_image_mode_becomes_rgb(tmp_path, mode):
    suffix = ".jpg" if mode in ("CMYK", "L") else ".png"
    path = write_image(tmp_path / f"img{suffix}", mode=mode)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (64, 64)


def test_video_gives_middle_frame_and_audio(tmp_path):
    path = write_mp4(tmp_path / "clip.mp4")
    frame = np.asarray(load_image(path))
    assert frame.shape == (32, 32, 3)
    assert 80 <= frame.mean() <= 120  # frames are grey 0..190; the middle one (k=10) is 100
    samples = load_audio(path, 16000)
    assert abs(samples.size - 32000) < 3000
    assert np.abs(samples).max() > 0.1


def test_corrupt_files_raise_decode_error(tmp_path):
    bad_wav = tmp_path / "bad.wav"
    bad_wav.write_bytes(b"RIFF\x00\x00not really a wav")
    bad_jpg = tmp_path / "bad.jpg"
    bad_jpg.write_bytes(b"\xff\xd8garbage")
    with pytest.raises(DecodeError, match="bad.wav"):
        load_audio(bad_wav, 16000)
    with pytest.raises(DecodeError, match="bad.jpg"):
        load_image(bad_jpg)


def test_dataset_skips_and_counts_broken_clips(tmp_path):
    config = get_config("cpu").data
    good = Clip("good", write_image(tmp_path / "g.jpg"), write_tone(tmp_path / "g.wav", seconds=1.0))
    short = Clip("short", write_image(tmp_path / "s.jpg"), write_tone(tmp_path / "s.wav", seconds=0.2))
    (tmp_path / "b.wav").write_bytes(b"broken")
    broken = Clip("broken", write_image(tmp_path / "b.jpg"), tmp_path / "b.wav")
    dataset = ClipDataset([good, broken, short], config)
    batch = collate_skipping_failures([dataset[i] for i in range(3)])
    assert batch["image"].shape == (2, 3, config.image_size, config.image_size)
    assert batch["audio"].shape == (2, 1, *config.spectrogram_shape)
    assert batch["index"].tolist() == [0, 2]
    log = FailureLog()
    log.add(batch)
    assert len(log) == 1 and log.failures[0][0] == "broken"
    assert "1 clip(s) skipped" in log.summary()


def test_train_views_are_augmented_independently(tmp_path):
    config = get_config("cpu").data
    clip = Clip("c", write_image(tmp_path / "c.jpg", size=160), write_tone(tmp_path / "c.wav", seconds=4.0))
    item = ClipDataset([clip], config, train=True, views=2)[0]
    assert item["image"].shape == item["image_1"].shape == (3, config.image_size, config.image_size)
    image, audio = load_pair(clip, config, train=False)
    image_again, audio_again = load_pair(clip, config, train=False)
    assert torch.equal(image, image_again) and torch.equal(audio, audio_again)


def _tone_in_the_middle(path, seconds: float = 30.0, tone_seconds: float = 5.0, rate: int = 16000):
    """A clip silent but for a 440 Hz tone in its middle `tone_seconds`."""
    wave = np.zeros(int(seconds * rate), np.float32)
    start = (wave.size - int(tone_seconds * rate)) // 2
    t = np.arange(int(tone_seconds * rate)) / rate
    wave[start:start + t.size] = 0.5 * np.sin(2 * np.pi * 440 * t)
    soundfile.write(path, wave, rate, subtype="PCM_16")
    return path


def test_training_audio_window_is_the_centred_one_within_its_jitter(tmp_path):
    config = get_config("paper").data  # the paper's middle 5 s of a 30 s file whose tone is only there
    path = _tone_in_the_middle(tmp_path / "tone.wav")
    rng = random.Random(0)
    loud = lambda spectrogram: float((12 * spectrogram).exp().mean())  # mean power  # noqa: E731

    centred = load_spectrogram(path, config, train=False)
    assert all(torch.equal(load_spectrogram(path, config, train=True, rng=rng), centred) for _ in range(5))
    config.train_audio_jitter = 0.5
    jittered = [load_spectrogram(path, config, train=True, rng=rng) for _ in range(20)]
    assert not all(torch.equal(j, centred) for j in jittered)  # it does move ...
    assert min(loud(j) for j in jittered) > 0.8 * loud(centred)  # ... but every window holds nearly all the tone
    anywhere = [load_spectrogram(path, config, train=True, rng=rng, shift_seconds=math.inf) for _ in range(20)]
    assert min(loud(a) for a in anywhere) < 0.1 * loud(centred)  # the alignment baseline's wide shift


# ------------------------------------------------------------------------------------------------ hostile files
def test_an_image_over_the_pixel_cap_is_refused_from_its_header_in_one_line(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(13_000, 13_000))
    with pytest.raises(DecodeError, match=r"13000 x 13000 pixels is larger than 16,777,216 pixels") as caught:
        load_image(path)
    assert "\n" not in str(caught.value)
    path.write_bytes(png_header(40_000, 40_000))  # over Pillow's own bomb limit too: still our one line
    with pytest.raises(DecodeError, match="larger than 16,777,216 pixels"):
        load_image(path)


def test_a_jpeg_over_the_pixel_cap_is_decoded_at_a_draft_scale_that_fits(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 40 * 40)
    image = load_image(write_image(tmp_path / "big.jpg", size=128))
    assert image.mode == "RGB" and image.size == (32, 32)  # 1/4 scale: the largest that fits 1,600 pixels
    with pytest.raises(DecodeError, match="128 x 128 pixels is larger than 1,600"):
        load_image(write_image(tmp_path / "big.png", size=128))
    with pytest.raises(DecodeError, match="32 x 32 pixels are larger than 1,000"):
        monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 1000)
        load_image(write_mp4(tmp_path / "clip.mp4"))


def test_transparent_images_are_composited_over_black_as_before(tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 256, (48, 48, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "alpha.png")
    expected = Image.alpha_composite(Image.new("RGBA", (48, 48), (0, 0, 0, 255)), Image.fromarray(pixels, "RGBA"))
    assert np.array_equal(np.asarray(load_image(tmp_path / "alpha.png")), np.asarray(expected.convert("RGB")))


@pytest.mark.parametrize("rate", [4_001, 44_101, 12_345, 99_991, 767_999, 2_000, 44_100, 48_000])
def test_any_sample_rate_resamples_with_a_bounded_filter_and_a_tiny_time_error(rate):
    ratio = decode.resample_ratio(rate, 16_000)
    assert ratio.numerator <= decode.MAX_RESAMPLE_PHASES and ratio.denominator <= decode.MAX_RESAMPLE_PHASES
    assert abs(float(ratio) / (16_000 / rate) - 1) < 1e-3
    if rate in (44_100, 48_000):
        assert ratio == Fraction(16_000, rate)  # usual rates: exactly today's filter


def test_a_4001_hz_wav_is_read_through_a_small_kernel(tmp_path, monkeypatch):
    calls = []
    original = decode.audio_functional.resample

    def spy(waveform, orig_freq, new_freq):
        calls.append((orig_freq, new_freq, waveform.numel()))
        return original(waveform, orig_freq, new_freq)

    monkeypatch.setattr(decode.audio_functional, "resample", spy)
    path = write_tone(tmp_path / "odd.wav", seconds=2.0, rate=4001, freq=500)
    samples = load_audio(path, 16000)
    assert calls and all(orig <= 1000 and new <= 1000 for orig, new, _ in calls)  # not 4001 x 16000 phases
    assert abs(samples.size - 2 * 16000) <= 8
    peak = np.argmax(np.abs(np.fft.rfft(samples))) * 16000 / samples.size
    assert abs(peak - 500) < 2


def test_long_audio_is_resampled_in_pieces_equal_to_one_piece(monkeypatch):
    samples = np.random.default_rng(0).standard_normal(200_000).astype(np.float32)
    whole = decode.audio_functional.resample(torch.from_numpy(samples), 441, 160).numpy()
    monkeypatch.setattr(decode, "_RESAMPLE_WORK", 20_000)
    sizes = []
    original = decode.audio_functional.resample
    monkeypatch.setattr(decode.audio_functional, "resample",
                        lambda wave, orig, new: sizes.append(wave.numel()) or original(wave, orig, new))
    pieces = decode.resample(samples, 44_100, 16_000)
    assert len(sizes) > 5 and max(sizes) < 30_000
    np.testing.assert_allclose(pieces, whole, atol=1e-6)


@pytest.mark.parametrize("rate", [5_000_001, 1_000])
def test_sample_rates_outside_the_range_are_refused_in_one_line(tmp_path, rate):
    path = write_tone(tmp_path / "odd.wav", seconds=0.01, rate=rate)
    with pytest.raises(DecodeError, match=f"sample rate {rate:,} Hz is outside 2,000-768,000 Hz"):
        load_audio(path, 16000)


def test_any_failure_while_resampling_stays_a_decode_error(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("kernel\ntoo large")

    monkeypatch.setattr(decode.audio_functional, "resample", broken)
    with pytest.raises(DecodeError, match=r"tone.wav: cannot read audio \(kernel too large\)"):
        load_audio(write_tone(tmp_path / "tone.wav", rate=22050), 16000)


def test_audio_longer_than_the_cap_is_read_from_its_middle_block_by_block(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "MAX_AUDIO_FRAMES", 4000)
    monkeypatch.setattr(decode, "_BLOCK_FRAMES", 1000)
    ramp = np.arange(10_000, dtype=np.float32) / 10_000
    soundfile.write(tmp_path / "ramp.wav", np.stack([ramp, ramp / 2], axis=1), 16000, subtype="FLOAT")
    samples = load_audio(tmp_path / "ramp.wav", 16000)
    np.testing.assert_allclose(samples, 0.75 * ramp[3000:7000], atol=1e-6)
    assert load_audio(write_mp4(tmp_path / "clip.mp4"), 16000).size == 4000  # the PyAV path keeps the cap too


def test_dataset_skips_and_lists_a_clip_with_a_refused_rate(tmp_path):
    config = get_config("cpu").data
    good = Clip("good", write_image(tmp_path / "g.jpg"), write_tone(tmp_path / "g.wav", seconds=1.0))
    odd = Clip("odd", write_image(tmp_path / "o.jpg"), write_tone(tmp_path / "o.wav", seconds=0.01, rate=5_000_001))
    batch = collate_skipping_failures([ClipDataset([good, odd], config)[i] for i in range(2)])
    log = FailureLog()
    log.add(batch)
    assert batch["index"].tolist() == [0] and log.failures[0][0] == "odd"
    assert "5,000,001 Hz" in log.failures[0][1]
