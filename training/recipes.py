"""One recipe per method: what training does differently for JSA, EZ-VSL and the alignment baseline.

A recipe names its model class (`model_class`, from jsa_retrieval.models.MODELS, whose `model_name` is the
method's name) and its objective (`objective`, training/objectives.py), and says how a step sees a clip (views,
audio window) and what is kept between steps and epochs (the alignment baseline's embedding banks and conceptual
partners). `trainer.train()` is set-up plus an epoch loop over a recipe, so a new method is a model class and a
recipe here (open_clip keeps one task object per method the same way; docs/house.md, "Add a method"). A recipe
object holds one training run's state: make a fresh one per run with `make_recipe`.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jsa_retrieval.config import ABLATIONS, Ablation, JSARConfig
from jsa_retrieval.distributed import all_reduce_sum_
from jsa_retrieval.models import MODEL_NAMES, AlignmentModel, EZVSLModel, JSAModel

from .objectives import alignment_objective, ezvsl_objective, jsa_objective

Terms = dict[str, torch.Tensor]


class Recipe(ABC):
    """A method's training: its model class, its objective, its data views, and its hooks around steps and epochs."""

    model_class: type[nn.Module]  # the method's model; its `model_name` is the recipe's key in RECIPES
    objective: Callable[..., Terms]  # the method's loss: the model's forward output (per view) in, named terms out
    views: int = 1  # image-audio views of a clip per item (stacked into one forward pass)
    audio_shift: float | None = None  # ClipDataset's audio window jitter (None: the centred window)
    ablations: tuple[Ablation, ...] = ()  # the parts of the method an ablation can switch off

    def __init__(self, config: JSARConfig) -> None:
        self.config = config

    def begin_epoch(self, num_items: int, epoch_seed: int) -> np.ndarray | None:
        """Before the epoch's dataset is made: (num_items, 2) partner rows (image, audio) for each item's extra
        view, or None when the method has none."""
        return None

    @abstractmethod
    def loss_terms(self, output: Any, views: int, epoch_progress: float) -> tuple[Terms, Any]:
        """Named loss terms (with 'total') of one forward pass over `views` stacked views, and the output of
        the first view. `epoch_progress` is the epochs done so far, as a float."""

    def after_step(self, batch: dict, output: Any) -> None:
        """After the optimiser step, with the batch and the first view's output."""

    def end_epoch(self) -> None:
        """After the epoch's last step, on every rank."""

    def state_dict(self) -> dict[str, Any]:
        """What the recipe keeps between epochs, saved in every checkpoint so a resumed run continues it (tensors
        and plain containers only: checkpoints load with weights_only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s output when resuming."""


class JSARecipe(Recipe):
    """JSA (Eq. 11): one view, the centred audio window; the ablation switches of Tables 5-6."""

    model_class = JSAModel
    objective = staticmethod(jsa_objective)
    ablations = ABLATIONS

    def loss_terms(self, output: Any, views: int, epoch_progress: float) -> tuple[Terms, Any]:
        return self.objective(output, self.config.train, gate_weight(self.config, epoch_progress)), output


class EZVSLRecipe(Recipe):
    """EZ-VSL: one view, the centred audio window, multiple-instance InfoNCE."""

    model_class = EZVSLModel
    objective = staticmethod(ezvsl_objective)

    def loss_terms(self, output: Any, views: int, epoch_progress: float) -> tuple[Terms, Any]:
        return self.objective(output, self.config.train), output


