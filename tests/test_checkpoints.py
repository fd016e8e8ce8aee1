import hashlib

import pytest
import torch

from jsa_retrieval.checkpoints import (
    checkpoint_short_sha, checkpoint_state, load_model, load_training_state, read_checkpoint, save_checkpoint,
)
from jsa_retrieval.config import cpu_config
from jsa_retrieval.models import create_model

CONFIG = cpu_config()
SIZE = CONFIG.data.image_size
FREQ, TIME = CONFIG.data.spectrogram_shape


@pytest.fixture(scope="module")
def jsa() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(CONFIG, "jsa").eval()


@torch.no_grad()
def test_checkpoint_round_trip_gives_identical_encodings(jsa, tmp_path):
    torch.manual_seed(0)
    images, spectrograms = torch.randn(2, 3, SIZE, SIZE), torch.randn(2, 1, FREQ, TIME)
    path = tmp_path / "model.pt"
    torch.save({"model_name": "jsa", "config": CONFIG.to_dict(), "model": jsa.state_dict(), "epoch": 3,
                "optimizer": {}, "meta": {"note": "test"}}, path)
    model, config, meta = load_model(path)
    assert config == CONFIG and meta == {"note": "test", "epoch": 3} and not model.training
    torch.testing.assert_close(model.encode_image(images).vector, jsa.encode_image(images).vector, rtol=0, atol=0)
    torch.testing.assert_close(model.encode_audio(spectrograms).queries, jsa.encode_audio(spectrograms).queries,
                               rtol=0, atol=0)
    assert checkpoint_short_sha(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_a_saved_checkpoint_state_reads_back_with_its_training_state(jsa, tmp_path):
    path = tmp_path / "sub" / "last.pt"
    path.parent.mkdir()
    save_checkpoint(path, checkpoint_state(jsa, CONFIG, epoch=2, meta={"note": "x"}, optimizer={"step": 7}))
    state = load_training_state(path)
    assert (state["model_name"], state["epoch"], state["meta"], state["optimizer"]) == ("jsa", 2, {"note": "x"},
                                                                                        {"step": 7})
    assert state["config"] == CONFIG.to_dict() and read_checkpoint(path).keys() == state.keys()
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left beside it


def test_load_model_rejects_files_that_are_not_jsar_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a jsar checkpoint"):
        load_model(garbage)
    state_dict = tmp_path / "state.pt"
    torch.save({"weight": torch.zeros(2)}, state_dict)
    with pytest.raises(ValueError, match="not a jsar checkpoint"):
        load_model(state_dict)


class _Payload:
    """A pickled object: what a malicious checkpoint would carry to run code on load."""


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    config = cpu_config()
    model = create_model(config, "jsa")
    good = {"model_name": "jsa", "config": config.to_dict(), "model": model.state_dict(), "epoch": 0,
            "meta": {"history": [{"epoch": 1, "loss_total": 1.5}]}}
    torch.save(good, tmp_path / "good.pt")
    assert load_model(tmp_path / "good.pt")[1].to_dict() == config.to_dict()
    torch.save({**good, "meta": {"hook": _Payload()}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_model(tmp_path / "evil.pt")
