"""Losses (JSA Eq. 7-10, EZ-VSL, Alignment Eq. 1-3), objectives and the global-batch gather, checked against hand
computations on tiny tensors."""
from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from jsa_retrieval.config import TrainConfig
from jsa_retrieval.distributed import (cleanup_distributed, gather_with_grad, is_distributed, rank, setup_distributed,
                                  world_size)
from training.false_negatives import reciprocal_false_negatives
from training.losses import (alignment_loss, attention_matching, ezvsl_loss, info_nce, slot_divergence,
                             slot_reconstruction)
from training.objectives import alignment_objective, ezvsl_objective, jsa_objective

# ---------------------------------------------------------------- plain-math references


def cosine(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


def row_nll(similarities: list[list[float]], tau: float, row: int, excluded: set = frozenset()) -> float:
    """-log exp(S[i,i]/tau) / sum_j exp(S[i,j]/tau) over the kept columns j."""
    kept = [j for j in range(len(similarities[row])) if j == row or (row, j) not in excluded]
    return -similarities[row][row] / tau + math.log(sum(math.exp(similarities[row][j] / tau) for j in kept))


def symmetric_nce(similarities: list[list[float]], tau: float, excluded: set = frozenset()) -> float:
    """Eq. 7 by hand: mean over i of the image->audio and audio->image terms, summed."""
    transposed = [list(column) for column in zip(*similarities)]
    size = len(similarities)
    return sum(row_nll(similarities, tau, i, excluded) + row_nll(transposed, tau, i, excluded)
               for i in range(size)) / size


def cosine_matrix(rows: list[list[float]], columns: list[list[float]]) -> list[list[float]]:
    return [[cosine(r, c) for c in columns] for r in rows]


IMAGE = [[1.0, 0.0, 0.0], [0.5, 2.0, 0.0], [1.0, 1.0, 1.0]]
AUDIO = [[2.0, 0.3, 0.0], [0.0, 1.0, -0.5], [0.2, 0.4, 3.0]]

# ---------------------------------------------------------------- InfoNCE (Eq. 7, 12-13)


def test_info_nce_on_orthonormal_pairs_has_closed_form():
    tau = 0.5
    loss = info_nce(torch.eye(2), torch.eye(2), tau)
    assert loss.item() == pytest.approx(2 * math.log(1 + math.exp(-1 / tau)), rel=1e-5)


def test_info_nce_matches_hand_computation_with_cosines():
    tau = 0.5
    expected = symmetric_nce(cosine_matrix(IMAGE, AUDIO), tau)
    assert info_nce(torch.tensor(IMAGE), torch.tensor(AUDIO), tau).item() == pytest.approx(expected, rel=1e-5)


def test_info_nce_drops_predicted_false_negatives_from_denominators():
    tau = 0.5
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, 2] = mask[2, 0] = True
    expected = symmetric_nce(cosine_matrix(IMAGE, AUDIO), tau, excluded={(0, 2), (2, 0)})
    loss = info_nce(torch.tensor(IMAGE), torch.tensor(AUDIO), tau, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss.item() < info_nce(torch.tensor(IMAGE), torch.tensor(AUDIO), tau).item()


def test_info_nce_never_excludes_the_positive():
    everything = torch.ones(3, 3, dtype=torch.bool)
    loss = info_nce(torch.tensor(IMAGE), torch.tensor(AUDIO), 0.5, everything)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # only the positive is left in each denominator


def test_info_nce_is_symmetric_in_the_modalities():
    image, audio = torch.tensor(IMAGE), torch.tensor(AUDIO)
    mask = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    assert info_nce(image, audio, 0.2).item() == pytest.approx(info_nce(audio, image, 0.2).item(), rel=1e-6)
    assert info_nce(image, audio, 0.2, mask).item() == pytest.approx(info_nce(audio, image, 0.2, mask).item(),
                                                                     rel=1e-6)


def test_info_nce_local_rows_against_global_columns_average_to_the_full_loss():
    generator = torch.Generator().manual_seed(1)
    image, audio = torch.randn(6, 4, generator=generator), torch.randn(6, 4, generator=generator)
    mask = reciprocal_false_negatives(image + 2 * audio, audio, k=2)
    full = info_nce(image, audio, 0.3, mask)
    shards = [info_nce(image[s:s + 3], audio[s:s + 3], 0.3, mask[s:s + 3], image_all=image, audio_all=audio,
                       offset=s) for s in (0, 3)]
    assert torch.stack(shards).mean().item() == pytest.approx(full.item(), rel=1e-6)


def test_info_nce_gradients_stay_finite_with_excluded_pairs():
    image = torch.tensor(IMAGE, requires_grad=True)
    audio = torch.tensor(AUDIO, requires_grad=True)
    info_nce(image, audio, 0.03, torch.ones(3, 3, dtype=torch.bool) ^ torch.eye(3, dtype=torch.bool)).backward()
    assert torch.isfinite(image.grad).all() and torch.isfinite(audio.grad).all()


# ---------------------------------------------------------------- attention matching (Eq. 8)


def test_attention_matching_value_and_stop_gradient():
    ca_av = torch.tensor([[0.5, 0.5, 0.0]], requires_grad=True)
    ia_vv = torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True)
    ca_va = torch.tensor([[0.2, 0.8]], requires_grad=True)
    ia_aa = torch.tensor([[0.6, 0.4]], requires_grad=True)
    loss = attention_matching(ca_av, ia_vv, ca_va, ia_aa)
    expected = (0.25 + 0.25 + 0.0) / 3 + (0.16 + 0.16) / 2  # mean squared difference over tokens, per modality
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert ia_vv.grad is None and ia_aa.grad is None  # sg(ia)
    assert torch.allclose(ca_av.grad, 2 * (ca_av - ia_vv).detach() / 3)
    assert torch.allclose(ca_va.grad, 2 * (ca_va - ia_aa).detach() / 2)


