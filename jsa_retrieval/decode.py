"""Decoding files to arrays: images to RGB, audio to mono float32 at the configured rate.

soundfile and PIL are used where they can (fast, no container overhead); PyAV handles everything else,
video containers included (middle frame, audio stream).
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile
import torch
import torchaudio.functional as audio_functional
from PIL import Image

from .clips import VIDEO_SUFFIXES
from .errors import JsarError


class DecodeError(JsarError, RuntimeError):
    """A file could not be decoded; the message names the file and the reason."""


def load_image(path: Path, draft_size: int | None = None) -> Image.Image:
    """An RGB image: a still image in any mode (grey, RGBA, CMYK, palette), or a video's middle frame.

    draft_size: a JPEG is decoded at the smallest of libjpeg's 1/2, 1/4, 1/8 scales whose sides are still at
    least this many pixels (Pillow's draft mode), several times cheaper than a full decode for a large photo.
    Its pixels differ slightly from a full decode resized to the same size, so inference may choose it and
    training does not.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return middle_frame(path)
        with Image.open(path) as image:
            if draft_size is not None and image.format == "JPEG" and min(image.size) >= 2 * draft_size:
                image.draft(None, (draft_size, draft_size))  # smaller than twice the size: a full decode
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (0, 0, 0, 255))
                image = Image.alpha_composite(background, image)
            return image.convert("RGB")
    except DecodeError:
        raise
    except Exception as error:  # PIL and PyAV raise many types for broken files
        raise DecodeError(f"{path}: cannot read image ({error})") from error


def middle_frame(path: Path) -> Image.Image:
    """The frame nearest the middle of a video's first video stream."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise DecodeError(f"{path}: no video stream")
        stream = container.streams.video[0]
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
        frames = [frame.to_image() for frame in container.decode(stream)]
        if not frames:
            raise DecodeError(f"{path}: video stream has no frames")
        return frames[len(frames) // 2].convert("RGB")


def _duration_seconds(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 samples at `sample_rate` (mixed down by averaging channels, resampled with torchaudio)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".wav", ".flac", ".ogg"):
            samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            samples = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1)  # mono: the mean is itself
        else:
            samples, rate = _decode_audio_stream(path)
    except DecodeError:
        raise
    except Exception as error:
        raise DecodeError(f"{path}: cannot read audio ({error})") from error
    if samples.size == 0:
        raise DecodeError(f"{path}: audio has no samples")
    if not np.isfinite(samples).all():  # a check is cheaper than the copy nan_to_num always makes
        samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
    if rate != sample_rate:
        resampled = audio_functional.resample(torch.from_numpy(np.ascontiguousarray(samples)), rate, sample_rate)
        samples = resampled.numpy()
    return samples.astype(np.float32, copy=False)


def _decode_audio_stream(path: Path) -> tuple[np.ndarray, int]:
    """All audio of a container's first audio stream, mono, at its native rate."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise DecodeError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate)
        chunks = []
        for frame in container.decode(stream):
            for converted in resampler.resample(frame):
                chunks.append(converted.to_ndarray().reshape(-1))
        for converted in resampler.resample(None):
            chunks.append(converted.to_ndarray().reshape(-1))
        rate = stream.rate
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), rate
