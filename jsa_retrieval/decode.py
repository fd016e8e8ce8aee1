"""Decoding files to arrays: images to RGB, audio to mono float32 at the configured rate.

soundfile and PIL are used where they can (fast, no container overhead); PyAV handles everything else,
video containers included (middle frame, audio stream).

Every file costs a bounded amount of memory and time, whatever its header claims, since a few hundred bytes can
describe gigabytes of pixels or samples:

- images: at most `MAX_IMAGE_PIXELS` decoded pixels, checked from the header before decoding; a larger JPEG is
  decoded at libjpeg's 1/2, 1/4 or 1/8 scale (draft mode) to fit, anything else larger is refused;
- audio: sample rates from `MIN_SAMPLE_RATE` to `MAX_SAMPLE_RATE` (others are refused), resampled by a polyphase
  filter of at most `MAX_RESAMPLE_PHASES` phases: an odd rate whose exact ratio to the target needs more is
  resampled at the nearest ratio that does not (a time-scale error under 0.1 %, e.g. 4001 Hz is read as 4000 Hz);
- audio length: at most `MAX_AUDIO_FRAMES` samples per channel, the middle of a longer file (the model's window
  is its centre), mixed down to mono block by block.

Every failure, whatever raised it, is a `DecodeError` naming the file: one line, never a traceback.
"""
from __future__ import annotations

import math
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile
import torch
import torchaudio.functional as audio_functional
from PIL import Image

from .clips import VIDEO_SUFFIXES
from .errors import JsarError

MAX_IMAGE_PIXELS = 4096 * 4096  # 16.8 MP: 4096 x 4096, or a 12 MP phone photo with room to spare
MIN_SAMPLE_RATE = 2_000
MAX_SAMPLE_RATE = 768_000
MAX_RESAMPLE_PHASES = 1_000  # bounds the sinc kernel: at most 1,000 x ~1,600 taps (6 MB) for any pair of rates
MAX_AUDIO_FRAMES = 1 << 24  # 16.8 M samples per channel: 5.8 min at 48 kHz, 17.5 min at 16 kHz
SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg")
_BLOCK_FRAMES = 1 << 16
_RESAMPLE_WORK = 1 << 22  # resampling filter work per piece (input samples / down x taps): about 16 MB


class DecodeError(JsarError, RuntimeError):
    """A file could not be decoded; the message names the file and the reason."""


