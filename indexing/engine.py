"""Search by sound or by picture: the Python API behind `jsar query` and `jsar localize`.

    engine = Engine.open("index_dir")
    result = engine.search_audio("dog.wav", k=10)
    engine.write_outputs(result, "out/")      # overlays, contact sheet, results.json

An audio query's hits are images; for each hit the localization map is computed on demand, the query's audio
target query against the hit image's keys (Sec. 3.5), exactly what `localize()` gives for that pair. An image
query's hits are sounds, drawn as spectrogram thumbnails with the audio target slot's attention over time.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from jsa_retrieval.clips import VIDEO_SUFFIXES
from jsa_retrieval.dataset import load_image_tensor, load_spectrogram
from jsa_retrieval.decode import load_image
from jsa_retrieval.inference import pick_device
from jsa_retrieval.maps import pair_maps
from jsa_retrieval.pictures import contact_sheet, overlay_picture, spectrogram_picture
from jsa_retrieval.models import load_model

from .embed import store_meta_for
from .faiss_index import RetrievalIndexes, open_indexes
from .store import FingerprintMismatch


@dataclass
class Hit:
    rank: int
    row: int
    id: str
    label: str | None
    score: float
    image_path: str
    audio_path: str
    picture: str | None = None  # overlay (audio query) or spectrogram thumbnail (image query), once written


@dataclass
class QueryResult:
    query: str
    kind: str  # 'audio' | 'image' | 'video'
    k: int
    hits: list[Hit] = field(default_factory=list)
    contact_sheet: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Engine:
    """A store's model and indexes, opened once and queried many times."""

    def __init__(self, index_dir: Path, model: torch.nn.Module, config, indexes: RetrievalIndexes,
                 device: torch.device):
        self.index_dir = Path(index_dir)
        self.model = model
        self.config = config
        self.indexes = indexes
        self.device = device

    @classmethod
    def open(cls, index_dir: Path, checkpoint: Path | None = None, device: str | None = None,
             gpu: bool | None = None) -> "Engine":
        """Load the indexes and the model that built the store; refuse a checkpoint with another fingerprint."""
        indexes = open_indexes(index_dir, gpu=gpu)
        meta = indexes.store.meta
        checkpoint = Path(checkpoint or meta.checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"the store in {index_dir} was built with {checkpoint}, which is missing; "
                                    "pass --checkpoint with that model")
        device_ = pick_device(device)
        model, config, _ = load_model(checkpoint, map_location=device_)
        fingerprint = store_meta_for(checkpoint, config, model.model_name, model.vector_dim).fingerprint
        if fingerprint != meta.fingerprint:
            raise FingerprintMismatch(f"{checkpoint} is not the model that built {index_dir} (fingerprint "
                                      f"{fingerprint[:12]} vs {meta.fingerprint[:12]}); re-run `jsar index`")
        return cls(Path(index_dir), model, config, indexes, device_)

    @torch.no_grad()
    def embed_audio(self, path: Path):
        """AudioSide of one sound file (or a video's audio track), batch of one."""
        spectrogram = load_spectrogram(Path(path), self.config.data).unsqueeze(0).to(self.device)
        return self.model.encode_audio(spectrogram)

    @torch.no_grad()
    def embed_image(self, path: Path):
        """ImageSide of one image file (or a video's middle frame), batch of one."""
        image = load_image_tensor(Path(path), self.config.data).unsqueeze(0).to(self.device)
        return self.model.encode_image(image)

    def search_audio(self, path: Path, k: int = 10) -> QueryResult:
        """Images whose sound source matches the sound in `path`."""
        scores, rows = self.indexes.audio_to_image(self.embed_audio(path).vector.cpu().numpy(), k)
        return QueryResult(str(path), "audio", k, self._hits(scores[0], rows[0]))

    def search_image(self, path: Path, k: int = 10) -> QueryResult:
        """Sounds that belong to the picture in `path`."""
        scores, rows = self.indexes.image_to_audio(self.embed_image(path).vector.cpu().numpy(), k)
        return QueryResult(str(path), "image", k, self._hits(scores[0], rows[0]))

    def search_video(self, path: Path, k: int = 10) -> QueryResult:
        """Images matching a video's sound track (the video's own frame is not used)."""
        if Path(path).suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{path} is not a video file ({', '.join(VIDEO_SUFFIXES)})")
        result = self.search_audio(path, k)
        result.kind = "video"
        return result

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        hits = []
        for rank, (score, row) in enumerate(zip(scores, rows), start=1):
            if row < 0:
                continue
            record = self.indexes.store.record(int(row))
            hits.append(Hit(rank, int(row), record.id, record.label, float(score), record.image_path,
                            record.audio_path))
        return hits

    @torch.no_grad()
    def hit_map(self, audio_side, image_path: Path, iqr: bool = False) -> np.ndarray:
        """(S, S) localization map of `audio_side`'s sound in the image at `image_path`, computed on demand:
        the same computation as `localize()` on that pair."""
        maps = pair_maps(self.model, audio_side, self.embed_image(image_path), self.config.data.image_size, iqr)
        return maps.full.squeeze(0).cpu().numpy()

    def write_outputs(self, result: QueryResult, out_dir: Path, iqr: bool = False) -> Path:
        """Write one picture per hit, a contact sheet of all hits, and results.json; returns the JSON path."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        pictures = []
        if result.kind in ("audio", "video"):
            audio_side = self.embed_audio(Path(result.query))
            for hit in result.hits:
                picture = overlay_picture(load_image(Path(hit.image_path)), self.hit_map(audio_side, Path(hit.image_path), iqr))
                pictures.append(self._save_hit(picture, hit, out_dir))
        else:
            for hit in result.hits:
                spectrogram = load_spectrogram(Path(hit.audio_path), self.config.data)
                with torch.no_grad():
                    side = self.model.encode_audio(spectrogram.unsqueeze(0).to(self.device))
                attention = None if side.time_attention is None else side.time_attention[0].cpu().numpy()
                pictures.append(self._save_hit(spectrogram_picture(spectrogram[0].numpy(), attention), hit, out_dir))
        if pictures:
            sheet = contact_sheet(pictures, [f"#{h.rank} {h.label or h.id} {h.score:.3f}" for h in result.hits])
            sheet_path = out_dir / "contact_sheet.png"
            sheet.save(sheet_path)
            result.contact_sheet = str(sheet_path)
        json_path = out_dir / "results.json"
        json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        return json_path

    @staticmethod
    def _save_hit(picture: Image.Image, hit: Hit, out_dir: Path) -> Image.Image:
        safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in hit.id)
        path = out_dir / f"hit_{hit.rank:02d}_{safe_id}.png"
        picture.save(path)
        hit.picture = str(path)
        return picture
