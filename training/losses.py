"""Loss functions of JSA (CVPR 2025, Sec. 3.3, Eq. 7-10) and of the two baselines it is compared with:
EZ-VSL (multiple-instance InfoNCE) and Alignment (ICCV 2023, Eq. 1-3).

Pure functions on tensors: no I/O, no model. Each contrastive loss takes its rows from the local batch and may
take its columns from a larger batch (the global batch all-gathered across ranks): pass the column tensors as
`*_all` (or, for `alignment_loss`, as the audio views) and the position of the local batch among the columns as
`offset`; the positive of local row i is column `offset + i`. Without them the columns are the local batch.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from jsa_retrieval.models import relative_height


def info_nce(image_target: Tensor, audio_target: Tensor, tau: float, false_negatives: Tensor | None = None, *,
             image_all: Tensor | None = None, audio_all: Tensor | None = None, offset: int = 0) -> Tensor:
    """Eq. 7: symmetric InfoNCE between image and audio target slots, s(x, y) = exp(cos(x, y) / tau).

    As the paper writes it, the two directions are summed and the sum is averaged over the rows:
    -(1/B) sum_i [log p(a_i | v_i) + log p(v_i | a_i)].

    image_target, audio_target: (B, d) local rows (any norm; cosine is taken here).
    image_all, audio_all: (N, d) columns (default: the local batch, N = B).
    false_negatives: (B, N) bool, True where column j is a predicted false negative of row i (Eq. 12-13); those
        pairs leave both denominators ("excluded from contrastive learning"). The positive is never excluded.
    Returns a scalar.
    """
    image_all = image_target if image_all is None else image_all
    audio_all = audio_target if audio_all is None else audio_all
    image_to_audio = _cosine_matrix(image_target, audio_all) / tau  # [i, j] = cos(p_i^v, p_j^a) / tau
    audio_to_image = _cosine_matrix(audio_target, image_all) / tau  # [i, j] = cos(p_j^v, p_i^a) / tau
    return (_row_nce(image_to_audio, offset, false_negatives)
            + _row_nce(audio_to_image, offset, false_negatives)).mean()


def attention_matching(ca_av: Tensor, ia_vv: Tensor, ca_va: Tensor, ia_aa: Tensor) -> Tensor:
    """Eq. 8: pull each cross-modal attention towards the intra-modal one, with stop-gradient on the latter.

    ca_av, ia_vv: (B, hw) target columns of the audio-query / image-query attention over image keys.
    ca_va, ia_aa: (B, t) target columns of the image-query / audio-query attention over audio keys.
    Eq. 8 writes a squared L2 norm; we take the mean of the squared difference over tokens (then over the batch),
    as the authors' release does (nn.MSELoss). That is the scale lambda_match = 100 was tuned for; a sum over
    tokens would weigh the image term hw (= 49) times and the audio term t (= 16) times more.
    Returns a scalar.
    """
    return F.mse_loss(ca_av, ia_vv.detach()) + F.mse_loss(ca_va, ia_aa.detach())


def audio_gated_target(ia_vv: Tensor, location: Tensor, margin: float, temperature: float) -> Tensor:
    """Sound-conditioned teacher for ca^{a,v} (beyond the paper): t = ia * g / sum(ia * g), no gradient.

    ia_vv: (B, hw) the image target slot's attention (Eq. 8's teacher); location: (B, hw) the location head's
    cosine c between each location and the sound. g = sigmoid((N_floor(c) - margin) / temperature) with N_floor
    the per-sample min-max that fades to flat below a range floor (models.relative_height), so the gate is
    scale-free where c has contrast. Where c is flat (one object, or nothing to choose) g is flat and t = ia: Eq. 8
    unchanged; a near-flat c moves t only in proportion to its range. Where the picture holds a silent object that
    c does not mark, t drops it. Returns (B, hw), each row summing to one.
    """
    with torch.no_grad():
        gate = torch.sigmoid((relative_height(location) - margin) / temperature)  # flat c, flat gate
        weighted = ia_vv.detach() * gate
        return weighted / weighted.sum(dim=1, keepdim=True).clamp_min(1e-12)


def off_target_mass(target_probability: Tensor, objects: Tensor) -> Tensor:
    """Negatives for the off-target slot (beyond the paper, after SLAVC / EZ-VSL's negatives): a sound that does
    not belong to a picture must leave that picture's objects to its off-target slot.

    target_probability: (B, hw) the target slot's share of the slot softmax (Eq. 3, before Eq. 4) when a
    mismatched sound's query meets the image keys; objects: (B, hw) where the image's objects are (ia^{v,v},
    no gradient). Returns the mean over the batch of sum_x objects(x) * p(x) / sum_x objects(x), in [0, 1].
    """
    weights = objects.detach()
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return (weights * target_probability).sum(dim=1).mean()


def slot_divergence(image_target: Tensor, image_off_target: Tensor, audio_target: Tensor,
                    audio_off_target: Tensor) -> Tensor:
    """Eq. 9: max(0, cos(p^v, r^v)) + max(0, cos(p^a, r^a)), averaged over the batch.

    All inputs (B, d). Zero once target and off-target slots are orthogonal or opposed. Returns a scalar.
    """
    image_term = F.cosine_similarity(image_target, image_off_target, dim=-1).clamp_min(0)
    audio_term = F.cosine_similarity(audio_target, audio_off_target, dim=-1).clamp_min(0)
    return (image_term + audio_term).mean()


def slot_reconstruction(image_features: Tensor, image_reconstruction: Tensor, audio_features: Tensor,
                        audio_reconstruction: Tensor) -> Tensor:
    """Eq. 10: reconstruct the encoder features from the slots, ||v - g_v(.)||^2 + ||a - g_a(.)||^2.

    image_features, image_reconstruction: (B, hw, c); audio_features, audio_reconstruction: (B, t, c).
    Normalisation: mean squared error over all elements of each modality, the two modalities summed (the
    authors' release; lambda_recon = 0.1 goes with it). The features are the target and get no gradient from this
    loss (stop-gradient, as in the release): joint slot attention layer-normalises its input, so otherwise the
    encoders could lower the loss just by shrinking their features.
    Returns a scalar.
    """
    return (F.mse_loss(image_reconstruction, image_features.detach())
            + F.mse_loss(audio_reconstruction, audio_features.detach()))


def ezvsl_loss(image_features: Tensor, audio_vector: Tensor, tau: float, *, image_features_all: Tensor | None = None,
               audio_vector_all: Tensor | None = None, offset: int = 0) -> Tensor:
    """EZ-VSL multiple-instance InfoNCE: an image matches a sound through its best-matching location.

    sim[i, j] = max_xy cos(v_i^xy, a_j) / tau; cross-entropy in both directions, summed (as in EZ-VSL's release)
    and averaged over the rows.
    image_features: (B, hw, d) local rows; audio_vector: (B, d) local rows.
    image_features_all: (N, hw, d), audio_vector_all: (N, d) columns (default: the local batch).
    Returns a scalar.
    """
    image_features_all = image_features if image_features_all is None else image_features_all
    audio_vector_all = audio_vector if audio_vector_all is None else audio_vector_all
    image_to_audio = _max_location_cosine(image_features, audio_vector_all) / tau  # (B, N)
    audio_to_image = _max_location_cosine(image_features_all, audio_vector).T / tau  # (B, N): [i, j] uses v_j, a_i
    return (_row_nce(image_to_audio, offset) + _row_nce(audio_to_image, offset)).mean()


def alignment_loss(image_views: Sequence[tuple[Tensor, Tensor]], audio_views: Sequence[tuple[Tensor, Tensor]],
                   tau: float, *, offset: int = 0) -> Tensor:
    """Alignment (ICCV 2023) Eq. 3: InfoNCE with s_L (Eq. 1) plus InfoNCE with s_A (Eq. 2) for every pair of an
    image view and an audio view (original, augmented, conceptual positive).

    image_views: [(features (B, hw, d), projection (B, p))] local rows, one per image view.
    audio_views: [(vector (N, d), projection (N, p))] columns, one per audio view: the local batch (N = B) or the
        global batch, with the local rows at `offset`.
    s_L(v, a) is the mean over locations of cos(v^xy, a) (Eq. 1, no mask); s_A is the cosine of the projections
    (Eq. 2). Eq. 3 contrasts image -> audio only (the sum in its denominators runs over a_j), and so does this
    function. The per-pair loss is averaged over the rows and then over the |V| x |A| pairs (Eq. 3 sums over the
    pairs; the mean keeps the scale independent of the number of views).
    Returns a scalar.
    """
    pair_losses = []
    for image_features, image_projection in image_views:
        for audio_vector, audio_projection in audio_views:
            localization = _localization_similarity(image_features, audio_vector) / tau  # s_L, Eq. 1
            alignment = _cosine_matrix(image_projection, audio_projection) / tau  # s_A, Eq. 2
            pair_losses.append((_row_nce(localization, offset) + _row_nce(alignment, offset)).mean())
    return torch.stack(pair_losses).mean()


def _row_nce(logits: Tensor, offset: int, excluded: Tensor | None = None) -> Tensor:
    """-log softmax(logits)[i, offset + i] per row, (B, N) -> (B,), with excluded entries out of the denominator."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    positives = rows + offset
    if excluded is not None:
        if excluded.shape != logits.shape:
            raise ValueError(f"false-negative mask {tuple(excluded.shape)} does not match logits {tuple(logits.shape)}")
        excluded = excluded.clone()
        excluded[rows, positives] = False  # the positive pair always stays
        logits = logits.masked_fill(excluded, float("-inf"))
    return F.cross_entropy(logits, positives, reduction="none")


def _cosine_matrix(rows: Tensor, columns: Tensor) -> Tensor:
    """(B, d), (N, d) -> (B, N) cosine similarities."""
    return F.normalize(rows, dim=-1) @ F.normalize(columns, dim=-1).T


def _max_location_cosine(image_features: Tensor, audio: Tensor) -> Tensor:
    """(M, hw, d), (N, d) -> (M, N): max over locations of cos(v_m^xy, a_n)."""
    per_location = torch.einsum("mld,nd->mnl", F.normalize(image_features, dim=-1), F.normalize(audio, dim=-1))
    return per_location.amax(dim=-1)


def _localization_similarity(image_features: Tensor, audio: Tensor) -> Tensor:
    """(B, hw, d), (N, d) -> (B, N): s_L of Eq. 1, the mean over locations of cos(v^xy, a) (M = all locations)."""
    return F.normalize(image_features, dim=-1).mean(dim=1) @ F.normalize(audio, dim=-1).T
