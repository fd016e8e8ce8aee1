"""config.config_with_overrides: the configuration `jsar train` builds from its options, for Python too."""
import pytest

from jsa_retrieval.config import TRAIN_OVERRIDES, config_field, config_with_overrides, get_config


def test_each_override_sets_its_field_and_none_leaves_the_preset():
    values = {"epochs": 3, "batch_size": 8, "lr": 1e-3, "seed": 7, "workers": 0, "image_weights": "none",
              "image_encoder": "efficientnet-lite0", "freeze_image": "early", "audio_weights": "none",
              "freeze_audio": "all", "target_slots": 2, "off_target_slots": 3, "patience": 2}
    config = config_with_overrides("cpu", values)
    assert {key: config_field(config, TRAIN_OVERRIDES[key]) for key in values} == values
    assert config_with_overrides("cpu", {key: None for key in TRAIN_OVERRIDES}).to_dict() == \
        get_config("cpu").to_dict()


def test_yamnet_audio_brings_its_frontend_and_keeps_a_given_weights_file():
    config = config_with_overrides("cpu", {"audio_encoder": "yamnet", "audio_weights": "yamnet.pt"})
    assert (config.data.sample_rate, config.data.n_fft, config.data.win_length) == (16000, 512, 400)
    assert (config.model.audio_encoder, config.model.audio_weights, config.model.freeze_audio) == \
        ("yamnet", "yamnet.pt", "all")


def test_ablations_switch_their_part_off():
    config = config_with_overrides("paper", ablations=["use_match", "share_initial_slots"])
    assert (config.train.use_match, config.model.share_initial_slots) == (False, False)
    assert config.train.use_div and config.train.use_recon and config.train.use_false_negatives


@pytest.mark.parametrize("overrides,ablations", [({"epoch": 3}, ()), ({}, ("no_match",))])
def test_an_unknown_name_is_a_value_error(overrides, ablations):
    with pytest.raises(ValueError, match="unknown override"):
        config_with_overrides("cpu", overrides, ablations)
