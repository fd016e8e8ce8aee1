"""Synthetic sound-source-localization benchmark, embedded so jsar can train and be evaluated offline.

Each clip is an image with one *sounding* object of a class and an audio track made of that class's sound.
Saliency alone cannot solve it: about half of the images also show a *silent* object of another class at a
similar size, about half of the tracks mix in an *off-screen* sound of a third class 8-14 dB lower, and both
modalities carry clutter (low-contrast blobs and lines, pink/brown noise). Only the link between what the
object looks like and what the track sounds like tells which object to point at.

Every class has its own shape, surface pattern and colour family (images) and its own kind of sound
(harmonic hum, beeps, chirps, hiss, clicks, vibrato, rumble, whistle, buzz, trill, snare bursts), each jittered
in size, pose, colour, pitch, timing and loudness. Files follow the VGG-SS layout (frames/, audio/, split lists, vggss.json) so the ordinary
readers load them unchanged; masks add pixel-exact ground truth.

Every clip draws from its own `numpy` Generator seeded from (seed, index), so clips can be made in any order
and the files are byte-identical for a seed whatever the number of worker processes (given the same numpy and
Pillow builds: SIMD maths may differ in the last bit across CPUs).
"""
from __future__ import annotations

import colorsys
import csv
import dataclasses
import json
import multiprocessing
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from .machine import usable_cores

CLASS_NAMES: tuple[str, ...] = (
    "striped_disc",
    "checkered_square",
    "gradient_triangle",
    "candy_ring",
    "star",
    "striped_cross",
    "dotted_ellipse",
    "ringed_hexagon",
    "crescent",
    "lined_diamond",
    "zigzag_band",
    "grid_bowtie",
)

# Hue (0-1) of each class's colour family: twelve hues 30 degrees apart, jittered by at most 9 degrees.
_CLASS_HUES: tuple[float, ...] = (0.0, 0.667, 0.333, 0.167, 0.083, 0.833, 0.5, 0.583, 0.917, 0.417, 0.25, 0.75)

_CLASS_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "striped_disc": ("red disc with parallel stripes", "low harmonic hum, f0 110-170 Hz, 10 harmonics"),
    "checkered_square": ("blue checkered square", "beeps at 2.5-4 Hz, carrier 700-850 Hz"),
    "gradient_triangle": ("green triangle with a shading gradient", "rising chirps 220-300 -> 900-1100 Hz"),
    "candy_ring": ("yellow ring with radial sectors", "falling chirps 3000-3400 -> 1500-1700 Hz"),
    "star": ("orange five-pointed star with a centre dot", "high hiss, noise band ~4-6.5 kHz"),
    "striped_cross": ("magenta cross with diagonal stripes", "click train at 8-14 Hz"),
    "dotted_ellipse": ("cyan ellipse with polka dots", "vibrato tone 450-580 Hz, 3 harmonics"),
    "ringed_hexagon": ("azure hexagon with concentric rings", "engine rumble, noise 50-320 Hz, AM 18-28 Hz"),
    "crescent": ("pink crescent", "whistle 1900-2300 Hz with slow glide"),
    "lined_diamond": ("sea-green diamond with fine stripes", "pulsed square-wave buzz, f0 220-320 Hz"),
    "zigzag_band": ("lime zig-zag band", "two-pitch trill 1000-1200 Hz at 8-12 Hz"),
    "grid_bowtie": ("violet bowtie with a grid", "snare-like noise bursts 1-3 kHz at 3-5 Hz"),
}


