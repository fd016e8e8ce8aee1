"""Distributed helpers for training and indexing under `torchrun` (process group, rank, world size, all-gather).

Contrastive losses and false-negative mining need the whole global batch: `gather_with_grad` all-gathers a batch
tensor as open_clip's `gather_features` does (with its default gather_with_grad=False): the other ranks' shards
arrive as constants and this rank's shard is put back as the local tensor, so gradient flows into the local
part. Every helper is a no-op in a single process.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group; 0 in a single process."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 in a single process."""
    return dist.get_world_size() if is_distributed() else 1


def gather_with_grad(tensor: Tensor) -> Tensor:
    """(B, ...) local batch -> (world_size * B, ...) global batch in rank order; the identity in a single process.

    Rows rank * B ... rank * B + B are `tensor` itself (gradient flows); the other ranks' rows are constants.
    Every rank must pass the same shape (DistributedSampler gives each rank the same number of items per batch).
    """
    if world_size() == 1:
        return tensor
    shards = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(shards, tensor.detach().contiguous())
    shards[rank()] = tensor
    return torch.cat(shards, dim=0)


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum `tensor` over the ranks in place, wherever it lives: NCCL reduces CUDA tensors only, so under NCCL a
    CPU tensor (the alignment baseline's embedding banks) goes to this rank's GPU and back; gloo reduces it where
    it is. The identity in a single process. Returns `tensor`."""
    if world_size() == 1:
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_device = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_device)
        tensor.copy_(on_device.cpu())
    else:
        dist.all_reduce(tensor)
    return tensor


def setup_distributed(device: str | torch.device | None = None) -> torch.device:
    """Join the process group `torchrun` describes (env WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
    and return this process's device: NCCL on CUDA, gloo otherwise.

    device: None picks CUDA when present, else the CPU; 'cuda' without an index means cuda:LOCAL_RANK; 'cpu' or an
    explicit 'cuda:N' is taken as given. Without torchrun (WORLD_SIZE unset or 1) no group is created.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        if device.type == "cuda":
            dist.init_process_group(backend="nccl", init_method="env://", device_id=device)
        else:
            dist.init_process_group(backend="gloo", init_method="env://")
    return device


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined."""
    if is_distributed():
        dist.destroy_process_group()