# ------------------------------------------------------------------------------------------------ images
def load_image(path: Path, draft_size: int | None = None) -> Image.Image:
    """An RGB image: a still image in any mode (grey, RGBA, CMYK, palette), or a video's middle frame.

    draft_size: a JPEG is decoded at the smallest of libjpeg's 1/2, 1/4, 1/8 scales whose sides are still at
    least this many pixels (Pillow's draft mode), several times cheaper than a full decode for a large photo.
    Its pixels differ slightly from a full decode resized to the same size, so inference may choose it and
    training does not. A JPEG over `MAX_IMAGE_PIXELS` is always drafted to fit; other images over it are refused.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return middle_frame(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our cap below decides, in one line
            with Image.open(path) as image:
                if draft_size is not None and image.format == "JPEG" and min(image.size) >= 2 * draft_size:
                    image.draft(None, (draft_size, draft_size))  # smaller than twice the size: a full decode
                _fit_pixel_cap(image, path)
                image.load()
                if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                    if image.mode != "RGBA":
                        image = image.convert("RGBA")
                    background = Image.new("RGB", image.size)  # over opaque black: alpha_composite's values,
                    background.paste(image, mask=image)  # without its two full-size RGBA copies
                    return background
                return image.convert("RGB")
    except DecodeError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, over twice its 89 MP: too large even to draft
        raise DecodeError(f"{path}: image larger than {MAX_IMAGE_PIXELS:,} pixels; refused") from None
    except Exception as error:  # PIL and PyAV raise many types for broken files
        raise DecodeError(f"{path}: cannot read image ({_one_line(error)})") from error


def _fit_pixel_cap(image: Image.Image, path: Path) -> None:
    """From the header alone: draft a JPEG down to at most MAX_IMAGE_PIXELS, refuse any other image above it."""
    width, height = image.size
    if width * height <= MAX_IMAGE_PIXELS:
        return
    if image.format == "JPEG":
        scale = next((s for s in (2, 4, 8) if math.ceil(width / s) * math.ceil(height / s) <= MAX_IMAGE_PIXELS), 8)
        image.draft(None, (math.ceil(width / scale), math.ceil(height / scale)))
        if image.size[0] * image.size[1] <= MAX_IMAGE_PIXELS:
            return
    raise DecodeError(f"{path}: image of {width} x {height} pixels is larger than {MAX_IMAGE_PIXELS:,} pixels; "
                      "refused")


def middle_frame(path: Path) -> Image.Image:
    """The frame nearest the middle of a video's first video stream (frames over MAX_IMAGE_PIXELS refused)."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DecodeError(f"{path}: no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width or 0, stream.codec_context.height or 0
        if width * height > MAX_IMAGE_PIXELS:
            raise DecodeError(f"{path}: video frames of {width} x {height} pixels are larger than "
                              f"{MAX_IMAGE_PIXELS:,} pixels; refused")
        duration = _duration_seconds(container, stream)
        if duration:
            target = duration / 2
            container.seek(int(target / stream.time_base) if stream.time_base else 0, stream=stream,
                           any_frame=False, backward=True)
            chosen = None
            for frame in container.decode(stream):
                chosen = frame
                if frame.time is not None and frame.time >= target:
                    break
            if chosen is not None:
                return chosen.to_image().convert("RGB")
        count = sum(1 for packet in container.demux(stream) if packet.size)  # no duration: count, keep nothing
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        chosen = None
        for index, frame in enumerate(container.decode(stream)):
            chosen = frame
            if index >= count // 2:
                break
        if chosen is None:
            raise DecodeError(f"{path}: video stream has no frames")
        return chosen.to_image().convert("RGB")


def _duration_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


# ------------------------------------------------------------------------------------------------ audio
def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples at `sample_rate`: channels averaged, resampled by `resample`; of a file longer than
    MAX_AUDIO_FRAMES samples, its middle MAX_AUDIO_FRAMES."""
    path = Path(path)
    try:
        if path.suffix.lower() in SOUNDFILE_SUFFIXES:
            samples, rate = _read_soundfile(path)
        else:
            samples, rate = _decode_audio_stream(path)
        if samples.size == 0:
            raise DecodeError(f"{path}: audio has no samples")
        if not np.isfinite(samples).all():  # a check is cheaper than the copy nan_to_num always makes
            samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
        return resample(samples, rate, sample_rate)
    except DecodeError:
        raise
    except Exception as error:  # soundfile, PyAV and torch raise many types for broken files
        raise DecodeError(f"{path}: cannot read audio ({_one_line(error)})") from error


def check_sample_rate(path: Path, rate: int | None) -> int:
    """The file's rate, or DecodeError when it is outside MIN_SAMPLE_RATE..MAX_SAMPLE_RATE."""
    if not rate or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise DecodeError(f"{path}: sample rate {rate or 0:,} Hz is outside {MIN_SAMPLE_RATE:,}-"
                          f"{MAX_SAMPLE_RATE:,} Hz; refused")
    return int(rate)