@dataclass
class SynthConfig:
    """How many clips, how big, and how hard: distractor and off-screen probabilities set the difficulty.

    The first `num_classes` entries of `CLASS_NAMES` are used (at least 3, so that a clip can hold a sounding
    object, a silent distractor and an off-screen sound of three different classes).
    """

    n_clips: int = 2000
    seed: int = 0
    image_size: int = 160
    sample_rate: int = 16000
    seconds: float = 3.0
    num_classes: int = 10
    distractor_prob: float = 0.5
    offscreen_prob: float = 0.5
    val_fraction: float = 0.1
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.n_clips < 1:
            raise ValueError(f"n_clips must be >= 1, got {self.n_clips}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 pixels so objects stay drawable, got {self.image_size}")
        if self.sample_rate < 8000:
            raise ValueError(f"sample_rate must be >= 8000 Hz, got {self.sample_rate}")
        if self.seconds < 0.25:
            raise ValueError(f"seconds must be >= 0.25 so every class's rhythm shows, got {self.seconds}")
        if not 3 <= self.num_classes <= len(CLASS_NAMES):
            raise ValueError(f"num_classes must be in [3, {len(CLASS_NAMES)}], got {self.num_classes}")
        for name in ("distractor_prob", "offscreen_prob", "val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction > 1.0:
            raise ValueError("val_fraction + test_fraction must be <= 1")

    @property
    def num_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[: self.num_classes]


@dataclass
class SynthSummary:
    """What `generate` wrote: counts for a log line and the paths a reader or the CLI needs next."""

    out_dir: Path
    n_clips: int
    split_counts: dict[str, int]
    class_counts: dict[str, int]
    n_with_distractor: int
    n_with_offscreen: int
    frames_dir: Path
    audio_dir: Path
    masks_dir: Path
    annotations: Path  # vggss.json
    labels: Path  # labels.csv
    metadata: Path  # synth.json
    split_files: dict[str, Path] = field(default_factory=dict)
    seconds_elapsed: float = 0.0


# ----------------------------------------------------------------------------------------------- images
# Shapes and patterns take local object coordinates (u, v): rotated, stretched and scaled so that every
# shape fits inside the unit disc; the object's circumradius in pixels is then radius * max(stretch).

_Field = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _triangle_wave(x: np.ndarray) -> np.ndarray:
    """Period-1 triangle wave in [-1, 1]."""
    return 4.0 * np.abs(x - np.floor(x + 0.5)) - 1.0


def _inside_triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral triangle inscribed in the unit circle: inradius 0.5 along three edge normals.
    inside = np.ones(u.shape, dtype=bool)
    for angle in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6):
        inside &= u * np.cos(angle) + v * np.sin(angle) <= 0.5
    return inside


def _inside_hexagon(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    inside = np.ones(u.shape, dtype=bool)
    for angle in (0.0, np.pi / 3, 2 * np.pi / 3):
        inside &= np.abs(u * np.cos(angle) + v * np.sin(angle)) <= 0.866
    return inside


def _inside_star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    spikes = (_triangle_wave(phi * 5 / (2 * np.pi)) + 1.0) / 2.0  # five points
    return rho <= 0.42 + 0.58 * spikes


_SHAPES: dict[str, _Field] = {
    "striped_disc": lambda u, v: u * u + v * v <= 1.0,
    "checkered_square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.7,
    "gradient_triangle": _inside_triangle,
    "candy_ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.55**2),
    "star": _inside_star,
    "striped_cross": lambda u, v: (np.minimum(abs(u), abs(v)) <= 0.3) & (np.maximum(abs(u), abs(v)) <= 0.95),
    "dotted_ellipse": lambda u, v: u * u + (v / 0.6) ** 2 <= 1.0,
    "ringed_hexagon": _inside_hexagon,
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v >= 0.8**2),
    "lined_diamond": lambda u, v: np.abs(u) / 0.7 + np.abs(v) <= 1.0,
    "zigzag_band": lambda u, v: (np.abs(u) <= 0.85) & (np.abs(v - 0.3 * _triangle_wave(u * 1.25)) <= 0.2),
    "grid_bowtie": lambda u, v: (np.abs(u) <= 0.68) & (np.abs(v) <= np.abs(u) + 0.05),
}

# Pattern value 0 = primary colour, 1 = secondary colour (same hue, darker); bool or float in [0, 1].
_PATTERNS: dict[str, _Field] = {
    "striped_disc": lambda u, v: np.sin(u * np.pi * 3) > 0,
    "checkered_square": lambda u, v: (np.floor(u * 2.5) + np.floor(v * 2.5)) % 2 == 1,
    "gradient_triangle": lambda u, v: np.clip((v + 1.0) / 2.0, 0.0, 1.0),
    "candy_ring": lambda u, v: np.sin(8 * np.arctan2(v, u)) > 0,
    "star": lambda u, v: u * u + v * v <= 0.22**2,
    "striped_cross": lambda u, v: np.sin((u + v) * np.pi * 2.5) > 0,
    "dotted_ellipse": lambda u, v: ((u * 3) % 1 - 0.5) ** 2 + ((v * 3) % 1 - 0.5) ** 2 <= 0.09,
    "ringed_hexagon": lambda u, v: np.sin(np.hypot(u, v) * np.pi * 4.5) > 0,
    "crescent": lambda u, v: np.zeros(u.shape, bool),
    "lined_diamond": lambda u, v: np.sin(v * np.pi * 6) > 0.2,
    "zigzag_band": lambda u, v: np.zeros(u.shape, bool),
    "grid_bowtie": lambda u, v: (np.abs(np.sin(u * np.pi * 3)) < 0.35) | (np.abs(np.sin(v * np.pi * 3)) < 0.35),
}


