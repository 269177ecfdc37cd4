"""This process's place in a multi-process extraction: its rank among the torchrun ranks, the process
group they share for barriers and small messages, and the device the rank computes on.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) rank ``r`` of ``W`` computes the shards
``i ≡ r (mod W)`` and writes them itself; rank 0 holds the entry locks and writes the manifests once
every rank has passed a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from cvgl.configs.schema import Config
from cvgl.core.devices import resolve_device
from cvgl.core.errors import UserError

#: Timeout of the rank barriers: a rank may wait for the slowest one through a whole image list.
BARRIER_TIMEOUT = timedelta(hours=12)


@dataclass
class Ranks:
    """This process's place in a multi-process extraction (one process: rank 0 of 1).

    ``group`` is a gloo group for control messages (barriers, small objects): the work itself needs
    no collective, so this works the same with nccl as the default backend.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None

    @property
    def leader(self) -> bool:
        """Rank 0: the process that locks entries and writes manifests."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing to wait for with one process)."""
        if self.world > 1:
            torch.distributed.barrier(group=self.group)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=self.group)
        return out


def ranks_from_env(device_name: str = "auto") -> Ranks:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``), if any.

    Backend: nccl when the ranks use CUDA, gloo otherwise; control messages always go over gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dist = torch.distributed
    if not dist.is_available():
        raise UserError("WORLD_SIZE is set but this torch has no torch.distributed; run one process")
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=BARRIER_TIMEOUT)
    group = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT) if dist.get_backend() != "gloo" else None
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local, group=group)


def rank_device(cfg: Config, ranks: Ranks) -> torch.device:
    """The device of this rank: its local GPU under torchrun, else ``backbone.device``."""
    device = resolve_device(cfg.backbone.device, "backbone.device")
    if ranks.world > 1 and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ranks.local_rank)
    return device


__all__ = ["BARRIER_TIMEOUT", "Ranks", "rank_device", "ranks_from_env"]
