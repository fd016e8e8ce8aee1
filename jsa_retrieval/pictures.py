"""Pictures of maps and results, in one place: heat-map overlays, spectrogram thumbnails with their time
attention, contact sheets of search hits, example localizations and Recall@K curves for reports.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg canvas directly, never through pyplot,
so importing this module changes no global matplotlib state and needs no display.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from .maps import upsample_and_normalise

DIRECTION_NAMES = {"audio_to_image": "audio → image", "image_to_audio": "image → audio"}


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped heat map over an image: (H, W, 3) uint8 and (H, W) in [0, 1] -> (H, W, 3) uint8.

    `alpha` is the heat map's weight (0 returns the image unchanged, 1 the coloured map only); values
    outside [0, 1] are clipped and NaN reads as 0, so a raw map never raises. `cmap` is any matplotlib
    colormap name ('jet' as in the field's figures, 'inferno' for a perceptually uniform one).
    """
    image = np.asarray(image)
    values = np.asarray(heatmap, dtype=np.float64)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    if values.shape != image.shape[:2]:
        raise ValueError(f"heat map {values.shape} does not match the image's {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    values = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    coloured = colormaps[cmap](values)[..., :3] * 255.0  # (H, W, 3) float in [0, 255]
    blended = (1.0 - alpha) * image.astype(np.float64) + alpha * coloured
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png")
    return path


def localization_grid(examples: Sequence[Any], path: str | Path,
                      columns: Sequence[str] | None = None, alpha: float = 0.5, cmap: str = "jet",
                      panel_inches: float = 2.2) -> Path:
    """One row per example (evaluation.localization.LocalizationExample: image, gt_map, maps, clip_id): the frame
    with its ground truth outlined, then each column's heat-map overlay.

    Boxes and masks are outlined where the ground truth is > 0 (Flickr's 0.5 consensus pixels included) and
    the peak of each map is marked with a cross. Returns the PNG path.
    """
    if not examples:
        raise ValueError("no examples to draw")
    columns = list(columns or examples[0].maps)
    figure = Figure(figsize=(panel_inches * (1 + len(columns)), panel_inches * len(examples)), dpi=100)
    axes = np.asarray(figure.subplots(len(examples), 1 + len(columns), squeeze=False))
    for row, example in enumerate(examples):
        axis = axes[row, 0]
        axis.imshow(example.image)
        _outline(axis, example.gt_map)
        axis.set_title(f"{example.clip_id} (GT)", fontsize=7)
        for offset, column in enumerate(columns, start=1):
            axis = axes[row, offset]
            heatmap = example.maps[column]
            axis.imshow(heatmap_overlay(example.image, heatmap, alpha, cmap))
            _outline(axis, example.gt_map)
            peak_y, peak_x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
            axis.plot([peak_x], [peak_y], marker="x", color="white", markersize=6, mew=2)
            axis.set_title(column, fontsize=7)
    for axis in axes.ravel():
        axis.set_axis_off()
    figure.tight_layout()
    return _save(figure, path)


def _outline(axis: Any, gt_map: np.ndarray) -> None:
    foreground = (np.asarray(gt_map) > 0).astype(np.float64)
    if 0 < foreground.sum() < foreground.size:
        axis.contour(foreground, levels=[0.5], colors="lime", linewidths=1.2)


def recall_curve(curves: Mapping[str, Mapping[int, float]], path: str | Path, title: str = "Recall@K") -> Path:
    """Recall@K against K, one line per direction (`curves` = {'audio_to_image': {1: r1, 2: r2, ...}, ...}).

    Keys may be ints or strings (as read back from report.json). Returns the PNG path.
    """
    if not curves:
        raise ValueError("no recall curves to draw")
    figure = Figure(figsize=(5.0, 3.6), dpi=100)
    axis = figure.subplots()
    largest = 1
    for name, curve in curves.items():
        ks = sorted(int(k) for k in curve)
        values = [float(curve[k] if k in curve else curve[str(k)]) for k in ks]
        axis.plot(ks, values, marker="o" if len(ks) <= 12 else None, markersize=3,
                  label=DIRECTION_NAMES.get(name, name))
        largest = max(largest, ks[-1])
    axis.set_xlim(1, largest)
    axis.set_ylim(0.0, 1.0)
    axis.set_xlabel("K")
    axis.set_ylabel("Recall@K (same class in top K)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    return _save(figure, path)


def overlay_picture(image: Image.Image, heatmap: np.ndarray) -> Image.Image:
    """The heat map drawn over the image at the image's own size."""
    pixels = np.asarray(image.convert("RGB"))
    map_full = upsample_and_normalise(torch.from_numpy(heatmap)[None], pixels.shape[:2]).squeeze(0).numpy()
    return Image.fromarray(heatmap_overlay(pixels, map_full, alpha=0.5))


def not_visible_picture(image: Image.Image) -> Image.Image:
    """A hit whose picture does not show the sound's source: the image dimmed, with "source not visible" on a
    band across it, at the image's own size (no heat map, which would point somewhere with confidence)."""
    pixels = np.asarray(image.convert("RGB")).astype(np.float64)
    dimmed = Image.fromarray(np.round(0.35 * pixels + 0.65 * 128).astype(np.uint8))
    draw = ImageDraw.Draw(dimmed)
    band = max(14, dimmed.height // 8)
    top = (dimmed.height - band) // 2
    draw.rectangle([0, top, dimmed.width, top + band], fill=(40, 40, 40))
    draw.text((4, top + band // 2 - 5), "source not visible", fill=(255, 255, 255))
    return dimmed


def spectrogram_picture(spectrogram: np.ndarray, attention: np.ndarray | None, height: int = 160) -> Image.Image:
    """(F, T) log spectrogram as an image (low frequencies at the bottom) with the attention over time drawn
    as a bar strip beneath it."""
    low, high = float(spectrogram.min()), float(spectrogram.max())
    grey = ((spectrogram - low) / (high - low + 1e-12) * 255).astype(np.uint8)[::-1]
    picture = Image.fromarray(grey).convert("RGB").resize((spectrogram.shape[1], height), Image.BILINEAR)
    strip = Image.new("RGB", (picture.width, 32), (255, 255, 255))
    if attention is not None and attention.size:
        weights = attention / (attention.max() + 1e-12)
        draw = ImageDraw.Draw(strip)
        step = picture.width / len(weights)
        for i, weight in enumerate(weights):  # a bar under one pixel tall (or wide) is not drawn: PIL refuses it
            if 30 * weight >= 1:
                draw.rectangle([i * step, 32 - 30 * weight, max(i * step, (i + 1) * step - 1), 31], fill=(220, 60, 30))
    canvas = Image.new("RGB", (picture.width, height + 32))
    canvas.paste(picture, (0, 0))
    canvas.paste(strip, (0, height))
    return canvas


def contact_sheet(pictures: list[Image.Image], captions: list[str], tile: int = 192, columns: int = 5) -> Image.Image:
    """Pictures (a search's query, then its hits) in a grid of `tile`-wide thumbnails, a caption under each."""
    rows = (len(pictures) + columns - 1) // columns
    tile_height = max(int(tile * p.height / p.width) for p in pictures)
    sheet = Image.new("RGB", (columns * tile, rows * (tile_height + 18)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (picture, caption) in enumerate(zip(pictures, captions)):
        x, y = (i % columns) * tile, (i // columns) * (tile_height + 18)
        sheet.paste(picture.resize((tile, int(tile * picture.height / picture.width))), (x, y))
        draw.text((x + 3, y + tile_height + 3), fitted_caption(draw, caption, tile - 6), fill=(0, 0, 0))
    return sheet


def fitted_caption(draw: ImageDraw.ImageDraw, caption: str, width: float) -> str:
    """`caption` as drawn in `width` pixels: whole when it fits, else with ".." cut into it, first into its first half
    (down to 3 characters) and only then into its second, so that a hit's score and its "not visible" mark at the
    end stay (a plain cut at the end used to drop them)."""
    if draw.textlength(caption) <= width:
        return caption
    middle = len(caption) // 2
    head, tail = caption[:middle], caption[middle:]
    while head or tail:
        if len(head) > 3 or not tail:
            head = head[:-1]
        else:
            tail = tail[1:]
        if draw.textlength(head + ".." + tail) <= width:
            return head + ".." + tail
    return ""