@dataclass
class _Placement:
    """Where and how one object is drawn; `circumradius` bounds it in pixels."""

    class_index: int
    cx: float
    cy: float
    radius: float
    angle: float
    stretch: tuple[float, float]

    @property
    def circumradius(self) -> float:
        return self.radius * max(self.stretch)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-saturation gradient with low-contrast blobs and lines: clutter that never looks like a class.

    Channel-first (3, S, S) float32 so per-channel arithmetic runs on contiguous planes; Gaussian blobs are
    separable, so all of them are summed as one small tensor contraction.
    """
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    base = _hsv(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(0.35, 0.8))
    other = np.clip(base + rng.uniform(-0.15, 0.15, 3).astype(np.float32), 0.0, 1.0)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = coords[:, None] * np.float32(np.sin(angle)) + coords[None, :] * np.float32(np.cos(angle))
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    image = base[:, None, None] + ramp[None] * (other - base)[:, None, None]
    n_blobs = int(rng.integers(4, 9))
    centres = rng.uniform(0, 1, (n_blobs, 2)).astype(np.float32)
    sigmas = rng.uniform(0.05, 0.25, (n_blobs, 1)).astype(np.float32)
    amplitudes = rng.uniform(-0.08, 0.08, (n_blobs, 3)).astype(np.float32)
    # Exponents floored at -30: far tails would otherwise be float32 subnormals, which slow the product 50x.
    rows = np.exp(np.maximum(-((coords[None] - centres[:, :1]) ** 2) / (2 * sigmas**2), -30))  # (K, S)
    cols = np.exp(np.maximum(-((coords[None] - centres[:, 1:]) ** 2) / (2 * sigmas**2), -30))  # (K, S)
    image += (amplitudes.T[:, :, None] * rows[None]).transpose(0, 2, 1) @ cols  # (3, S, S)
    for _ in range(int(rng.integers(2, 6))):
        py, px = rng.uniform(0, 1, 2)
        theta = rng.uniform(0, np.pi)
        across = (coords[None, :] - np.float32(px)) * np.float32(np.sin(theta))
        along = (coords[:, None] - np.float32(py)) * np.float32(np.cos(theta))
        line = np.abs(across - along) * size <= rng.uniform(0.4, 1.5)
        image[:, line] += rng.uniform(-0.1, 0.1, (3, 1)).astype(np.float32)
    return image


def _draw_object(image: np.ndarray, rng: np.random.Generator, place: _Placement, names: tuple[str, ...]) -> np.ndarray:
    """Paint one object into `image` (3, S, S) in place; return its pixel mask (S, S) bool.

    Only the object's bounding window is rasterised, so cost scales with object area, not image area.
    """
    size = image.shape[1]
    name = names[place.class_index]
    extent = place.circumradius + 1.0
    x0, x1 = max(0, int(np.floor(place.cx - extent))), min(size, int(np.ceil(place.cx + extent)) + 1)
    y0, y1 = max(0, int(np.floor(place.cy - extent))), min(size, int(np.ceil(place.cy + extent)) + 1)
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - place.cy) / place.radius
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - place.cx) / place.radius
    dy, dx = np.meshgrid(ys, xs, indexing="ij")
    cos_a, sin_a = np.float32(np.cos(place.angle)), np.float32(np.sin(place.angle))
    u = (cos_a * dx + sin_a * dy) / np.float32(place.stretch[0])
    v = (-sin_a * dx + cos_a * dy) / np.float32(place.stretch[1])
    inside = _SHAPES[name](u, v)
    hue = _CLASS_HUES[place.class_index] + rng.uniform(-0.025, 0.025)
    saturation, value = rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0)
    primary = _hsv(hue, saturation, value)[:, None, None]
    secondary = _hsv(hue, saturation * rng.uniform(0.4, 0.8), value * rng.uniform(0.3, 0.5))[:, None, None]
    light = rng.uniform(0, 2 * np.pi)
    shading = 1.0 + 0.12 * (dx * np.float32(np.cos(light)) + dy * np.float32(np.sin(light)))
    pattern = _PATTERNS[name](u, v).astype(np.float32)
    colour = (primary + pattern[None] * (secondary - primary)) * shading[None]
    np.copyto(image[:, y0:y1, x0:x1], colour, where=inside[None])
    mask = np.zeros(image.shape[1:], dtype=bool)
    mask[y0:y1, x0:x1] = inside
    return mask


def _random_placement(rng: np.random.Generator, class_index: int, size: int, radius: float) -> _Placement:
    stretch = (float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.85, 1.15)))
    margin = 0.75 * radius * max(stretch)
    cx, cy = rng.uniform(margin, size - margin, 2)
    return _Placement(class_index, float(cx), float(cy), radius, float(rng.uniform(0, 2 * np.pi)), stretch)


def _place_objects(rng: np.random.Generator, size: int, target: int, distractor: int | None) -> list[_Placement]:
    """Target and optional distractor of similar size (ratio 0.8-1.25), kept apart so neither hides the other.

    After every ten failed tries both objects shrink by 10 %; the target is drawn last, so the mask is always
    its visible pixels even if a pathological draw still overlaps.
    """
    radius = rng.uniform(0.12, 0.22) * size
    ratio = rng.uniform(0.8, 1.25)
    for attempt in range(60):
        if attempt and attempt % 10 == 0:
            radius *= 0.9
        target_place = _random_placement(rng, target, size, radius)
        if distractor is None:
            return [target_place]
        other = _random_placement(rng, distractor, size, radius * ratio)
        gap = np.hypot(target_place.cx - other.cx, target_place.cy - other.cy)
        if gap >= 1.02 * (target_place.circumradius + other.circumradius):
            break
    return [other, target_place]


def _bbox_of(mask: np.ndarray) -> list[float]:
    """Tight normalised box [xmin, ymin, xmax, ymax] of a mask; max edges exclusive, as VGG-SS slices them."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    return [round(cols[0] / width, 6), round(rows[0] / height, 6),
            round((cols[-1] + 1) / width, 6), round((rows[-1] + 1) / height, 6)]


