"""The training loop: JSA and the two baselines through one plain loop, each method by its recipe (recipes.py).

Seeded per epoch (so `--resume` continues the same run), AdamW, optional gradient clipping, mixed precision on
CUDA, a frozen image trunk's output computed once per clip (`trunk_cache`),
DistributedDataParallel under torchrun (InfoNCE and false-negative mining see the global batch through
`gather_with_grad` inside the objectives), per-epoch validation on a held-out split, atomic checkpoints.
"""
from __future__ import annotations

import logging
import math
import random
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from jsa_retrieval import __version__
from jsa_retrieval.checkpoints import checkpoint_state, load_training_state, save_checkpoint
from jsa_retrieval.clips import Clip, read_dataset
from jsa_retrieval.config import JSARConfig, first_difference
from jsa_retrieval.dataset import CachedAudioFeatures, CachedImageFeatures, ClipDataset, FailureLog, make_loader
from jsa_retrieval.distributed import (all_reduce_sum_, cleanup_distributed, is_distributed, rank, setup_distributed,
                                       world_size)
from jsa_retrieval.models import create_model

from .audio_trunk_cache import cached_audio_features
from .recipes import Recipe, make_recipe
from .trunk_cache import cached_trunk_features
from .validation import selection_score, validate

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    best_path: Path
    last_path: Path
    history: list[dict] = field(default_factory=list)
    skipped: int = 0


