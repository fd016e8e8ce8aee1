"""Search by sound or by picture: the Python API behind `jsar query` and `jsar localize`.

    engine = Engine.open("index_dir")
    result = engine.search_audio("dog.wav", k=10)
    engine.write_outputs(result, "out/")      # overlays, contact sheet, results.json

An audio query's hits are images; for each hit the localization map is computed on demand, the query's audio
target query against the hit image's keys (Sec. 3.5), exactly what `localize()` gives for that pair. An image
query's hits are sounds, drawn as spectrogram thumbnails with the audio target slot's attention over time.

The batch methods (`encode_audio`, `encode_image` on stacked tensors, `image_hits`, `sound_hits` on (Q, d)
vectors, `hit_pictures` for all hits of a query at once) are the same path the HTTP service (`indexing/service/`)
micro-batches concurrent requests through, so `jsar query` and the service give the same hits.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.clips import VIDEO_SUFFIXES
from jsa_retrieval.collect import NO_REFERENCE, picture_stats, presence_reference
from jsa_retrieval.dataset import load_image_tensor, load_spectrogram
from jsa_retrieval.decode import load_image
from jsa_retrieval.files import hit_picture_name
from jsa_retrieval.inference import pick_device
from jsa_retrieval.maps import pair_maps
from jsa_retrieval.metrics import PresenceMix, mixed_presence
from jsa_retrieval.models import AudioSide
from jsa_retrieval.pictures import contact_sheet, not_visible_picture, overlay_picture, spectrogram_picture
from jsa_retrieval.transforms import image_transform

from .embed import store_meta_for
from .faiss_index import RetrievalIndexes, open_indexes
from .milvus_backend import MilvusIndexes, open_milvus_indexes, recorded_backend
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
    presence: float | None = None  # sound query: how strongly the image shows the sound's source, once drawn
    source_visible: bool | None = None  # presence above the checkpoint's calibrated cut (None: no cut known)


@dataclass
class QueryResult:
    query: str
    kind: str  # 'audio' | 'image' | 'video'
    k: int
    hits: list[Hit] = field(default_factory=list)
    contact_sheet: str | None = None
    query_side: Any = field(default=None, repr=False, compare=False)  # the query's encoding, for hit maps
    tags: list[dict] | None = None  # sound query: what it sounds like, from the audio trunk's own class head

    def to_dict(self) -> dict:
        return {"query": self.query, "kind": self.kind, "k": self.k, "tags": self.tags,
                "hits": [asdict(hit) for hit in self.hits], "contact_sheet": self.contact_sheet}


TAGS_SHOWN, TAG_MIN_SCORE = 3, 0.1


def sound_tags(model: torch.nn.Module, audio_side) -> list[dict] | None:
    """[{'name', 'score'}] of the best AudioSet classes of a sound (batch of one), best first, or None when the
    model's audio trunk has no class head (trained from scratch)."""
    if getattr(audio_side, "tags", None) is None:
        return None
    from jsa_retrieval.yamnet import top_tags

    names = model.audio_encoder.trunk.class_names
    return [{"name": name, "score": round(score, 4)}
            for name, score in top_tags(audio_side.tags[0], names, TAGS_SHOWN, TAG_MIN_SCORE)]