# ------------------------------------------------------------------------------------------------ audio


def _band_noise(rng: np.random.Generator, n: int, sample_rate: int, low: float, high: float) -> np.ndarray:
    """Gaussian noise limited to [low, high] Hz, drawn directly as random spectrum bins (one inverse FFT)."""
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    first, last = np.searchsorted(freqs, [low, high])
    spectrum = np.zeros(freqs.size, np.complex64)
    count = int(last - first)
    spectrum[first:last] = rng.standard_normal(count, np.float32) + 1j * rng.standard_normal(count, np.float32)
    return np.fft.irfft(spectrum, n)


def _phase(freq: np.ndarray | float, n: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Running phase in [0, 2 pi) of an instantaneous-frequency track, so pitch can move without clicks.

    Accumulated in float64 and wrapped before the float32 cast, so long clips keep their phase precision.
    """
    track = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    cycles = np.cumsum(track) / sample_rate + rng.uniform()
    return (2 * np.pi * (cycles - np.floor(cycles))).astype(np.float32)


def _harmonics(phase: np.ndarray, amplitudes: list[float], f0_max: float, nyquist: float) -> np.ndarray:
    """Sum of harmonics k = 1.. of a phase track, dropping those that would alias.

    sin(k x) comes from the recurrence sin(k x) = 2 cos(x) sin((k-1) x) - sin((k-2) x): one multiply-add per
    harmonic instead of a transcendental call, stable for the ten or so harmonics used here.
    """
    twice_cos = 2.0 * np.cos(phase)
    previous, current = np.zeros_like(phase), np.sin(phase)
    out = np.zeros_like(phase)
    for k, amplitude in enumerate(amplitudes, start=1):
        if k * f0_max >= nyquist:
            break
        if amplitude:
            out += np.float32(amplitude) * current
        previous, current = current, twice_cos * current - previous
    return out


def _sinusoid(t: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Slow sinusoidal modulator at `rate` Hz with a random phase; t (n,) float32."""
    return np.sin(np.float32(2 * np.pi * rate) * t + np.float32(rng.uniform(0, 2 * np.pi)))


def _gate(t: np.ndarray, rate: float, duty: float, rng: np.random.Generator) -> np.ndarray:
    """Rhythmic on/off envelope with soft edges (a clipped sinusoid), rate in Hz, duty in (0, 1)."""
    threshold = np.float32(np.cos(np.pi * duty))
    return np.clip((_sinusoid(t, rate, rng) - threshold) * np.float32(6.0), 0.0, 1.0)


def _sweeps(t: np.ndarray, period: float, start: float, stop: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Repeating exponential sweeps start -> stop Hz: (frequency track, amplitude envelope hiding the resets)."""
    frac = (t / np.float32(period) + np.float32(rng.uniform())) % np.float32(1.0)
    frequency = np.float32(start) * np.exp(frac * np.float32(np.log(stop / start)))
    return frequency, np.sqrt(np.sin(np.float32(np.pi) * frac))


def _sound_hum(rng: np.random.Generator, t: np.ndarray, sr: int, nyq: float) -> np.ndarray:
    f0 = rng.uniform(110, 170)
    freq = f0 * (1 + 0.004 * _sinusoid(t, rng.uniform(0.3, 0.8), rng))
    return _harmonics(_phase(freq, t.size, sr, rng), [1 / k for k in range(1, 11)], f0 * 1.004, nyq)


def _sound_beeps(rng: np.random.Generator, t: np.ndarray, sr: int, nyq: float) -> np.ndarray:
    carrier = min(rng.uniform(700, 850), nyq / 2)
    tone = _harmonics(_phase(carrier, t.size, sr, rng), [1.0, 0.3], carrier, nyq)
    return tone * _gate(t, rng.uniform(2.5, 4.0), rng.uniform(0.35, 0.55), rng)


def _sound_rising(rng: np.random.Generator, t: np.ndarray, sr: int, nyq: float) -> np.ndarray:
    freq, envelope = _sweeps(t, rng.uniform(0.35, 0.6), rng.uniform(220, 300), min(rng.uniform(900, 1100), nyq), rng)
    return _harmonics(_phase(freq, t.size, sr, rng), [1.0, 0.25], 1100, nyq) * envelope


def _sound_falling(rng: np.random.Generator, t: np.ndarray, sr: int, nyq: float) -> np.ndarray:
    start, stop = min(rng.uniform(3000, 3400), nyq), min(rng.uniform(1500, 1700), nyq * 0.5)
    freq, envelope = _sweeps(t, rng.uniform(0.3, 0.5), start, stop, rng)
    return np.sin(_phase(freq, t.size, sr, rng)) * envelope


def _sound_hiss(rng: np.random.Generator, t: np.ndarray, sr: int, nyq: float) -> np.ndarray:
    low = min(rng.uniform(4000, 4500), nyq * 0.6)
    noise = _band_noise(rng, t.size, sr, low, min(rng.uniform(5800, 6500), nyq))
    return noise * (1 + 0.3 * _sinusoid(t, rng.uniform(0.5, 1.0), rng))


def _sound_clicks(rng: np.random.Generator, t: np.ndarray, sr: int, nyq: float) -> np.ndarray:
    period = 1.0 / rng.uniform(8, 14)
    onsets = np.arange(rng.uniform(0, period), float(t[-1]), period)
    onsets = onsets + rng.normal(0, 0.1 * period, onsets.size)
    impulses = np.zeros(t.size, np.float32)
    positions = np.clip(np.round(onsets * sr).astype(int), 0, t.size - 1)
    impulses[positions] = rng.uniform(0.6, 1.0, positions.size)
    length = int(0.008 * sr)
    decay = np.exp(-np.arange(length, dtype=np.float32) / np.float32(0.0015 * sr))
    kernel = np.diff(rng.standard_normal(length + 1, np.float32)) * decay
    return np.fft.irfft(np.fft.rfft(impulses) * np.fft.rfft(kernel, t.size), t.size)


def _sound_vibrato(rng: np.random.Generator, t: np.ndarray, sr: int, nyq: float) -> np.ndarray:
    centre = rng.uniform(450, 580)
    depth = rng.uniform(0.04, 0.07)
    freq = centre * (1 + depth * _sinusoid(t, rng.uniform(5, 7), rng))
    return _harmonics(_phase(freq, t.size, sr, rng), [1.0, 0.5, 0.25], centre * (1 + depth), nyq)


def _sound_rumble(rng: np.random.Generator, t: np.ndarray, sr: int, nyq: float) -> np.ndarray:
    noise = _band_noise(rng, t.size, sr, rng.uniform(50, 80), rng.uniform(250, 320))
    return noise * (1 + 0.6 * _sinusoid(t, rng.uniform(18, 28), rng))


def _sound_whistle(rng: np.random.Generator, t: np.ndarray, sr: int, nyq: float) -> np.ndarray:
    centre = min(rng.uniform(1900, 2300), nyq * 0.8)
    freq = centre * (1 + 0.02 * _sinusoid(t, rng.uniform(0.4, 1.0), rng))
    return np.sin(_phase(freq, t.size, sr, rng))


def _sound_buzz(rng: np.random.Generator, t: np.ndarray, sr: int, nyq: float) -> np.ndarray:
    f0 = rng.uniform(220, 320)
    odd = [1 / k if k % 2 else 0.0 for k in range(1, 10)]
    return _harmonics(_phase(f0, t.size, sr, rng), odd, f0, nyq) * _gate(t, rng.uniform(1.2, 2.0), 0.6, rng)


def _sound_trill(rng: np.random.Generator, t: np.ndarray, sr: int, nyq: float) -> np.ndarray:
    low = rng.uniform(1000, 1200)
    rate = rng.uniform(8, 12)
    high_half = (t * np.float32(rate) + np.float32(rng.uniform())) % np.float32(1.0) < 0.5
    return np.sin(_phase(np.where(high_half, low * 1.335, low), t.size, sr, rng))


def _sound_snare(rng: np.random.Generator, t: np.ndarray, sr: int, nyq: float) -> np.ndarray:
    rate = rng.uniform(3, 5)
    since_hit = ((t * np.float32(rate) + np.float32(rng.uniform())) % np.float32(1.0)) / np.float32(rate)
    envelope = np.exp(-since_hit / np.float32(rng.uniform(0.03, 0.06)))
    return _band_noise(rng, t.size, sr, 1000, min(3000, nyq)) * envelope


# Each maker takes (rng, t (n,) float32 seconds, sample rate, highest safe frequency) and returns (n,) samples.
_SOUNDS: dict[str, Callable[[np.random.Generator, np.ndarray, int, float], np.ndarray]] = {
    "striped_disc": _sound_hum,
    "checkered_square": _sound_beeps,
    "gradient_triangle": _sound_rising,
    "candy_ring": _sound_falling,
    "star": _sound_hiss,
    "striped_cross": _sound_clicks,
    "dotted_ellipse": _sound_vibrato,
    "ringed_hexagon": _sound_rumble,
    "crescent": _sound_whistle,
    "lined_diamond": _sound_buzz,
    "zigzag_band": _sound_trill,
    "grid_bowtie": _sound_snare,
}


def _rms(signal: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(signal, dtype=np.float64))))


def class_sound(class_index: int, rng: np.random.Generator, sample_rate: int, num_samples: int) -> np.ndarray:
    """One clean, jittered sound of `CLASS_NAMES[class_index]`, scaled to unit RMS. (num_samples,) float32.

    Public so that tests and demos can check the classes are told apart by sound alone.
    """
    t = np.arange(num_samples, dtype=np.float32) / np.float32(sample_rate)
    signal = _SOUNDS[CLASS_NAMES[class_index]](rng, t, sample_rate, 0.45 * sample_rate).astype(np.float32)
    return signal / np.float32(max(_rms(signal), 1e-9))


def _envelope(rng: np.random.Generator, num_samples: int, sample_rate: int) -> np.ndarray:
    """Random onset in the first 15 % and offset in the last 15 %, with raised-cosine fades of 20-50 ms."""
    onset = int(rng.uniform(0, 0.15) * num_samples)
    offset = int(rng.uniform(0.85, 1.0) * num_samples)
    fade = max(1, min(int(rng.uniform(0.02, 0.05) * sample_rate), (offset - onset) // 4))
    envelope = np.zeros(num_samples, np.float32)
    envelope[onset:offset] = 1.0
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade, dtype=np.float32) / fade)
    envelope[onset:onset + fade] = ramp
    envelope[offset - fade:offset] = ramp[::-1]
    return envelope


def _coloured_noise(rng: np.random.Generator, num_samples: int) -> np.ndarray:
    """Noise with power ~ 1/f^beta, beta in [1, 2] (pink to brown), unit RMS; drawn as spectrum bins."""
    bins = num_samples // 2 + 1
    spectrum = rng.standard_normal(bins, np.float32) + 1j * rng.standard_normal(bins, np.float32)
    spectrum[0] = 0.0
    spectrum[1:] *= np.exp(np.float32(-rng.uniform(1.0, 2.0) / 2) * np.log(np.arange(1, bins, dtype=np.float32)))
    noise = np.fft.irfft(spectrum, num_samples)
    return noise / np.float32(max(_rms(noise), 1e-12))


def _mix_audio(rng: np.random.Generator, config: SynthConfig, target: int,
               offscreen: int | None) -> tuple[np.ndarray, float | None]:
    """Target sound + optional off-screen sound 8-14 dB lower + pink/brown noise 18-30 dB lower.

    Levels are relative to the target's RMS; the mix is then scaled to a random peak in [0.25, 0.9], which
    varies loudness across clips and guarantees no clipping. Returns (int16 samples, off-screen dB or None).
    """
    n, sr = config.num_samples, config.sample_rate
    mix = class_sound(target, rng, sr, n) * _envelope(rng, n, sr)
    target_rms = _rms(mix)
    offscreen_db = None
    if offscreen is not None:
        offscreen_db = round(float(rng.uniform(8.0, 14.0)), 3)
        other = class_sound(offscreen, rng, sr, n) * _envelope(rng, n, sr)
        mix += other * np.float32(target_rms / max(_rms(other), 1e-9) * 10 ** (-offscreen_db / 20))
    mix += _coloured_noise(rng, n) * np.float32(target_rms * 10 ** (-rng.uniform(18.0, 30.0) / 20))
    mix *= np.float32(rng.uniform(0.25, 0.9) / max(float(np.abs(mix).max()), 1e-9))
    return np.round(mix * 32767).astype(np.int16), offscreen_db


# ------------------------------------------------------------------------------------------------- clips


def _clip_id(index: int, n_clips: int) -> str:
    return f"synth_{index:0{max(6, len(str(n_clips - 1)))}d}"


def _other_class(rng: np.random.Generator, num_classes: int, exclude: set[int]) -> int:
    choices = [c for c in range(num_classes) if c not in exclude]
    return int(choices[int(rng.integers(len(choices)))])


def _make_clip(out_dir: Path, config: SynthConfig, index: int) -> dict[str, Any]:
    """Render and write one clip; return its metadata. Depends only on (config, index), never on order."""
    rng = np.random.default_rng([config.seed, 1, index])
    names = config.class_names
    target = int(rng.integers(config.num_classes))
    distractor = _other_class(rng, config.num_classes, {target}) if rng.uniform() < config.distractor_prob else None
    # The off-screen sound never matches the silent object, or that object would be a valid answer too.
    offscreen = (_other_class(rng, config.num_classes, {target, distractor} - {None})
                 if rng.uniform() < config.offscreen_prob else None)

    size = config.image_size
    image = _background(rng, size)
    masks = [_draw_object(image, rng, place, names) for place in _place_objects(rng, size, target, distractor)]
    # Uniform sensor noise of standard deviation 0.01-0.03 (uniform draws cost less than Gaussian ones).
    image += (rng.random(image.shape, np.float32) - np.float32(0.5)) * np.float32(rng.uniform(0.01, 0.03) * 12**0.5)
    pixels = np.ascontiguousarray(np.clip(np.round(image * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0))
    target_mask = masks[-1]
    samples, offscreen_db = _mix_audio(rng, config, target, offscreen)

    clip_id = _clip_id(index, config.n_clips)
    Image.fromarray(pixels, "RGB").save(out_dir / "frames" / f"{clip_id}.jpg", quality=90)
    Image.fromarray(target_mask.astype(np.uint8) * 255, "L").save(out_dir / "masks" / f"{clip_id}.png")
    with wave.open(str(out_dir / "audio" / f"{clip_id}.wav"), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(config.sample_rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return {
        "id": clip_id,
        "class": names[target],
        "bbox": _bbox_of(target_mask),
        "distractor": names[distractor] if distractor is not None else None,
        "distractor_bbox": _bbox_of(masks[0]) if distractor is not None else None,
        "offscreen": names[offscreen] if offscreen is not None else None,
        "offscreen_db": offscreen_db,
    }


def _make_chunk(job: tuple[str, SynthConfig, list[int]]) -> list[dict[str, Any]]:
    out_dir, config, indices = job
    return [_make_clip(Path(out_dir), config, index) for index in indices]


def _stratified_counts(sizes: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Per-class counts, each the floor or ceiling of size * fraction, summing to round(total * fraction).

    Largest remainders get the ceilings (ties broken at random), so the split stays stratified even when a
    class has only a handful of clips.
    """
    ideal = sizes * fraction
    counts = np.floor(ideal).astype(int)
    short = int(round(float(ideal.sum()))) - int(counts.sum())
    order = np.lexsort((rng.random(sizes.size), -(ideal - counts)))
    counts[order[:short]] += 1
    return counts


def _assign_splits(records: list[dict[str, Any]], config: SynthConfig) -> dict[str, list[str]]:
    """Class-stratified random train/val/test split of the clip ids, each list sorted.

    Seeded from (seed, 2), apart from the clips' (seed, 1, index) streams, so it never shifts a clip's content.
    """
    rng = np.random.default_rng([config.seed, 2])
    by_class: dict[str, list[str]] = {}
    for record in records:
        by_class.setdefault(record["class"], []).append(record["id"])
    classes = sorted(by_class)
    sizes = np.array([len(by_class[name]) for name in classes])
    n_test = _stratified_counts(sizes, config.test_fraction, rng)
    n_val = np.minimum(_stratified_counts(sizes, config.val_fraction, rng), sizes - n_test)
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for name, tests, vals in zip(classes, n_test, n_val):
        ids = list(rng.permutation(by_class[name]))
        splits["test"] += ids[:tests]
        splits["val"] += ids[tests:tests + vals]
        splits["train"] += ids[tests + vals:]
    return {split: sorted(str(i) for i in ids) for split, ids in splits.items()}




def _write_index_files(out: Path, config: SynthConfig, records: list[dict[str, Any]],
                       splits: dict[str, list[str]]) -> None:
    """vggss.json, labels.csv, split lists and synth.json: the annotations the VGG-SS reader expects."""
    annotations = [{"file": r["id"], "class": r["class"], "bbox": [r["bbox"]]} for r in records]
    (out / "vggss.json").write_text(json.dumps(annotations))
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "class"])
        writer.writerows([r["id"], r["class"]] for r in records)
    split_of = {clip_id: split for split, ids in splits.items() for clip_id in ids}
    for split, ids in splits.items():
        (out / f"{split}.txt").write_text("".join(f"{clip_id}\n" for clip_id in ids))
    metadata = {
        "config": dataclasses.asdict(config),
        "class_names": list(config.class_names),
        "classes": [{"name": name, "appearance": _CLASS_DESCRIPTIONS[name][0], "sound": _CLASS_DESCRIPTIONS[name][1]}
                    for name in config.class_names],
        "clips": [{**r, "split": split_of[r["id"]]} for r in records],
    }
    (out / "synth.json").write_text(json.dumps(metadata, indent=1))


