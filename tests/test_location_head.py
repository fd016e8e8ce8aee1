"""The location head's switches users set in a config: `location_head_stop_gradient` (the head reads sg(v)) and
`fusion_beta` (the exponent of the fused map N(ca) * N([c]+)^beta), checked on values."""
import pytest
import torch

from jsa_retrieval.models import create_model, fuse_maps

from conftest import tiny_config


def head_model(stop_gradient: bool, **model_settings):
    config = tiny_config()
    config.model.location_head, config.model.location_head_stop_gradient = True, stop_gradient
    for name, value in model_settings.items():
        setattr(config.model, name, value)
    torch.manual_seed(0)
    return create_model(config, "jsa")


def encoder_gradients_from_the_head_loss(model) -> tuple[list[torch.Tensor | None], torch.Tensor]:
    """Backpropagate a loss of the location keys alone; (the image encoder's parameter gradients, h_v's weight
    gradient)."""
    model.zero_grad(set_to_none=True)
    out = model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)),
                torch.randn(2, 1, 129, 101, generator=torch.Generator().manual_seed(2)))
    (out.location_keys * torch.linspace(-1, 1, out.location_keys.shape[-1])).sum().backward()
    return [p.grad for p in model.image_encoder.parameters() if p.requires_grad], model.location_head.image.weight.grad


def test_stop_gradient_leaves_the_image_encoder_without_gradient_from_the_head():
    encoder_grads, head_grad = encoder_gradients_from_the_head_loss(head_model(stop_gradient=True))
    assert encoder_grads and all(grad is None for grad in encoder_grads)
    assert head_grad is not None and head_grad.abs().sum() > 0  # the head itself still learns


def test_without_stop_gradient_the_head_loss_reaches_the_image_encoder():
    encoder_grads, _ = encoder_gradients_from_the_head_loss(head_model(stop_gradient=False))
    assert sum(grad.abs().sum().item() for grad in encoder_grads if grad is not None) > 0


def test_fuse_maps_raises_the_gate_to_beta_by_hand():
    cross = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])  # N(ca) = ca (already spans [0, 1])
    location = torch.tensor([[[0.8, 0.4], [-0.2, 0.2]]])  # [c]+ = 0.8, 0.4, 0, 0.2 -> N = 1, 0.5, 0, 0.25
    for beta, gate in ((2.0, [[1.0, 0.25], [0.0, 0.0625]]), (0.5, [[1.0, 0.5 ** 0.5], [0.0, 0.5]])):
        expected = torch.tensor([[0.0, 0.5], [1.0, 0.25]]) * torch.tensor(gate)
        torch.testing.assert_close(fuse_maps(cross, location, beta), expected.unsqueeze(0))


@pytest.mark.parametrize("beta", [0.5, 3.0])
def test_the_model_fuses_with_the_configured_beta(beta):
    model = head_model(stop_gradient=True, localization_map="fused", fusion_beta=beta).eval()
    with torch.no_grad():
        image = model.encode_image(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)))
        audio = model.encode_audio(torch.randn(2, 1, 129, 101, generator=torch.Generator().manual_seed(4)))
        cross, location = model.attention_map(audio, image), model.location_map(audio, image)
        fused = model.cross_map(audio, image)
    torch.testing.assert_close(fused, fuse_maps(cross, location, beta))
    assert not torch.allclose(fused, fuse_maps(cross, location, 1.0))  # beta is not ignored
