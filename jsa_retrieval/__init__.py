"""jsar: cross-modal sound <-> image retrieval and sound source localization with Joint Slot Attention.

The Python front door, in the manner of `clip.load`:

    import jsa_retrieval
    model, image_preprocess, audio_preprocess = jsa_retrieval.load("runs/jsa/best.pt")
    maps = jsa_retrieval.localize(model, image_preprocess(picture)[None], audio_preprocess("dog.wav")[None])
    engine = jsa_retrieval.Engine.open("index/synth")          # search an index built by `jsar index`

Names are resolved on first use, so `import jsa_retrieval` stays light (no torch until it is needed).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Engine", "__version__", "load", "localize"]


def load(path: str, device: str | None = None):
    """(model in eval mode on `device`, image_preprocess, audio_preprocess) from a jsar checkpoint.

    image_preprocess: a PIL image or an image file path -> (3, S, S) tensor (the test transform);
    audio_preprocess: an audio or video file path -> (1, F, T) log spectrogram of its centred window.
    """
    from pathlib import Path

    from PIL import Image

    from .dataset import load_image_tensor, load_spectrogram
    from .inference import pick_device
    from .checkpoints import load_model
    from .transforms import image_transform

    model, config, _ = load_model(path, map_location=pick_device(device))
    to_tensor = image_transform(config.data, train=False)

    def image_preprocess(image):
        return to_tensor(image.convert("RGB")) if isinstance(image, Image.Image) else load_image_tensor(
            Path(image), config.data)

    def audio_preprocess(audio):
        return load_spectrogram(Path(audio), config.data)

    return model, image_preprocess, audio_preprocess


def __getattr__(name: str) -> Any:
    if name == "localize":
        from .maps import localize
        return localize
    if name == "Engine":
        from indexing.engine import Engine  # the front door reaches the search engine lazily, like the CLI
        return Engine
    raise AttributeError(f"module 'jsa_retrieval' has no attribute {name!r}")