def generate(out_dir: str | Path, config: SynthConfig | None = None, progress: bool = True,
             workers: int = 1) -> SynthSummary:
    """Write the synthetic benchmark to `out_dir` in the VGG-SS layout and return what was written.

    One process renders about 100 clips/s at 160 px / 3 s, so the default is serial: safe from any caller.
    `workers` > 1 (0 = every usable core) renders chunks in spawned processes, which needs the caller's script
    to be importable (the usual `if __name__ == "__main__":` guard); the files do not depend on it.
    Existing files with the same names are overwritten.
    """
    started = time.perf_counter()
    config = config or SynthConfig()
    out = Path(out_dir)
    for folder in ("frames", "audio", "masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    workers = workers if workers > 0 else usable_cores()
    chunk = 32
    jobs = [(str(out), config, list(range(i, min(i + chunk, config.n_clips)))) for i in range(0, config.n_clips, chunk)]
    records: list[dict[str, Any]] = []
    with tqdm(total=config.n_clips, desc="synth", unit="clip", disable=not progress) as bar:
        if workers == 1:
            for batch in map(_make_chunk, jobs):
                records += batch
                bar.update(len(batch))
        else:
            # spawn, not fork: the caller may hold torch/OpenMP threads that a forked child would deadlock on.
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for batch in pool.imap(_make_chunk, jobs):
                    records += batch
                    bar.update(len(batch))
    splits = _assign_splits(records, config)
    _write_index_files(out, config, records, splits)
    class_counts = {name: 0 for name in config.class_names}
    for record in records:
        class_counts[record["class"]] += 1
    return SynthSummary(
        out_dir=out,
        n_clips=len(records),
        split_counts={split: len(ids) for split, ids in splits.items()},
        class_counts=class_counts,
        n_with_distractor=sum(r["distractor"] is not None for r in records),
        n_with_offscreen=sum(r["offscreen"] is not None for r in records),
        frames_dir=out / "frames",
        audio_dir=out / "audio",
        masks_dir=out / "masks",
        annotations=out / "vggss.json",
        labels=out / "labels.csv",
        metadata=out / "synth.json",
        split_files={split: out / f"{split}.txt" for split in splits},
        seconds_elapsed=time.perf_counter() - started,
    )