def test_attention_matching_averages_over_the_batch():
    ca = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    ia = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    assert attention_matching(ca, ia, ia, ia).item() == pytest.approx((0.0 + 1.0) / 2, rel=1e-6)


# ---------------------------------------------------------------- slot divergence (Eq. 9)


def test_slot_divergence_is_zero_for_orthogonal_or_opposite_slots():
    target = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    orthogonal = torch.tensor([[0.0, 3.0], [1.0, 0.0]])
    assert slot_divergence(target, orthogonal, target, -target).item() == 0.0


def test_slot_divergence_is_the_cosine_for_aligned_slots():
    image_target, image_off = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])  # 45 degrees
    audio_target, audio_off = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.5]])  # same direction
    loss = slot_divergence(image_target, image_off, audio_target, audio_off)
    assert loss.item() == pytest.approx(math.sqrt(0.5) + 1.0, rel=1e-6)


def test_slot_divergence_averages_over_the_batch():
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    off_target = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # per item: cos 1, then 0 after the hinge
    assert slot_divergence(target, off_target, target, off_target).item() == pytest.approx(1.0, rel=1e-6)


# ---------------------------------------------------------------- slot reconstruction (Eq. 10)


def test_slot_reconstruction_is_summed_mean_squared_error_with_fixed_targets():
    image_features = torch.zeros(1, 2, 2, requires_grad=True)
    image_reconstruction = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    audio_features = torch.ones(1, 3, 1, requires_grad=True)
    audio_reconstruction = torch.tensor([[[1.0], [3.0], [1.0]]], requires_grad=True)
    loss = slot_reconstruction(image_features, image_reconstruction, audio_features, audio_reconstruction)
    assert loss.item() == pytest.approx(2 / 4 + 4 / 3, rel=1e-6)
    loss.backward()
    assert image_features.grad is None and audio_features.grad is None
    assert torch.allclose(image_reconstruction.grad, image_reconstruction.detach() / 2)


# ---------------------------------------------------------------- EZ-VSL


EZ_IMAGE = [[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [-1.0, 0.0]]]  # (B=2, hw=2, d=2), unit vectors
EZ_AUDIO = [[1.0, 0.0], [0.0, 1.0]]


