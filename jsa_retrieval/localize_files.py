"""`jsar localize`: where the sound of one audio file is in one image file, drawn as an overlay PNG. The
file-level path (decoding, the checkpoint, the picture) around `maps.localize`, which stays pure tensors."""
from __future__ import annotations

from pathlib import Path

from .checkpoints import load_model
from .dataset import load_image_tensor, load_spectrogram
from .decode import load_image
from .inference import pick_device
from .maps import localize
from .pictures import overlay_picture


def localize_pair(image_path: Path, audio_path: Path, checkpoint: Path, out_path: Path, iqr: bool = False,
                  device: str | None = None) -> Path:
    """Overlay PNG of where the sound of `audio_path` is in `image_path` (no index, no FAISS needed)."""
    device_ = pick_device(device)
    model, config, _ = load_model(checkpoint, map_location=device_)
    image = load_image_tensor(Path(image_path), config.data).unsqueeze(0)
    spectrogram = load_spectrogram(Path(audio_path), config.data).unsqueeze(0)
    maps = localize(model, image, spectrogram, iqr=iqr)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    overlay_picture(load_image(Path(image_path)), maps.coarse[0].cpu().numpy()).save(out_path)
    return out_path