def resample_ratio(rate: int, target: int) -> Fraction:
    """target / rate as up / down with both at most MAX_RESAMPLE_PHASES: exact for every usual pair of rates
    (16 kHz from 44.1 kHz is 160 / 441), else the nearest such fraction (16 kHz from 4001 Hz is 4 / 1)."""
    exact = Fraction(target, rate)
    if exact.numerator <= MAX_RESAMPLE_PHASES and exact.denominator <= MAX_RESAMPLE_PHASES:
        return exact
    most_down = max(1, min(MAX_RESAMPLE_PHASES, MAX_RESAMPLE_PHASES * rate // target))  # keeps up <= the bound
    return exact.limit_denominator(most_down)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """(N,) float32 at `rate` -> float32 at `target`: torchaudio's windowed-sinc polyphase filter on
    `resample_ratio`, so its kernel and its cost per sample are bounded for any rate. Long inputs go through in
    pieces with enough real samples either side that every output equals the one-piece result, so the filter's
    working memory stays small however long the audio."""
    if rate == target:
        return samples.astype(np.float32, copy=False)
    ratio = resample_ratio(rate, target)
    up, down = ratio.numerator, ratio.denominator
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    width = math.ceil(6 * down / (min(up, down) * 0.99))  # torchaudio's half kernel, in input samples
    taps = down + 2 * width
    step = down * max(1, _RESAMPLE_WORK // taps)  # input samples per piece (a multiple of `down`)
    if samples.size <= step:
        return audio_functional.resample(torch.from_numpy(samples), down, up).numpy()
    margin = down * math.ceil((width + down) / down)  # context each side, a multiple of `down`
    out = np.empty(math.ceil(samples.size * up / down), np.float32)
    for start in range(0, samples.size, step):
        end = min(start + step, samples.size)
        first, last = max(0, start - margin), min(samples.size, end + margin)
        piece = audio_functional.resample(torch.from_numpy(samples[first:last]), down, up).numpy()
        begin, stop = start * up // down, min(out.size, math.ceil(end * up / down))
        out[begin:stop] = piece[begin - first * up // down: stop - first * up // down]
    return out


def _middle(total: int) -> tuple[int, int]:
    """(first frame, frame count) of what is read from a file of `total` frames."""
    count = min(total, MAX_AUDIO_FRAMES)
    return (total - count) // 2, count


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 at the file's rate, read in blocks, so memory is the mono result whatever the channels."""
    with soundfile.SoundFile(str(path)) as sound:
        rate = check_sample_rate(path, sound.samplerate)
        start, count = _middle(sound.frames)
        if start and sound.seekable():
            sound.seek(start)
        mono = np.empty(count, np.float32)
        filled = 0
        while filled < count:
            block = sound.read(min(_BLOCK_FRAMES, count - filled), dtype="float32", always_2d=True)
            if not len(block):
                break
            mono[filled:filled + len(block)] = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1)
            filled += len(block)
    return mono[:filled], rate


def _decode_audio_stream(path: Path) -> tuple[np.ndarray, int]:
    """A container's first audio stream, mono, at its native rate (its middle MAX_AUDIO_FRAMES samples; with no
    duration in the header, a stream longer than that is refused)."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise DecodeError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        rate = check_sample_rate(path, stream.rate)
        duration = _duration_seconds(container, stream)
        start, count = _middle(int(duration * rate) + 1) if duration else (0, MAX_AUDIO_FRAMES)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        mono = np.empty(count, np.float32)
        position = filled = 0  # frames decoded so far; frames kept

        def keep(converted_frames) -> None:
            nonlocal position, filled
            for converted in converted_frames:
                chunk = converted.to_ndarray().reshape(-1)
                first, last = max(start - position, 0), min(start + count - position, chunk.size)
                if last > first:
                    mono[filled:filled + last - first] = chunk[first:last]
                    filled += last - first
                position += chunk.size

        for frame in container.decode(stream):
            keep(resampler.resample(frame))
            if position > start + count:
                if not duration:
                    raise DecodeError(f"{path}: audio longer than {MAX_AUDIO_FRAMES:,} samples with no duration "
                                      "in its header; refused")
                break
        else:
            keep(resampler.resample(None))
    return mono[:filled], rate


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
