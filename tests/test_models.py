import pytest
import torch
import torchvision

from jsa_retrieval.config import cpu_config
from jsa_retrieval.encoders import ImageEncoder, WeightsUnavailable
from jsa_retrieval.models import MODEL_NAMES, AlignmentForward, EZVSLForward, JSAForward, create_model

CONFIG = cpu_config()
SIZE = CONFIG.data.image_size
FREQ, TIME = CONFIG.data.spectrogram_shape
D = CONFIG.model.embed_dim
S = CONFIG.model.num_slots


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(2, 3, SIZE, SIZE), torch.randn(2, 1, FREQ, TIME)


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: create_model(CONFIG, name).eval() for name in MODEL_NAMES}


@pytest.fixture(scope="module")
def jsa(models) -> torch.nn.Module:
    return models["jsa"]


@pytest.fixture(scope="module")
def jsa_sides(jsa, batch):
    """One eval-mode encoding of the batch: (ImageSide, AudioSide, JSAForward)."""
    images, spectrograms = batch
    with torch.no_grad():
        return jsa.encode_image(images), jsa.encode_audio(spectrograms), jsa(images, spectrograms)


def unit_norm(vectors: torch.Tensor) -> None:
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(vectors.shape[0]))


def test_jsa_encodings_have_interface_shapes(jsa_sides):
    image, audio, _ = jsa_sides
    assert image.grid == (7, 7) and image.keys.shape == (2, 49, D) and image.intra_map.shape == (2, 49)
    assert audio.queries.shape == (2, S, D) and audio.time_attention.shape == (2, 10)
    unit_norm(image.vector)
    unit_norm(audio.vector)
    torch.testing.assert_close(image.intra_map.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(audio.time_attention.sum(dim=1), torch.ones(2))


@torch.no_grad()
def test_jsa_eval_outputs_are_deterministic(jsa, jsa_sides, batch):
    images, spectrograms = batch
    image, audio, _ = jsa_sides
    torch.testing.assert_close(jsa.encode_image(images).vector, image.vector, rtol=0, atol=0)
    torch.testing.assert_close(jsa.encode_audio(spectrograms).queries, audio.queries, rtol=0, atol=0)


def test_jsa_forward_outputs_match_interface_and_attentions_sum_to_one(batch):
    torch.manual_seed(1)
    model = create_model(CONFIG, "jsa").train()
    out = model(*batch)
    assert isinstance(out, JSAForward)
    for name in ("image_slots", "audio_slots", "image_queries", "audio_queries"):
        assert getattr(out, name).shape == (2, S, D)
    assert out.image_keys.shape == out.image_features.shape == out.image_reconstruction.shape == (2, 49, D)
    assert out.audio_keys.shape == out.audio_features.shape == out.audio_reconstruction.shape == (2, 10, D)
    for name, length in (("ia_vv", 49), ("ca_av", 49), ("ia_aa", 10), ("ca_va", 10)):
        attention = getattr(out, name)
        assert attention.shape == (2, length)
        torch.testing.assert_close(attention.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(out.image_target, out.image_slots[:, 0])
    torch.testing.assert_close(out.audio_off_target, out.audio_slots[:, 1])
    loss = sum(getattr(out, name).square().mean() for name in ("image_reconstruction", "audio_reconstruction",
                                                               "ca_av", "image_target"))
    loss.backward()
    assert model.image_decoder.position.grad is not None and model.slot_attention.initial_slots.grad is not None


def test_jsa_retrieval_vector_is_the_normalised_target_slot(jsa_sides):
    image, audio, out = jsa_sides
    torch.testing.assert_close(image.vector, torch.nn.functional.normalize(out.image_target))
    torch.testing.assert_close(audio.vector, torch.nn.functional.normalize(out.audio_target))
    torch.testing.assert_close(image.intra_map, out.ia_vv)
    torch.testing.assert_close(audio.time_attention, out.ia_aa)


@pytest.mark.parametrize("name", MODEL_NAMES)
@torch.no_grad()
def test_cross_map_of_one_audio_against_many_images_equals_pairwise_rows(name, models, batch):
    model = models[name]
    images, spectrograms = batch
    image, audio = model.encode_image(images), model.encode_audio(spectrograms[:1])
    broadcast = model.cross_map(audio, image)
    assert broadcast.shape == (2, 7, 7)
    for row in range(2):
        single = model.encode_image(images[row:row + 1])
        torch.testing.assert_close(broadcast[row], model.cross_map(audio, single)[0], rtol=1e-4, atol=1e-6)


def test_jsa_refined_map_is_eq14_by_hand(jsa, jsa_sides):
    image, audio, _ = jsa_sides
    cross = jsa.cross_map(audio, image)
    intra = image.intra_map.reshape(2, 7, 7)
    torch.testing.assert_close(jsa.refined_map(audio, image, 0.25), 0.25 * cross + 0.75 * intra)
    alpha = CONFIG.model.iqr_alpha
    torch.testing.assert_close(jsa.refined_map(audio, image), alpha * cross + (1 - alpha) * intra)
    torch.testing.assert_close(cross.flatten(1).sum(dim=1), torch.ones(2))  # ca^{a,v} sums to one over hw


@torch.no_grad()
def test_iqr_adds_ca_and_ia_taken_at_the_same_logit_scale(jsa, batch):
    """The release sharpens both attentions for inference; at logit scale 0.1 ia must be the 0.1-scaled slot
    softmax of the image's own queries, not the training-time one."""
    from dataclasses import replace
    from jsa_retrieval.slot_attention import slot_attention_weights
    images, spectrograms = batch
    scale_one = jsa.encode_image(images).intra_map
    jsa.config = replace(jsa.config, model=replace(jsa.config.model, infer_logit_scale=0.1))
    try:
        image, audio = jsa.encode_image(images), jsa.encode_audio(spectrograms)
        decomposition = jsa.slot_attention(jsa.image_encoder(images)[0], "image")
        expected = slot_attention_weights(decomposition.queries, decomposition.keys, logit_scale=0.1)[..., 0]
        torch.testing.assert_close(image.intra_map, expected)
        assert image.intra_map.std() < scale_one.std()  # the smaller scale flattens ia as it flattens ca
        cross = jsa.attention_map(audio, image)
        torch.testing.assert_close(jsa.refined_map(audio, image, 0.4), 0.4 * cross + 0.6 * expected.reshape(2, 7, 7))
    finally:
        jsa.config = replace(jsa.config, model=replace(jsa.config.model, infer_logit_scale=1.0))


@pytest.mark.parametrize("choice", ["fused", "location"])
@torch.no_grad()
def test_iqr_does_not_apply_to_maps_other_than_the_papers(choice, batch):
    from jsa_retrieval.config import LISTENING_METHOD, apply_settings
    config = apply_settings(cpu_config(), LISTENING_METHOD)
    config.model.localization_map = choice
    torch.manual_seed(0)
    model = create_model(config, "jsa").eval()
    images, spectrograms = batch
    image, audio = model.encode_image(images), model.encode_audio(spectrograms)
    assert not model.has_image_query
    torch.testing.assert_close(model.refined_map(audio, image), model.cross_map(audio, image), rtol=0, atol=0)


@torch.no_grad()
def test_ezvsl_map_is_cosine_of_location_features_and_global_audio(models, batch):
    model = models["ezvsl"]
    images, spectrograms = batch
    image, audio = model.encode_image(images), model.encode_audio(spectrograms)
    features, _ = model.image_encoder(images)
    audio_vector = model.audio_encoder(spectrograms).amax(dim=1)
    expected = torch.nn.functional.cosine_similarity(features, audio_vector.unsqueeze(1), dim=-1).reshape(2, 7, 7)
    torch.testing.assert_close(model.cross_map(audio, image), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.refined_map(audio, image, 0.3), model.cross_map(audio, image))
    assert image.intra_map is None and audio.queries.shape == (2, 1, D)
    unit_norm(image.vector)
    out = model(images, spectrograms)
    assert isinstance(out, EZVSLForward) and out.image_features.shape == (2, 49, D)
    unit_norm(out.image_features.reshape(-1, D))
    torch.testing.assert_close(out.audio_vector, audio.vector)


@torch.no_grad()
def test_alignment_retrieval_vectors_are_the_projections(models, batch):
    model = models["alignment"]
    images, spectrograms = batch
    out = model(images, spectrograms)
    assert isinstance(out, AlignmentForward)
    assert out.image_projection.shape == out.audio_projection.shape == (2, CONFIG.model.projection_dim)
    torch.testing.assert_close(model.encode_image(images).vector, out.image_projection)
    torch.testing.assert_close(model.encode_audio(spectrograms).vector, out.audio_projection)
    unit_norm(out.image_projection)
    unit_norm(out.audio_projection)


def test_create_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown model"):
        create_model(CONFIG, "clip")


def test_imagenet_weights_need_the_standard_width():
    with pytest.raises(ValueError, match="encoder_width=64"):
        ImageEncoder(8, width=16, weights="imagenet")


def test_local_pth_loads_trunk_and_ignores_fc(tmp_path):
    reference = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(reference, path)
    encoder = ImageEncoder(8, width=64, weights=str(path))
    for key, value in encoder.trunk.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0)


def test_missing_weights_path_raises_weights_unavailable(tmp_path):
    with pytest.raises(WeightsUnavailable, match="--image-weights"):
        ImageEncoder(8, width=64, weights=str(tmp_path / "absent.pth"))


def test_cross_map_is_the_audio_target_query_against_the_image_keys(jsa, batch):
    """ca^{a,v} (Sec. 3.5): softmax over slots of K^v (Q^a)^T / sqrt(d), normalised over the image tokens, target
    column. Swapping in the image's own queries (ia^{v,v}) or the audio keys must not pass."""
    images, spectrograms = batch
    with torch.no_grad():
        image, audio = jsa.encode_image(images), jsa.encode_audio(spectrograms)
        ca = jsa.cross_map(audio, image).flatten(1)  # (B, hw)
        logits = image.keys @ audio.queries.transpose(1, 2) / image.keys.shape[-1] ** 0.5  # (B, hw, S)
        by_hand = logits.softmax(dim=-1)[..., 0] + jsa.slot_attention.eps
        by_hand = by_hand / by_hand.sum(dim=1, keepdim=True)
        torch.testing.assert_close(ca, by_hand)
        assert not torch.allclose(ca, image.intra_map, atol=1e-4)  # ia^{v,v} uses the image's own queries
        forward = jsa(images, spectrograms)
        torch.testing.assert_close(forward.ca_av, ca)
        torch.testing.assert_close(forward.ia_vv, image.intra_map)


def test_a_side_moved_with_to_is_a_copy_and_the_original_is_left_as_it_was(jsa_sides):
    image, audio, _ = jsa_sides
    halved = audio.to("cpu", torch.float16)
    assert halved is not audio and halved.vector.dtype == torch.float16 and audio.vector.dtype == torch.float32
    assert halved.location_query is None and audio.location_query is None  # no location head: None stays None
    torch.testing.assert_close(halved.queries.float(), audio.queries, rtol=1e-3, atol=1e-3)
    assert image.to("cpu").grid == image.grid


def test_a_sides_row_is_that_row_as_a_batch_of_one(jsa_sides):
    image, audio, _ = jsa_sides
    row = audio.row(1)
    assert row.vector.shape == (1, D) and row.queries.shape == (1, S, D)
    torch.testing.assert_close(row.time_attention, audio.time_attention[1:2], rtol=0, atol=0)
    assert image.row(0).intra_map.shape == (1, image.intra_map.shape[1]) and image.row(0).grid == image.grid
