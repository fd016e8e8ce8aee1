"""The Python front door (`jsa_retrieval.load`, `.localize`, `.Engine`), `python -m jsa_retrieval`, config files."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

import jsa_retrieval
from jsa_retrieval.checkpoints import checkpoint_state
from jsa_retrieval.config import JSARConfig, get_config
from jsa_retrieval.models import create_model

from conftest import tiny_config, write_image, write_tone


def test_load_gives_a_model_and_the_preprocessing_its_checkpoint_was_trained_with(tmp_path):
    config = tiny_config()
    model = create_model(config, "jsa")
    torch.save(checkpoint_state(model, config), tmp_path / "m.pt")
    loaded, image_preprocess, audio_preprocess = jsa_retrieval.load(str(tmp_path / "m.pt"), device="cpu")
    picture = write_image(tmp_path / "a.jpg", size=80)
    image = image_preprocess(picture)
    assert image.shape == (3, 64, 64)
    torch.testing.assert_close(image_preprocess(Image.open(picture)), image)
    audio = audio_preprocess(write_tone(tmp_path / "a.wav", seconds=2.0))
    assert audio.shape == (1, *config.data.spectrogram_shape)
    maps = jsa_retrieval.localize(loaded, image[None], audio[None])
    assert maps.full.shape == (1, 64, 64) and not loaded.training
    assert jsa_retrieval.Engine.__name__ == "Engine"
    with pytest.raises(AttributeError):
        jsa_retrieval.nothing_here  # noqa: B018


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "jsa_retrieval", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and jsa_retrieval.__version__ in done.stdout


def test_a_config_file_with_an_unknown_key_is_an_error_naming_it(tmp_path):
    values = get_config("cpu").to_dict()
    assert JSARConfig.from_dict(values).to_dict() == values
    values["train"]["learning_rate"] = 0.1
    path = tmp_path / "c.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match="learning_rate"):
        get_config(str(path))