class Engine:
    """A store's model and indexes, opened once and queried many times."""

    def __init__(self, index_dir: Path, model: torch.nn.Module, config, indexes: RetrievalIndexes | MilvusIndexes,
                 device: torch.device, presence_cut: float | None = None, presence_mix: PresenceMix | None = None,
                 presence_reference: AudioSide | None = None):
        self.index_dir = Path(index_dir)
        # channels-last convolutions take oneDNN's path for every layer of the audio encoder, where a batch of one
        # otherwise falls back to slow kernels (4.4 -> 3.1 ms a sound on 2 cores, same output to 1e-6); its output
        # is reduced over frequency at once, so nothing downstream sees the layout
        model.audio_encoder.to(memory_format=torch.channels_last)
        self.model = model
        self.config = config
        self.indexes = indexes
        self.device = device
        self.presence_cut = presence_cut  # calibrated on val by the trainer (checkpoint meta); None: not known
        self.presence_mix = presence_mix  # the scores the cut applies to (checkpoint meta); None: raw presence
        # a mix by picture standardises each hit picture's scores over these sounds (checkpoint meta)
        self.presence_reference = None if presence_reference is None else presence_reference.to(device)
        if presence_mix is not None and presence_mix.by_picture and presence_reference is None:
            raise ValueError(NO_REFERENCE)

    @classmethod
    def open(cls, index_dir: Path, checkpoint: Path | None = None, device: str | None = None,
             gpu: bool | None = None, milvus_uri: str | None = None) -> "Engine":
        """Load the indexes (FAISS, or the Milvus collections when index.json says so, at `milvus_uri` if given)
        and the model that built the store; refuse a checkpoint with another fingerprint."""
        if recorded_backend(index_dir) == "milvus":
            indexes = open_milvus_indexes(index_dir, uri=milvus_uri)
        else:
            indexes = open_indexes(index_dir, gpu=gpu)
        meta = indexes.store.meta
        checkpoint = Path(checkpoint or meta.checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"the store in {index_dir} was built with {checkpoint}, which is missing; "
                                    "pass --checkpoint with that model")
        device_ = pick_device(device)
        model, config, model_meta = load_model(checkpoint, map_location=device_)
        fingerprint = store_meta_for(checkpoint, config, model.model_name, model.vector_dim).fingerprint
        if fingerprint != meta.fingerprint:
            raise FingerprintMismatch(f"{checkpoint} is not the model that built {index_dir} (fingerprint "
                                      f"{fingerprint[:12]} vs {meta.fingerprint[:12]}); re-run `jsar index`")
        return cls(Path(index_dir), model, config, indexes, device_, model_meta.get("presence_cut"),
                   PresenceMix.from_dict(model_meta.get("presence_mix")),
                   presence_reference(model_meta, model, config.data, device_))

    def audio_input(self, path: Path) -> torch.Tensor:
        """(1, F, T) spectrogram of a sound file (or a video's audio track), ready to stack into a batch."""
        return load_spectrogram(Path(path), self.config.data)

    def image_input(self, path: Path) -> torch.Tensor:
        """(3, S, S) tensor of an image file (or a video's middle frame), ready to stack into a batch."""
        return load_image_tensor(Path(path), self.config.data)

    @torch.no_grad()
    def encode_audio(self, spectrograms: torch.Tensor):
        """AudioSide of a batch of spectrograms (B, 1, F, T): what the service's micro-batches go through."""
        return self.model.encode_audio(spectrograms.to(self.device, memory_format=torch.channels_last))

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor):
        """ImageSide of a batch of images (B, 3, S, S)."""
        return self.model.encode_image(images.to(self.device))

    def embed_audio(self, path: Path):
        """AudioSide of one sound file (or a video's audio track), batch of one."""
        return self.encode_audio(self.audio_input(path).unsqueeze(0))

    def embed_image(self, path: Path):
        """ImageSide of one image file (or a video's middle frame), batch of one."""
        return self.encode_image(self.image_input(path).unsqueeze(0))

    def image_hits(self, audio_vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """(Q, d) audio vectors -> each query's best-matching images, one FAISS (or Milvus) search for all Q."""
        scores, rows = self.indexes.audio_to_image(audio_vectors, k)
        return [self._hits(s, r) for s, r in zip(scores, rows)]

    def sound_hits(self, image_vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """(Q, d) image vectors -> each query's best-matching sounds, one FAISS (or Milvus) search for all Q."""
        scores, rows = self.indexes.image_to_audio(image_vectors, k)
        return [self._hits(s, r) for s, r in zip(scores, rows)]

    def search_audio(self, path: Path, k: int = 10) -> QueryResult:
        """Images whose sound source matches the sound in `path`."""
        side = self.embed_audio(path)
        hits = self.image_hits(side.vector.cpu().numpy(), k)[0]
        return QueryResult(str(path), "audio", k, hits, query_side=side, tags=sound_tags(self.model, side))

    def search_image(self, path: Path, k: int = 10) -> QueryResult:
        """Sounds that belong to the picture in `path`."""
        side = self.embed_image(path)
        return QueryResult(str(path), "image", k, self.sound_hits(side.vector.cpu().numpy(), k)[0], query_side=side)

    def search_video(self, path: Path, k: int = 10) -> QueryResult:
        """Images matching a video's sound track (the video's own frame is not used)."""
        if Path(path).suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{path} is not a video file ({', '.join(VIDEO_SUFFIXES)})")
        result = self.search_audio(path, k)
        result.kind = "video"
        return result

    def _hits(self, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
        found = [(rank, float(score), int(row)) for rank, (score, row) in enumerate(zip(scores, rows), start=1)
                 if row >= 0]
        records = self.indexes.store.records([row for _, _, row in found])
        return [Hit(rank, row, record.id, record.label, score, record.image_path, record.audio_path)
                for (rank, score, row), record in zip(found, records)]

    def hit_maps(self, audio_side, images: torch.Tensor, iqr: bool = False) -> np.ndarray:
        """(n, S, S) localization maps of one sound (`audio_side`, batch of one) in n images (n, 3, S, S), the
        image encoder run once over all of them: the same computation as `localize()` on each pair."""
        return self.hit_evidence(audio_side, images, iqr)[0]

    def hit_evidence(self, audio_side, images: torch.Tensor, iqr: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """`hit_maps` and, from the same encodings, each image's source-presence score (n,) for the sound
        (model.presence_matrix, mixed with the retrieval similarity by the checkpoint's `presence_mix`, by picture
        over the checkpoint's reference sounds when it says so): compared with `presence_cut` it says whether the
        source is visible at all."""
        with torch.no_grad():
            audio, image = audio_side.to(self.device), self.encode_image(images)
            maps = pair_maps(self.model, audio, image, self.config.data.image_size, iqr)
            presence = self.model.presence_matrix(audio, image)[0].float().cpu().numpy()
            similarity = (audio.vector @ image.vector.T)[0].float().cpu().numpy()
            by_picture = self.presence_mix is not None and self.presence_mix.by_picture
            pictures = picture_stats(self.model, self.presence_reference, image) if by_picture else None
        return maps.full.cpu().numpy(), mixed_presence(presence, similarity, self.presence_mix,
                                                       pictures).astype(np.float32)

    def source_visible(self, presence: float) -> bool | None:
        """Whether a presence score passes the checkpoint's calibrated cut; None when no cut is known."""
        return None if self.presence_cut is None else bool(presence > self.presence_cut)

    def hit_map(self, audio_side, image_path: Path, iqr: bool = False) -> np.ndarray:
        """(S, S) map of `audio_side`'s sound in the image at `image_path`."""
        return self.hit_maps(audio_side, self.image_input(image_path).unsqueeze(0), iqr)[0]

    def hit_pictures(self, kind: str, query_side, hits: Sequence[Hit], iqr: bool = False) -> list[Image.Image]:
        """One picture per hit, each file decoded once and each encoder run once over all hits: for a sound
        query ('audio' / 'video') the map of the query's sound over the hit image, for an image query the hit
        sound's spectrogram with its target slot's attention over time (which needs no query side).
        A sound query also fills each hit's `presence` and `source_visible`; a hit whose source is not visible
        (below the calibrated cut) is drawn dimmed and labelled instead of with a confident map."""
        if not hits:
            return []
        if kind in ("audio", "video"):
            originals = [load_image(Path(hit.image_path)) for hit in hits]
            to_tensor = image_transform(self.config.data, train=False)
            maps, presence = self.hit_evidence(query_side, torch.stack([to_tensor(image) for image in originals]),
                                               iqr)
            pictures = []
            for hit, image, heatmap, score in zip(hits, originals, maps, presence):
                hit.presence, hit.source_visible = float(score), self.source_visible(float(score))
                pictures.append(not_visible_picture(image) if hit.source_visible is False
                                else overlay_picture(image, heatmap))
            return pictures
        spectrograms = torch.stack([self.audio_input(Path(hit.audio_path)) for hit in hits])
        attention = self.encode_audio(spectrograms).time_attention
        return [spectrogram_picture(spectrograms[i, 0].numpy(), None if attention is None else attention[i].cpu().numpy())
                for i in range(len(hits))]

    def query_picture(self, kind: str, query: Path, query_side) -> Image.Image:
        """The query as a contact sheet shows it: an image query's frame; a sound query's ('audio' / 'video')
        spectrogram with its target slot's attention over time, drawn like a sound hit."""
        if kind == "image":
            return load_image(Path(query))
        attention = query_side.time_attention
        return spectrogram_picture(self.audio_input(Path(query))[0].numpy(),
                                   None if attention is None else attention[0].cpu().numpy())

    def write_outputs(self, result: QueryResult, out_dir: Path, iqr: bool = False) -> Path:
        """Write one picture per hit, a contact sheet of the query (first, captioned "query") and all hits, and
        results.json; returns the JSON path. A sound query is encoded again only if `result` does not carry its
        side (e.g. read back from JSON)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        query_side = result.query_side
        if query_side is None and result.kind in ("audio", "video"):
            query_side = self.embed_audio(Path(result.query))
        pictures = [self._save_hit(picture, hit, out_dir)
                    for picture, hit in zip(self.hit_pictures(result.kind, query_side, result.hits, iqr), result.hits)]
        if pictures:
            sheet = contact_sheet([self.query_picture(result.kind, Path(result.query), query_side), *pictures],
                                  ["query"] + [f"#{h.rank} {h.label or h.id} {h.score:.3f}"
                                               + (" not visible" if h.source_visible is False else "")
                                               for h in result.hits])
            sheet_path = out_dir / "contact_sheet.png"
            sheet.save(sheet_path)
            result.contact_sheet = str(sheet_path)
        json_path = out_dir / "results.json"
        json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        return json_path

    @staticmethod
    def _save_hit(picture: Image.Image, hit: Hit, out_dir: Path) -> Image.Image:
        path = out_dir / hit_picture_name(hit.rank, hit.id)
        picture.save(path)
        hit.picture = str(path)
        return picture
