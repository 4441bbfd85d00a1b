"""The processes of a run: one, or several under ``torchrun`` (data
parallel). Collective helpers that are no-ops for a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .._device import resolve_device


@dataclass
class Processes:
    """This process's rank among ``world`` and its device."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @classmethod
    def start(cls, device_name: str) -> Processes:
        """Join the process group torchrun describes (environment), if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device_name, local)
        owns = False
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            owns = True
        return cls(rank, world, device, owns)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_min(self, flag: bool) -> bool:
        """True only if ``flag`` is true on every process."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over processes (a constant: no gradient)."""
        value = value.detach()
        if self.world == 1:
            return value
        t = value.reshape(1).to(self._comm_device)
        dist.all_reduce(t)
        return (t / self.world).to(value.device).reshape(())

    def average_gradients(self, params) -> None:
        if self.world == 1:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every process."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device)
        dist.broadcast(t, 0)
        return bool(t.item())

    def broadcast_object(self, value):
        """Rank 0's ``value`` (picklable) on every process."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, 0, device=self._comm_device)
        return box[0]

    @property
    def _comm_device(self):
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def stop(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
