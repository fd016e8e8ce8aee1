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
from .false_negatives import reciprocal_false_negatives
from .losses import alignment_loss, attention_matching, ezvsl_loss, info_nce, slot_divergence, slot_reconstruction

if TYPE_CHECKING:
    from jsa_retrieval.models import AlignmentForward, EZVSLForward, JSAForward


def jsa_objective(out: JSAForward, cfg: TrainConfig) -> dict[str, Tensor]:
    """Eq. 11: L_ctr + lambda_match L_match + lambda_div L_div + lambda_recon L_recon, with the predicted false
    negatives of Eq. 12-13 left out of L_ctr (Eq. 7).

    A term switched off in `cfg` (use_match, use_div, use_recon) is reported as 0 and left out of the total;
    with use_false_negatives off no pair is excluded. Keys: 'ctr', 'match', 'div', 'recon', 'total', and
    'false_negatives' (number of excluded pairs in this rank's rows, a float tensor, for logging).
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
    terms = {
        "ctr": info_nce(out.image_target, out.audio_target, cfg.tau, false_negatives,
                        image_all=image_all, audio_all=audio_all, offset=offset),
        "match": attention_matching(out.ca_av, out.ia_vv, out.ca_va, out.ia_aa) if cfg.use_match else zero,
        "div": slot_divergence(out.image_target, out.image_off_target, out.audio_target,
                               out.audio_off_target) if cfg.use_div else zero,
        "recon": slot_reconstruction(out.image_features, out.image_reconstruction, out.audio_features,
                                     out.audio_reconstruction) if cfg.use_recon else zero,
    }
    terms["total"] = (terms["ctr"] + cfg.lambda_match * terms["match"] + cfg.lambda_div * terms["div"]
                      + cfg.lambda_recon * terms["recon"])
    terms["false_negatives"] = zero if false_negatives is None else false_negatives.sum().float()
    return terms


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
