"""Training objectives: a model's forward output and the TrainConfig in, named loss terms and their total out.

Contrastive terms and false-negative mining run over the global batch (all ranks, `gather_with_grad`): the rows
are this rank's items, the columns every rank's, and the local rows sit at offset rank * B among them. Under
DDP, averaging the ranks' gradients then averages the per-rank losses. The other terms are per-item means over the
local batch. Every objective returns a dict holding 'total' (the loss to minimise) beside its named terms, which
stay attached to the graph: detach them (or call .item()) to log.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from jsa_retrieval.config import TrainConfig

from jsa_retrieval.distributed import gather_with_grad, rank
from jsa_retrieval.slot_attention import slot_softmax
from .false_negatives import reciprocal_false_negatives
from .losses import (
    alignment_loss, attention_matching, audio_gated_target, ezvsl_loss, info_nce, off_target_mass, slot_divergence,
    slot_reconstruction,
)

if TYPE_CHECKING:
    from jsa_retrieval.models import AlignmentForward, EZVSLForward, JSAForward


def jsa_objective(out: JSAForward, cfg: TrainConfig, gate_weight: float = 1.0) -> dict[str, Tensor]:
    """Eq. 11: L_ctr + lambda_match L_match + lambda_div L_div + lambda_recon L_recon, with the predicted false
    negatives of Eq. 12-13 left out of L_ctr (Eq. 7).

    A term switched off in `cfg` (use_match, use_div, use_recon) is reported as 0 and left out of the total;
    with use_false_negatives off no pair is excluded. Keys: 'ctr', 'match', 'div', 'recon', 'total', and
    'false_negatives' (number of excluded pairs in this rank's rows, a float tensor, for logging).

    Beyond the paper, with a location head (out.location_keys set): key 'loc', its multiple-instance InfoNCE
    (x lambda_location); cfg.match_target 'audio_gated' replaces Eq. 8's teacher ia^{v,v} by
    (1 - gate_weight) ia + gate_weight audio_gated_target(ia, c) (the trainer ramps gate_weight from 0 to 1);
    lambda_off_target > 0 adds key 'off_target', a mismatched sound's target-slot mass on the image's objects.
    """
    local_size = out.image_target.shape[0]
    offset = rank() * local_size
    image_all = gather_with_grad(out.image_target)
    audio_all = gather_with_grad(out.audio_target)
    zero = torch.zeros((), device=out.image_target.device)

    false_negatives = None
    if cfg.use_false_negatives:
        false_negatives = reciprocal_false_negatives(image_all, audio_all, cfg.reciprocal_k)[
            offset:offset + local_size]
    match_teacher = out.ia_vv
    with_head = out.location_keys is not None
    if with_head and cfg.match_target == "audio_gated" and gate_weight > 0:
        location = (out.location_keys @ out.location_query.unsqueeze(-1)).squeeze(-1).detach()  # c (B, hw)
        gated = audio_gated_target(out.ia_vv, location, cfg.gate_margin, cfg.gate_temperature)
        match_teacher = (1 - gate_weight) * out.ia_vv.detach() + gate_weight * gated
    terms = {
        "ctr": info_nce(out.image_target, out.audio_target, cfg.tau, false_negatives,
                        image_all=image_all, audio_all=audio_all, offset=offset),
        "match": attention_matching(out.ca_av, match_teacher, out.ca_va, out.ia_aa) if cfg.use_match else zero,
        "div": slot_divergence(out.image_target, out.image_off_target, out.audio_target,
                               out.audio_off_target) if cfg.use_div else zero,
        "recon": slot_reconstruction(out.image_features, out.image_reconstruction, out.audio_features,
                                     out.audio_reconstruction) if cfg.use_recon else zero,
    }
    terms["total"] = (terms["ctr"] + cfg.lambda_match * terms["match"] + cfg.lambda_div * terms["div"]
                      + cfg.lambda_recon * terms["recon"])
    if with_head:  # beyond the paper: the location head's multiple-instance InfoNCE
        terms["loc"] = ezvsl_loss(out.location_keys, out.location_query, cfg.tau,
                                  image_features_all=gather_with_grad(out.location_keys),
                                  audio_vector_all=gather_with_grad(out.location_query), offset=offset)
        terms["total"] = terms["total"] + cfg.lambda_location * terms["loc"]
    if cfg.lambda_off_target > 0:  # beyond the paper: negatives for the off-target slot
        terms["off_target"] = _off_target_term(out, false_negatives, offset)
        terms["total"] = terms["total"] + cfg.lambda_off_target * terms["off_target"]
    terms["false_negatives"] = zero if false_negatives is None else false_negatives.sum().float()
    return terms


def _off_target_term(out: JSAForward, false_negatives: Tensor | None, offset: int) -> Tensor:
    """off_target_mass for each image paired with a mismatched sound of the local batch: a random other row,
    never a predicted false negative (k-reciprocal set) when mining is on."""
    batch = out.image_keys.shape[0]
    scores = torch.rand(batch, batch, device=out.image_keys.device)
    scores.fill_diagonal_(-1.0)
    if false_negatives is not None:
        scores = scores.masked_fill(false_negatives[:, offset:offset + batch], -1.0)
    partner = scores.argmax(dim=1)  # (B,) a mismatched sound per image
    probability = slot_softmax(out.audio_queries[partner], out.image_keys)[..., 0]  # first target slot's share
    return off_target_mass(probability, out.ia_vv)


def ezvsl_objective(out: EZVSLForward, cfg: TrainConfig) -> dict[str, Tensor]:
    """EZ-VSL: multiple-instance InfoNCE over the global batch. Keys: 'ctr', 'total' (the same tensor)."""
    local_size = out.audio_vector.shape[0]
    loss = ezvsl_loss(out.image_features, out.audio_vector, cfg.tau,
                      image_features_all=gather_with_grad(out.image_features),
                      audio_vector_all=gather_with_grad(out.audio_vector), offset=rank() * local_size)
    return {"ctr": loss, "total": loss}


def alignment_objective(outs: Sequence[AlignmentForward], cfg: TrainConfig) -> dict[str, Tensor]:
    """Alignment (ICCV 2023, Eq. 3) over every image view x audio view pair of `outs`, one forward output per view
    (e.g. original, augmented, conceptual positive); audio columns from the global batch.
    Keys: 'ctr', 'total' (the same tensor).
    """
    local_size = outs[0].audio_vector.shape[0]
    image_views = [(out.image_features, out.image_projection) for out in outs]
    audio_views = [(gather_with_grad(out.audio_vector), gather_with_grad(out.audio_projection)) for out in outs]
    loss = alignment_loss(image_views, audio_views, cfg.tau, offset=rank() * local_size)
    return {"ctr": loss, "total": loss}
