"""torch.distributed under torchrun (or any launcher that sets RANK, WORLD_SIZE and the rendezvous variables).

One process per GPU (or per CPU slot): NCCL when CUDA is present, gloo otherwise, chosen here. Outside a
launcher `current()` returns a single-process context whose collectives are no-ops, so every stage
calls the same code whether it runs alone or as one rank of many.
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtkd_cache.errors import ConfigError

if TYPE_CHECKING:  # torch loads when a process group is used: importing this module costs nothing
    import torch


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, no process group

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        """The device of this rank: with CUDA, the GPU of its local rank."""
        import torch

        from mtkd_cache.devices import resolve_device

        device = resolve_device(requested)
        if device.type == "cuda" and self.active:
            if self.local_rank >= torch.cuda.device_count():
                raise ConfigError(f"local rank {self.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                                  "start at most one process per GPU (--nproc-per-node).")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order (picklable objects)."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if not self.active:
            return value
        import torch.distributed as dist

        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]


def current() -> DistributedContext:
    """The context of this process; joins the process group on first use when a launcher started it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # Long timeout: a rank may wait at a barrier while another one runs a whole teacher over its shards.
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=6))
        # Leaving with the group alive lets the interpreter tear down gloo's threads mid-flight, which
        # aborts the process ("terminate called without an active exception") after its work is done.
        atexit.register(_leave_process_group)
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                              local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=dist.get_backend())


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def leave(exit_code: int) -> None:
    """End this torchrun rank with `exit_code` now, skipping the interpreter's teardown; no-op alone.

    Even with the process group destroyed at exit, a rank was seen to abort after its work was done
    ("terminate called without an active exception", SIGABRT: gloo's C++ threads met the interpreter's
    shutdown), which torchrun reports as a failed run. So a finished rank waits for the others at a
    barrier (no rank leaves while another still needs a collective) and exits without the teardown. A
    failing rank leaves at once: torchrun stops the others."""
    dist = sys.modules.get("torch.distributed")  # never imported: there is no process group to leave
    if dist is None or not dist.is_initialized():
        return
    if exit_code == 0:
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


def balanced_assignment(costs: list[int], world_size: int) -> list[list[int]]:
    """Indices of `costs` split into `world_size` parts with near-equal sums (largest first, to the lightest part).

    Deterministic (ties by index), so every rank computes the same assignment without talking."""
    parts: list[list[int]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        lightest = min(range(world_size), key=lambda r: (loads[r], r))
        parts[lightest].append(index)
        loads[lightest] += costs[index]
    return [sorted(part) for part in parts]
