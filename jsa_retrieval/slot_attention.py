"""Joint slot attention (paper Sec. 3.2, Eq. 1-6): decompose image or audio tokens into target/off-target slots.

Both modalities start from the same learnable initial slots S_0, which is what lets the target slot learn joint
audio-visual features. The projections, GRU, MLP and mask token are either one set for both modalities
(`share_modality_weights=True`, 3.42 M parameters at d = 512) or one set per modality (False, what the
supplement's count of 6.84 M JSA parameters corresponds to: two such sets with a 2d-wide MLP). jsar's configs
(ModelConfig.share_modality_weights) default to one set per modality, as the paper's count implies.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MODALITIES = ("image", "audio")


def slot_softmax(queries: torch.Tensor, keys: torch.Tensor, logit_scale: float = 1.0) -> torch.Tensor:
    """Eq. 3: A = softmax over slots of K Q^T / sqrt(d). queries (B, S, d), keys (B, n, d) -> (B, n, S).

    Batch dimensions broadcast (one audio's queries against N images' keys), so rows of a 1-vs-N map are
    exactly the pairwise maps. `logit_scale` multiplies the logits (the JSA release's `--infer_sharpening`,
    used for maps at inference only; 1.0 is the paper's Eq. 3).
    """
    logits = keys @ queries.transpose(-1, -2) * (logit_scale / keys.shape[-1] ** 0.5)  # M (B, n, S)
    return logits.softmax(dim=-1)


def slot_attention_weights(queries: torch.Tensor, keys: torch.Tensor, eps: float = 1e-8,
                           logit_scale: float = 1.0) -> torch.Tensor:
    """Eq. 3-4: Â = A normalised over tokens, so each slot's column is a weighting of the n tokens.

    queries (B, S, d), keys (B, n, d) -> (B, n, S); columns sum to one over n. Used inside the slot loop and for
    the cross-/intra-modal attentions ca, ia (Sec. 3.3, 3.5).
    """
    attention = slot_softmax(queries, keys, logit_scale) + eps  # Eq. 3 (eps keeps empty slots finite)
    return attention / attention.sum(dim=-2, keepdim=True)  # Eq. 4


@dataclass
class SlotAttentionOutput:
    """slots S_N (B, S, d); queries Q_N = W^q(LN(S_{N-1})) (B, S, d); keys K (B, n, d);
    attention Â of the final iteration (B, n, S), each column summing to one over the n tokens."""

    slots: torch.Tensor
    queries: torch.Tensor
    keys: torch.Tensor
    attention: torch.Tensor


class _SlotBranch(nn.Module):
    """The weights one modality uses: input/slot/MLP LayerNorms, W^k, W^v, W^q, GRU, residual MLP, mask token."""

    def __init__(self, dim: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm_input = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_q = nn.Linear(dim, dim)
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.ReLU(inplace=True), nn.Linear(mlp_hidden, dim))
        self.mask_token = nn.Parameter(torch.randn(dim))


class JointSlotAttention(nn.Module):
    """One slot-attention module applied to each modality in turn: tokens (B, n, d) -> SlotAttentionOutput.

    `share_initial_slots=False` (Table 6 ablation) keeps a separate S_0 per modality: the image's is the shared
    S_0 and the audio's comes from a side stream, so every other weight starts as in the full model at one seed.
    In training mode round(mask_ratio * n) random tokens per sample are replaced by the learnable mask token.
    """

    def __init__(self, dim: int, num_slots: int = 2, iterations: int = 5, mask_ratio: float = 0.1,
                 share_initial_slots: bool = True, share_modality_weights: bool = True,
                 mlp_hidden: int | None = None, eps: float = 1e-8) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"slot attention needs at least one iteration, got {iterations}")
        self.dim, self.num_slots, self.iterations = dim, num_slots, iterations
        self.mask_ratio, self.eps = mask_ratio, eps
        self.share_initial_slots, self.share_modality_weights = share_initial_slots, share_modality_weights
        initial = torch.randn(num_slots, dim)  # S_0: the same draw with or without sharing
        if share_initial_slots:
            self.initial_slots = nn.Parameter(initial)  # shared by both modalities
        else:
            self.initial_slots = nn.ParameterDict({"image": nn.Parameter(initial),
                                                   "audio": nn.Parameter(_side_draw(initial.shape))})
        hidden = mlp_hidden or 2 * dim
        names = ("shared",) if share_modality_weights else MODALITIES
        self.branches = nn.ModuleDict({name: _SlotBranch(dim, hidden) for name in names})

    def forward(self, tokens: torch.Tensor, modality: str) -> SlotAttentionOutput:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        branch = self.branches["shared" if self.share_modality_weights else modality]
        batch = tokens.shape[0]
        inputs = branch.norm_input(self._mask(tokens, branch.mask_token))
        keys, values = branch.to_k(inputs), branch.to_v(inputs)  # Eq. 1: K, V (B, n, d)
        slots = self._initial_slots(modality).expand(batch, -1, -1)  # S_0 (B, S, d)
        for _ in range(self.iterations):
            previous = slots
            queries = branch.to_q(branch.norm_slots(previous))  # Eq. 2: Q_n from S_{n-1}, W^q shared over n
            attention = slot_attention_weights(queries, keys, self.eps)  # Eq. 3-4: Â (B, n, S)
            updates = attention.transpose(1, 2) @ values  # Â^T V (B, S, d)
            slots = branch.gru(updates.reshape(-1, self.dim), previous.reshape(-1, self.dim))  # Eq. 5
            slots = slots.reshape(batch, self.num_slots, self.dim)
            slots = slots + branch.mlp(branch.norm_mlp(slots))  # Eq. 6: residual MLP
        return SlotAttentionOutput(slots=slots, queries=queries, keys=keys, attention=attention)

    def _initial_slots(self, modality: str) -> torch.Tensor:
        return self.initial_slots if self.share_initial_slots else self.initial_slots[modality]

    def _mask(self, tokens: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
        """Training only: replace round(mask_ratio * n) random tokens per sample with the mask token."""
        batch, length, _ = tokens.shape
        count = int(round(self.mask_ratio * length))
        if not self.training or count == 0:
            return tokens
        chosen = torch.rand(batch, length, device=tokens.device).argsort(dim=1)[:, :count]
        masked = torch.zeros(batch, length, dtype=torch.bool, device=tokens.device).scatter_(1, chosen, True)
        return torch.where(masked.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)


def _side_draw(shape: torch.Size) -> torch.Tensor:
    """The standard normal tensor the global generator would give next, drawn without moving it (an ablation's
    extra parameter must not shift the initial weights drawn after it)."""
    with torch.random.fork_rng(devices=[]):
        return torch.randn(shape)