def test_ezvsl_loss_uses_the_best_location():
    tau = 0.5
    # sim[i][j] = max over locations of <v_i^xy, a_j>
    similarities = [[max(sum(a * b for a, b in zip(loc, audio)) for loc in image) for audio in EZ_AUDIO]
                    for image in EZ_IMAGE]
    assert similarities == [[1.0, 1.0], [0.6, 0.8]]
    loss = ezvsl_loss(torch.tensor(EZ_IMAGE), torch.tensor(EZ_AUDIO), tau)
    assert loss.item() == pytest.approx(symmetric_nce(similarities, tau), rel=1e-5)


def test_ezvsl_loss_ignores_locations_below_the_max():
    image = torch.tensor(EZ_IMAGE)
    moved_below = image.clone()
    moved_below[1, 1] = torch.tensor([0.0, -1.0])  # still below the best location for both sounds
    moved_above = image.clone()
    moved_above[1, 1] = torch.tensor([0.0, 1.0])  # now the best location for sound 1
    audio = torch.tensor(EZ_AUDIO)
    base = ezvsl_loss(image, audio, 0.5).item()
    assert ezvsl_loss(moved_below, audio, 0.5).item() == pytest.approx(base, rel=1e-6)
    assert ezvsl_loss(moved_above, audio, 0.5).item() != pytest.approx(base, rel=1e-3)


# ---------------------------------------------------------------- Alignment (ICCV 2023, Eq. 1-3)


AL_FEATURES = [[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [1.0, 0.0]]]  # (B=2, hw=2, d=2)
AL_AUDIO = [[1.0, 0.0], [0.0, 1.0]]
AL_IMAGE_PROJECTION = [[1.0, 0.0], [0.0, 1.0]]
AL_AUDIO_PROJECTION = [[0.8, 0.6], [0.0, 1.0]]


def test_alignment_loss_with_one_view_is_localization_plus_projection_infonce():
    tau = 0.5
    s_l = [[sum(cosine(loc, audio) for loc in image) / len(image) for audio in AL_AUDIO] for image in AL_FEATURES]
    assert s_l[0] + s_l[1] == pytest.approx([0.5, 0.5, 0.8, 0.4])
    s_a = cosine_matrix(AL_IMAGE_PROJECTION, AL_AUDIO_PROJECTION)
    expected = sum(row_nll(s_l, tau, i) + row_nll(s_a, tau, i) for i in range(2)) / 2  # image -> audio, Eq. 3
    loss = alignment_loss([(torch.tensor(AL_FEATURES), torch.tensor(AL_IMAGE_PROJECTION))],
                          [(torch.tensor(AL_AUDIO), torch.tensor(AL_AUDIO_PROJECTION))], tau)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_alignment_loss_averages_over_image_view_audio_view_pairs():
    generator = torch.Generator().manual_seed(2)
    images = [(torch.randn(4, 3, 5, generator=generator), torch.randn(4, 6, generator=generator)) for _ in range(2)]
    audios = [(torch.randn(4, 5, generator=generator), torch.randn(4, 6, generator=generator)) for _ in range(3)]
    pairs = [alignment_loss([image], [audio], 0.2) for image in images for audio in audios]
    assert alignment_loss(images, audios, 0.2).item() == pytest.approx(torch.stack(pairs).mean().item(), rel=1e-6)
    assert alignment_loss(images[:1] * 2, audios[:1] * 2, 0.2).item() == pytest.approx(pairs[0].item(), rel=1e-6)


# ---------------------------------------------------------------- objectives