class AlignmentRecipe(Recipe):
    """Senocak et al. (ICCV 2023): two augmented views (random crops, a wide audio time shift) plus a conceptual
    positive drawn from the previous epoch's embeddings, kept in per-item banks."""

    model_class = AlignmentModel
    objective = staticmethod(alignment_objective)
    views = 2
    audio_shift = math.inf

    def __init__(self, config: JSARConfig) -> None:
        super().__init__(config)
        self.banks: dict[str, torch.Tensor] | None = None

    def begin_epoch(self, num_items: int, epoch_seed: int) -> np.ndarray | None:
        partners = None
        if self.banks is not None:
            partners = conceptual_partners(self.banks["image"], self.banks["audio"],
                                           self.config.train.alignment_neighbors,
                                           torch.Generator().manual_seed(epoch_seed))
        dim = self.config.model.projection_dim
        self.banks = {"image": torch.zeros(num_items, dim), "audio": torch.zeros(num_items, dim)}
        return partners

    def loss_terms(self, output: Any, views: int, epoch_progress: float) -> tuple[Terms, Any]:
        split = split_views(output, views)
        return self.objective(split, self.config.train), split[0]

    def after_step(self, batch: dict, output: Any) -> None:
        self.banks["image"][batch["index"]] = output.image_projection.detach().float().cpu()
        self.banks["audio"][batch["index"]] = output.audio_projection.detach().float().cpu()

    def end_epoch(self) -> None:
        for bank in self.banks.values():  # each rank filled its own items; the others are zero
            all_reduce_sum_(bank)

    def state_dict(self) -> dict[str, Any]:
        """The last epoch's embedding banks: the next epoch's conceptual partners are drawn from them."""
        return {} if self.banks is None else {"banks": {name: bank.clone() for name, bank in self.banks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "banks" in state:
            self.banks = {name: bank.clone() for name, bank in state["banks"].items()}


RECIPES: dict[str, type[Recipe]] = {recipe.model_class.model_name: recipe
                                     for recipe in (JSARecipe, EZVSLRecipe, AlignmentRecipe)}
"""One recipe per method of jsa_retrieval.models.MODELS, keyed by its model's name (tests/test_recipes.py)."""


def make_recipe(model_name: str, config: JSARConfig) -> Recipe:
    """A fresh recipe (its own state) for one training run of `model_name`."""
    if model_name not in RECIPES:
        raise ValueError(f"unknown model {model_name!r}; choose one of {MODEL_NAMES}")
    return RECIPES[model_name](config)


def gate_weight(config: JSARConfig, epoch_progress: float) -> float:
    """How far the audio-gated matching target is ramped in (0 -> 1 over train.gate_ramp_epochs), given the
    epochs done so far as a float."""
    ramp = config.train.gate_ramp_epochs
    return 1.0 if ramp <= 0 else min(1.0, epoch_progress / ramp)


def split_views(output: Any, views: int) -> list:
    """Split a batch-first output dataclass of `views` stacked views into one per view."""
    fields = {name: value.chunk(views) for name, value in vars(output).items() if isinstance(value, torch.Tensor)}
    return [type(output)(**{name: chunks[v] for name, chunks in fields.items()}) for v in range(views)]


def conceptual_partners(image_bank: torch.Tensor, audio_bank: torch.Tensor, top_k: int,
                        generator: torch.Generator) -> np.ndarray:
    """(N, 2): for each clip, a random one of its top-k image neighbours and of its top-k audio neighbours
    (the alignment baseline's conceptually similar positives, from the previous epoch's embeddings)."""
    partners = []
    for bank in (image_bank, audio_bank):
        bank = F.normalize(bank, dim=1)
        chosen = torch.empty(len(bank), dtype=torch.long)
        for start in range(0, len(bank), 4096):
            similarity = bank[start:start + 4096] @ bank.T
            similarity[torch.arange(similarity.shape[0]), torch.arange(start, start + similarity.shape[0])] = -2
            neighbours = similarity.topk(min(top_k, len(bank) - 1), dim=1).indices
            pick = torch.randint(0, neighbours.shape[1], (len(neighbours),), generator=generator)
            chosen[start:start + len(neighbours)] = neighbours[torch.arange(len(neighbours)), pick]
        partners.append(chosen)
    return torch.stack(partners, dim=1).numpy()
