import math

import pytest
import torch

from jsa_retrieval.slot_attention import JointSlotAttention, slot_attention_weights, slot_softmax

DIM, SLOTS, TOKENS = 16, 2, 12


@pytest.fixture
def tokens() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(3, TOKENS, DIM)


def test_slot_softmax_sums_to_one_over_slots_for_every_token():
    torch.manual_seed(1)
    queries, keys = torch.randn(2, SLOTS, DIM), torch.randn(2, TOKENS, DIM)
    attention = slot_softmax(queries, keys)
    assert attention.shape == (2, TOKENS, SLOTS)
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(2, TOKENS))


def test_slot_attention_weights_match_eq3_eq4_by_hand():
    torch.manual_seed(2)
    queries, keys = torch.randn(1, SLOTS, DIM), torch.randn(1, TOKENS, DIM)
    logits = torch.tensor([[float(keys[0, i] @ queries[0, j]) / math.sqrt(DIM) for j in range(SLOTS)]
                           for i in range(TOKENS)])
    softmax = logits.exp() / logits.exp().sum(dim=1, keepdim=True)  # Eq. 3 over slots
    expected = softmax / softmax.sum(dim=0, keepdim=True)  # Eq. 4 over tokens
    weights = slot_attention_weights(queries, keys, eps=0.0)
    torch.testing.assert_close(weights[0], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(1, SLOTS))


def test_one_query_set_against_many_keys_equals_pairwise_rows():
    torch.manual_seed(3)
    queries, keys = torch.randn(1, SLOTS, DIM), torch.randn(4, TOKENS, DIM)
    broadcast = slot_attention_weights(queries, keys)
    for row in range(4):
        torch.testing.assert_close(broadcast[row], slot_attention_weights(queries, keys[row:row + 1])[0])


def test_output_shapes_and_final_attention_columns_sum_to_one(tokens):
    module = JointSlotAttention(DIM, SLOTS, iterations=3).eval()
    out = module(tokens, "image")
    assert out.slots.shape == (3, SLOTS, DIM) and out.queries.shape == (3, SLOTS, DIM)
    assert out.keys.shape == (3, TOKENS, DIM) and out.attention.shape == (3, TOKENS, SLOTS)
    torch.testing.assert_close(out.attention.sum(dim=1), torch.ones(3, SLOTS))
    # Â of the final iteration is Eq. 3-4 applied to the returned Q_N and K.
    torch.testing.assert_close(out.attention, slot_attention_weights(out.queries, out.keys))


def test_eval_mode_is_deterministic_and_training_mode_masks_tokens(tokens):
    module = JointSlotAttention(DIM, SLOTS, iterations=2, mask_ratio=0.5)
    module.eval()
    first, second = module(tokens, "audio"), module(tokens, "audio")
    torch.testing.assert_close(first.slots, second.slots, rtol=0, atol=0)
    module.train()
    torch.manual_seed(4)
    masked = module(tokens, "audio")
    assert not torch.allclose(masked.slots, first.slots)
    assert not torch.allclose(masked.keys, first.keys)


def test_training_without_mask_ratio_equals_eval(tokens):
    module = JointSlotAttention(DIM, SLOTS, iterations=2, mask_ratio=0.0)
    evaluated = module.eval()(tokens, "image").slots
    trained = module.train()(tokens, "image").slots
    torch.testing.assert_close(trained, evaluated)


def test_mask_replaces_rounded_ratio_of_tokens_per_sample_with_the_mask_token(tokens):
    module = JointSlotAttention(DIM, SLOTS, mask_ratio=0.25).train()
    masked = module._mask(tokens, module.branches["shared"].mask_token)
    replaced = (masked != tokens).any(dim=-1)
    assert replaced.sum(dim=1).tolist() == [3, 3, 3]  # round(0.25 * 12)
    torch.testing.assert_close(masked[replaced], module.branches["shared"].mask_token.expand(9, DIM))


def test_unshared_initial_slots_add_one_slot_set_of_parameters():
    shared = JointSlotAttention(DIM, SLOTS, share_initial_slots=True)
    separate = JointSlotAttention(DIM, SLOTS, share_initial_slots=False)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(separate) - count(shared) == SLOTS * DIM


def test_unshared_slots_ablation_starts_from_the_full_models_other_weights():
    """Table 6 compares a run with separate S_0 against the full model at the same seed: every weight but the
    audio's S_0 must start equal, and the draw after the module must be the same too."""
    torch.manual_seed(3)
    shared = JointSlotAttention(DIM, SLOTS, share_initial_slots=True)
    after_shared = torch.rand(4)
    torch.manual_seed(3)
    separate = JointSlotAttention(DIM, SLOTS, share_initial_slots=False)
    after_separate = torch.rand(4)
    torch.testing.assert_close(after_shared, after_separate, rtol=0, atol=0)
    torch.testing.assert_close(separate.initial_slots["image"], shared.initial_slots, rtol=0, atol=0)
    assert not torch.allclose(separate.initial_slots["audio"], shared.initial_slots)
    for name, value in shared.branches.state_dict().items():
        torch.testing.assert_close(separate.branches.state_dict()[name], value, rtol=0, atol=0)


def test_shared_module_treats_modalities_alike_only_when_everything_is_shared(tokens):
    torch.manual_seed(5)
    shared = JointSlotAttention(DIM, SLOTS).eval()
    torch.testing.assert_close(shared(tokens, "image").slots, shared(tokens, "audio").slots)
    torch.manual_seed(5)
    separate_slots = JointSlotAttention(DIM, SLOTS, share_initial_slots=False).eval()
    assert not torch.allclose(separate_slots(tokens, "image").slots, separate_slots(tokens, "audio").slots)


def test_unshared_modality_weights_double_the_branch_parameters():
    shared = JointSlotAttention(DIM, SLOTS, share_modality_weights=True)
    separate = JointSlotAttention(DIM, SLOTS, share_modality_weights=False)
    branch = sum(p.numel() for p in shared.branches["shared"].parameters())
    assert sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in shared.parameters()) == branch
    assert set(separate.branches) == {"image", "audio"}


def test_gradients_reach_initial_slots_and_mask_token(tokens):
    module = JointSlotAttention(DIM, SLOTS, iterations=2, mask_ratio=0.5).train()
    module(tokens, "image").slots.sum().backward()
    assert module.initial_slots.grad.abs().sum() > 0
    assert module.branches["shared"].mask_token.grad.abs().sum() > 0


def test_unknown_modality_is_rejected(tokens):
    with pytest.raises(ValueError, match="modality"):
        JointSlotAttention(DIM, SLOTS)(tokens, "text")