def clustered_forward(size: int = 9, clusters: int = 3, dim: int = 8, seed: int = 0) -> SimpleNamespace:
    """A JSAForward stand-in whose target slots form tight, orthogonal clusters of size // clusters items."""
    generator = torch.Generator().manual_seed(seed)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).requires_grad_()

    def attention(*shape: int) -> torch.Tensor:
        return torch.softmax(torch.randn(*shape, generator=generator), dim=-1).requires_grad_()

    centres = torch.eye(dim)[torch.arange(size) % clusters]
    return SimpleNamespace(
        image_target=(centres + 0.05 * torch.randn(size, dim, generator=generator)).requires_grad_(),
        audio_target=(centres + 0.05 * torch.randn(size, dim, generator=generator)).requires_grad_(),
        image_off_target=leaf(size, dim), audio_off_target=leaf(size, dim),
        ca_av=attention(size, 5), ia_vv=attention(size, 5), ca_va=attention(size, 4), ia_aa=attention(size, 4),
        image_features=leaf(size, 5, 6), image_reconstruction=leaf(size, 5, 6),
        audio_features=leaf(size, 4, 6), audio_reconstruction=leaf(size, 4, 6),
        location_keys=None, location_query=None,
    )


# 3 items per cluster: each item's 2 neighbours are its cluster mates; a mild tau keeps every term well above 0.
CONFIG = TrainConfig(reciprocal_k=2, tau=0.5)


def test_jsa_objective_total_is_the_weighted_sum_of_eq_11():
    terms = jsa_objective(clustered_forward(), CONFIG)
    assert set(terms) == {"ctr", "match", "div", "recon", "total", "false_negatives"}
    expected = (terms["ctr"] + CONFIG.lambda_match * terms["match"] + CONFIG.lambda_div * terms["div"]
                + CONFIG.lambda_recon * terms["recon"])
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(terms[name].item() > 0 for name in ("ctr", "match", "div", "recon"))


@pytest.mark.parametrize("switch, term, weight", [("use_match", "match", "lambda_match"),
                                                  ("use_div", "div", "lambda_div"),
                                                  ("use_recon", "recon", "lambda_recon")])
def test_jsa_objective_switches_terms_off(switch, term, weight):
    full = jsa_objective(clustered_forward(), CONFIG)
    ablated = jsa_objective(clustered_forward(), dataclasses.replace(CONFIG, **{switch: False}))
    assert ablated[term].item() == 0.0
    assert ablated["ctr"].item() == pytest.approx(full["ctr"].item(), rel=1e-6)
    lost = getattr(CONFIG, weight) * full[term].item()
    assert ablated["total"].item() == pytest.approx(full["total"].item() - lost, rel=1e-5)


def test_jsa_objective_excludes_reciprocal_false_negatives_only_when_asked():
    out = clustered_forward()
    mined = jsa_objective(out, CONFIG)
    assert mined["false_negatives"].item() == 9 * 2  # every item: its two cluster mates
    mask = reciprocal_false_negatives(out.image_target, out.audio_target, 2)
    assert mined["ctr"].item() == pytest.approx(info_nce(out.image_target, out.audio_target, CONFIG.tau,
                                                         mask).item(), rel=1e-6)
    plain = jsa_objective(out, dataclasses.replace(CONFIG, use_false_negatives=False))
    assert plain["false_negatives"].item() == 0.0
    assert plain["ctr"].item() == pytest.approx(info_nce(out.image_target, out.audio_target, CONFIG.tau).item(),
                                                rel=1e-6)
    assert mined["ctr"].item() < plain["ctr"].item()


def test_jsa_objective_gradients_are_the_weighted_terms_and_skip_stop_gradient_inputs():
    out = clustered_forward()  # 9 items, ca_av over 5 image tokens, reconstructions of 5 tokens x 6 features
    jsa_objective(out, CONFIG)["total"].backward()
    # lambda_match x d/dca of mean_b mean_x (ca - sg(ia))^2 = lambda_match x 2 (ca - ia) / (5 tokens x 9 items)
    torch.testing.assert_close(out.ca_av.grad, CONFIG.lambda_match * 2 * (out.ca_av - out.ia_vv).detach() / 45)
    # lambda_recon x d/dr of the mean over 9 x 5 x 6 squared errors against sg(features)
    torch.testing.assert_close(out.image_reconstruction.grad,
                               CONFIG.lambda_recon * 2 * (out.image_reconstruction - out.image_features).detach() / 270)
    assert out.ia_vv.grad is None and out.ia_aa.grad is None and out.image_features.grad is None
    # a small step against the target slots' gradient lowers the objective (ctr + div): the gradient points uphill
    def total_after_step(size: float) -> float:
        moved = clustered_forward()
        with torch.no_grad():
            moved.image_target -= size * out.image_target.grad
            moved.audio_target -= size * out.audio_target.grad
        return jsa_objective(moved, CONFIG)["total"].item()

    assert total_after_step(1e-2) < total_after_step(0.0) < total_after_step(-1e-2)