def split_train_val(data_dir: Path, val_fraction: float = 0.1) -> tuple[list[Clip], list[Clip]]:
    """The `train` and `val` split lists when the dataset has them; otherwise every clip, with a stable
    hash of the id holding out `val_fraction` for validation."""
    try:
        return read_dataset(data_dir, split="train").clips, read_dataset(data_dir, split="val").clips
    except ValueError:
        clips = read_dataset(data_dir).clips
        held_out = [zlib.crc32(c.id.encode()) % 1000 < val_fraction * 1000 for c in clips]
        train = [c for c, out in zip(clips, held_out) if not out]
        val = [c for c, out in zip(clips, held_out) if out]
        return train, val or train[: max(1, len(train) // 10)]


def _forward_terms(model: nn.Module, batch: dict, recipe: Recipe, device: torch.device,
                   epoch_progress: float = 0.0) -> tuple[dict[str, torch.Tensor], object]:
    """Loss terms and the first view's model output for one batch. All views go through the model in one forward
    pass (one DDP forward per backward); the recipe splits them back."""
    views = 1 + sum(1 for key in batch if key.startswith("image_"))
    images = torch.cat([batch["image"]] + [batch[f"image_{v}"] for v in range(1, views)]).to(device)
    audio = torch.cat([batch["audio"]] + [batch[f"audio_{v}"] for v in range(1, views)]).to(device)
    return recipe.loss_terms(model(images, audio), views, epoch_progress)


@dataclass
class _Stepper:
    """AdamW with its linear warm-up, the AMP scaler (CUDA only) and gradient clipping: one optimiser step."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    use_amp: bool
    grad_clip: float | None

    @classmethod
    def for_model(cls, model: nn.Module, config: JSARConfig, device: torch.device) -> "_Stepper":
        train_cfg = config.train
        optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        warmup = max(1, train_cfg.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        use_amp = train_cfg.amp and device.type == "cuda"
        return cls(optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=use_amp), use_amp, train_cfg.grad_clip)

    def step(self, loss: torch.Tensor, model: nn.Module) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            for group in clip_groups(model):
                torch.nn.utils.clip_grad_norm_(group, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state.get("scaler", {}))
        self.scheduler.load_state_dict(state["scheduler"])


def clip_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """The parameter groups whose gradient norms are clipped each on its own: a location head (a probe on sg(v),
    beside JSA) apart from the rest, so that clipping the head's gradient never rescales JSA's and JSA trains
    exactly as it would without the head."""
    inner = getattr(model, "module", model)  # DDP wraps the model
    head = getattr(inner, "location_head", None)
    if head is None:
        return [list(model.parameters())]
    head_ids = {id(parameter) for parameter in head.parameters()}
    return [list(head.parameters()), [p for p in model.parameters() if id(p) not in head_ids]]


def train(data_dir: Path, config: JSARConfig, model_name: str = "jsa", out_dir: Path = Path("runs/jsa"),
          resume: bool = False, epochs: int | None = None, max_minutes: float | None = None,
          device: str | None = None, progress: bool = True, feature_cache: Path | None = None,
          on_epoch: Callable[[dict], None] | None = None, override: bool = False) -> TrainResult:
    """Train `model_name` (by its recipe, training.recipes) on the clips of `data_dir`; write last.pt every
    epoch and best.pt on the best validation score. Returns the run's paths and per-epoch history.

    `resume` continues from out_dir/last.pt: model, optimiser, scheduler, the recipe's state (the alignment
    baseline's banks) and the early-stop count, so the run ends as an uninterrupted one would. A last.pt trained
    under another configuration is refused (ValueError naming the first field that differs; the epoch count,
    patience and worker count may change) unless `override`. With config.train.patience > 0 training stops after
    that many epochs without a better val score.
    `on_epoch(record)` runs on the main rank right after each epoch's last.pt is saved (the experiment keeps its
    time ledger with it).

    With the image trunk frozen (config.model.freeze_image='all') its output is computed once per clip and kept
    in `feature_cache` (default: trunk_cache.default_cache_dir()), so later runs on the same clips reuse it; a
    frozen audio trunk (freeze_audio='all') likewise, over a window wide enough for the audio jitter.
    """
    out_dir = Path(out_dir)
    device_ = setup_distributed(device)
    is_main = rank() == 0
    epochs = epochs if epochs is not None else config.train.epochs
    train_clips, val_clips = split_train_val(data_dir)
    recipe = make_recipe(model_name, config)
    torch.manual_seed(config.train.seed)
    model = create_model(config, model_name).to(device_)
    train_features = val_features = None
    if model.image_encoder.trunk_frozen:
        train_features, val_features = _frozen_trunk_features(
            model, train_clips, val_clips, config, device_, feature_cache, progress and is_main)
    train_audio = None
    if model.audio_encoder.trunk_frozen:
        train_audio = _frozen_audio_features(model, train_clips, config, device_, feature_cache, progress and is_main)
    stepper = _Stepper.for_model(model, config, device_)
    history: list[dict] = []
    start_epoch, best_score, since_best = 0, -math.inf, 0
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and last_path.is_file():
        state = load_training_state(last_path)
        check_resumable(state, last_path, model_name, config, override)
        model.load_state_dict(state["model"])
        stepper.load(state)
        recipe.load_state_dict(state.get("recipe", {}))
        history = state["meta"]["history"]
        start_epoch, best_score = state["epoch"] + 1, state["meta"]["best_score"]
        since_best = state["meta"].get("since_best", 0)
        if is_main:
            logger.info("resuming %s at epoch %d", last_path, start_epoch + 1)
    # find_unused_parameters: with few tokens the mask ratio can round to zero masked tokens, leaving the
    # mask token without a gradient in that step.
    trained = DistributedDataParallel(model, find_unused_parameters=True) if is_distributed() else model
    failures = FailureLog()
    started = time.monotonic()
    for epoch in range(start_epoch, epochs):
        epoch_seed = _seed_everything(config.train.seed * 1000 + epoch)
        partners = recipe.begin_epoch(len(train_clips), epoch_seed)
        dataset = ClipDataset(train_clips, config.data, train=True, views=recipe.views, partners=partners,
                              audio_shift=recipe.audio_shift, image_features=train_features,
                              audio_features=train_audio)
        loader = _epoch_loader(dataset, config, epoch, epoch_seed, device_)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not (progress and is_main), leave=False)
        record = {"epoch": epoch + 1, **_run_epoch(trained, bar, recipe, stepper, failures, epoch, device_),
                  "seconds": round(time.monotonic() - started, 1)}
        recipe.end_epoch()
        if is_distributed():
            record["ddp_parameter_spread"] = _parameter_spread(model)
        history.append(record)
        if is_main:
            scores, presence = validate(model, val_clips, config, device_,
                                        batch_size=min(64, config.train.batch_size),
                                        num_workers=min(2, config.train.num_workers), image_features=val_features)
            record.update({f"val_{k}": v for k, v in scores.items()})
            score = selection_score(scores)
            improved, best_score = score > best_score, max(best_score, score)
            since_best = 0 if improved else since_best + 1
            state = checkpoint_state(
                model, config, epoch,
                meta={"history": history, "best_score": best_score, "since_best": since_best,
                      "version": __version__,
                      "presence_cut": None, "presence_k": None, "presence_mix": None, **presence,
                      "data_dir": str(data_dir), "train_clips": len(train_clips), "val_clips": len(val_clips),
                      "world_size": world_size()},
                recipe=recipe.state_dict(), **stepper.state())
            save_checkpoint(last_path, state)
            if improved:
                save_checkpoint(best_path, state)
            logger.info(_format_record(record, improved))
            if on_epoch is not None:
                on_epoch(record)
        if is_distributed():
            torch.distributed.barrier()
        if _out_of_patience(is_main and 0 < config.train.patience <= since_best):
            if is_main:
                logger.info("stopping after epoch %d: no better val score for %d epochs", epoch + 1, since_best)
            break
        if max_minutes is not None and (time.monotonic() - started) / 60 > max_minutes:
            if is_main:
                logger.info("stopping after epoch %d: time budget of %g min reached", epoch + 1, max_minutes)
            break
    if is_main and len(failures):
        logger.warning(failures.summary())
    cleanup_distributed()
    return TrainResult(out_dir, best_path, last_path, history, len(failures))


def check_resumable(state: dict, path: Path, model_name: str, config: JSARConfig, override: bool = False) -> None:
    """Refuse to resume `path` (a last.pt) as another method, or under another configuration unless `override`:
    a ValueError whose one line names the first field that differs."""
    if state["model_name"] != model_name:
        raise ValueError(f"{path} was trained as {state['model_name']!r}, not {model_name!r}")
    difference = None if override else first_difference(state["config"], config.to_dict())
    if difference is not None:
        name, saved, current = difference
        raise ValueError(f"{path} was trained with {name} = {saved!r}, this run has {current!r}: resume with the "
                         "same settings, or pass --override to continue under the new ones")


def _out_of_patience(stop_here: bool) -> bool:
    """Whether every rank stops now: the main rank, which validates, decides."""
    vote = torch.tensor([1.0 if stop_here else 0.0])
    return bool(all_reduce_sum_(vote).item() > 0)


def _seed_everything(seed: int) -> int:
    """Seed torch, random and numpy for an epoch (so a resumed run continues the same way); returns the seed."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    return seed


def _epoch_loader(dataset: ClipDataset, config: JSARConfig, epoch: int, epoch_seed: int,
                  device: torch.device) -> torch.utils.data.DataLoader:
    """The epoch's shuffled loader: this rank's share of the global batch (a DistributedSampler under DDP)."""
    sampler = DistributedSampler(dataset, seed=config.train.seed, drop_last=True) if is_distributed() else None
    if sampler is not None:
        sampler.set_epoch(epoch)
    per_rank_batch = max(2, config.train.batch_size // world_size())
    return make_loader(dataset, min(per_rank_batch, len(dataset) // world_size()), shuffle=True,
                       num_workers=config.train.num_workers, drop_last=True, sampler=sampler, seed=epoch_seed,
                       device=device)


def _run_epoch(trained: nn.Module, bar: tqdm, recipe: Recipe, stepper: _Stepper, failures: FailureLog, epoch: int,
               device: torch.device) -> dict[str, float]:
    """One pass over the epoch's batches; returns {'steps': n, 'loss_<term>': mean over the steps}."""
    trained.train()
    sums: dict[str, float] = {}
    steps = 0
    for batch in bar:
        failures.add(batch)
        if "image" not in batch or len(batch["image"]) < 2:
            continue
        with torch.autocast(device_type=device.type, enabled=stepper.use_amp):
            terms, output = _forward_terms(trained, batch, recipe, device, epoch + steps / max(1, len(bar)))
        stepper.step(terms["total"], trained)
        recipe.after_step(batch, output)
        steps += 1
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        bar.set_postfix({k: f"{v / steps:.3g}" for k, v in sums.items() if k != "false_negatives"})
    return {"steps": steps, **{f"loss_{k}": v / max(steps, 1) for k, v in sums.items()}}


def _frozen_trunk_features(model: nn.Module, train_clips: list[Clip], val_clips: list[Clip], config: JSARConfig,
                           device: torch.device, cache_dir: Path | None,
                           progress: bool) -> tuple[CachedImageFeatures, CachedImageFeatures]:
    """Cached trunk output of the train clips (with config.train.cached_crops random training crops each, drawn
    from the run's seed: every method's training views) and of the val clips (test views only); rank 0 computes
    and writes them, the other ranks read them. Clips without features (undecodable or missing images) fail in
    the dataset and are reported."""
    trunk = model.image_encoder.trunk
    workers = min(2, config.train.num_workers)
    splits = ((train_clips, config.train.cached_crops), (val_clips, 0))
    seed = config.train.seed
    if rank() == 0:
        features = [cached_trunk_features(trunk, clips, config, device, cache_dir, workers, progress, crops=count,
                                          seed=seed)
                    for clips, count in splits]
    if is_distributed():
        torch.distributed.barrier()
        if rank() != 0:
            features = [cached_trunk_features(trunk, clips, config, device, cache_dir, workers, False, write=False,
                                              crops=count, seed=seed)
                        for clips, count in splits]
    return features[0], features[1]


def _frozen_audio_features(model: nn.Module, train_clips: list[Clip], config: JSARConfig, device: torch.device,
                           cache_dir: Path | None, progress: bool) -> CachedAudioFeatures:
    """Cached wide-window output of a frozen audio trunk for the train clips (training/audio_trunk_cache.py);
    rank 0 computes and writes it, the other ranks read it. Validation encodes its clips' plain windows."""
    trunk, workers = model.audio_encoder.trunk, min(2, config.train.num_workers)
    tokens = model.audio_encoder.num_tokens(config.data.spectrogram_shape)
    features = None
    if rank() == 0:
        features = cached_audio_features(trunk, train_clips, config, device, tokens, cache_dir, workers, progress)
    if is_distributed():
        torch.distributed.barrier()
        if rank() != 0:
            features = cached_audio_features(trunk, train_clips, config, device, tokens, cache_dir, workers, False,
                                             write=False)
    return features


def _parameter_spread(model: nn.Module) -> float:
    """Max over ranks minus min over ranks of a parameter checksum: 0 when DDP replicas are in sync."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    high, low = checksum.clone(), checksum.clone()
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    return float(high - low)


def _format_record(record: dict, improved: bool) -> str:
    parts = [f"epoch {record['epoch']}", f"loss {record.get('loss_total', float('nan')):.4f}"]
    for key in ("val_r1_a2i", "val_r1_i2a", "val_ap50", "val_auc"):
        if key in record:
            parts.append(f"{key[4:]} {record[key]:.3f}")
    parts.append(f"{record['seconds']:.0f}s")
    return " | ".join(parts) + ("  (best)" if improved else "")