def test_ezvsl_and_alignment_objectives_wrap_their_losses():
    generator = torch.Generator().manual_seed(3)
    ezvsl = SimpleNamespace(image_features=torch.randn(4, 3, 5, generator=generator),
                            audio_vector=torch.randn(4, 5, generator=generator))
    terms = ezvsl_objective(ezvsl, CONFIG)
    assert terms["total"].item() == pytest.approx(
        ezvsl_loss(ezvsl.image_features, ezvsl.audio_vector, CONFIG.tau).item(), rel=1e-6)
    views = [SimpleNamespace(image_features=torch.randn(4, 3, 5, generator=generator),
                             audio_vector=torch.randn(4, 5, generator=generator),
                             image_projection=torch.randn(4, 6, generator=generator),
                             audio_projection=torch.randn(4, 6, generator=generator)) for _ in range(2)]
    expected = alignment_loss([(v.image_features, v.image_projection) for v in views],
                              [(v.audio_vector, v.audio_projection) for v in views], CONFIG.tau)
    assert alignment_objective(views, CONFIG)["total"].item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- global batch across processes


def test_gather_with_grad_is_the_identity_in_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup_distributed("cpu") == torch.device("cpu")
    tensor = torch.randn(3, 2)
    assert not is_distributed() and rank() == 0 and world_size() == 1
    assert gather_with_grad(tensor) is tensor


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _distributed_worker(process_rank: int, port: int, processes: int) -> None:
    """One rank of the 2-process test; an AssertionError here fails the test through mp.spawn."""
    torch.set_num_threads(1)
    whole = clustered_forward(size=12, clusters=4)  # built identically on every rank (fixed seed)
    reference = {name: value.item() for name, value in jsa_objective(whole, CONFIG).items()}  # before the group
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(processes),
                      RANK=str(process_rank), LOCAL_RANK=str(process_rank))  # as torchrun sets them
    try:
        assert setup_distributed("cpu") == torch.device("cpu")
        assert is_distributed() and rank() == process_rank and world_size() == processes

        local = (torch.arange(6.0).reshape(2, 3) + 10 * process_rank).requires_grad_()
        gathered = gather_with_grad(local)
        expected = torch.cat([torch.arange(6.0).reshape(2, 3) + 10 * r for r in range(processes)])
        assert torch.equal(gathered.detach(), expected)
        weights = torch.arange(float(gathered.numel())).reshape(gathered.shape)
        (gathered * weights).sum().backward()
        assert torch.equal(local.grad, weights[2 * process_rank:2 * process_rank + 2])  # local shard only

        # Per-rank objectives over the global batch average to the single-process objective on the whole batch.
        rows = slice(6 * process_rank, 6 * process_rank + 6)
        shard = SimpleNamespace(**{name: None if value is None else value.detach()[rows]
                                   for name, value in vars(whole).items()})
        terms = jsa_objective(shard, CONFIG)
        for name in ("ctr", "match", "div", "recon", "total"):
            mean = terms[name].detach().clone()
            dist.all_reduce(mean)
            assert mean.item() / processes == pytest.approx(reference[name], rel=1e-5), name
        count = terms["false_negatives"].clone()
        dist.all_reduce(count)
        assert count.item() == reference["false_negatives"] == 12 * 2
    finally:
        cleanup_distributed()
    assert not is_distributed()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
def test_gather_and_global_objective_across_two_cpu_processes():
    context = mp.spawn(_distributed_worker, args=(_free_port(), 2), nprocs=2, join=False)
    deadline = time.monotonic() + 60
    while not context.join(timeout=0.5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process gather test did not finish within 60 s")
