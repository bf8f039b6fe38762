"""Data-parallel helpers over ``torch.distributed`` (torchrun), and the single-process no-op.

A patch optimisation scales out the way PyTorch's own engine does: ``torchrun`` starts
one process per device, :func:`init_from_env` joins them into a process group, and
:class:`DistContext` gives the loop the four collectives it needs. The design keeps
every rank's patch identical and the result equal to one process with the same global
batch and seed:

* every rank holds the same seeded generator and draws the *global* batch's image
  indices, EOT transforms and SW projections from it; rank ``r`` keeps rows
  :meth:`DistContext.rows` of them (a streamed source is sharded by a
  ``DistributedSampler`` instead);
* distribution losses compare the *global* feature cloud with the target cloud:
  :meth:`DistContext.gather_rows` all-gathers the (small, pooled) features, keeping
  the local rows in the graph, so each rank's backward gives its own images' share;
* :meth:`DistContext.all_reduce` sums those shares: the patch gradient of the global
  loss, identical on all ranks, so identical optimiser steps keep the patch identical
  (checked with a checksum when ``PATCHLAB_DIST_CHECK=1``).

Without an initialised process group :func:`current` is rank 0 of 1 and every method
is the identity, so library code calls them unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the data-parallel group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> slice | None:
        """This rank's rows of a global batch of ``n`` (``None``: all of them, single process)."""
        if not self.active:
            return None
        if n % self.world:
            raise ConfigError(f"the batch size {n} must be a multiple of the number of processes {self.world}")
        k = n // self.world
        return slice(self.rank * k, (self.rank + 1) * k)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over ranks (in place; ``t`` unchanged in one process)."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' rows of ``x`` in rank order; the local rows stay in the autograd graph."""
        if not self.active:
            return x
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.detach().contiguous())
        parts[self.rank] = x
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def check_identical(self, t: torch.Tensor, what: str = "patch") -> None:
        """Raise if ``t`` differs between ranks (a checksum all-gather: a debug check, it syncs)."""
        if not self.active:
            return
        import torch.distributed as dist

        s = torch.stack([t.detach().double().sum(), (t.detach().double() ** 2).sum()]).reshape(1, 2)
        parts = [torch.empty_like(s) for _ in range(self.world)]
        dist.all_gather(parts, s)
        allc = torch.cat(parts)
        if not bool((allc == allc[:1]).all()):
            raise RuntimeError(f"the {what} differs between ranks: checksums {allc.tolist()}")


def current() -> DistContext:
    """The context of the initialised default process group, or the single-process one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistContext(rank=dist.get_rank(), world=dist.get_world_size())
    return DistContext()


def launched() -> bool:
    """Whether this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> tuple[DistContext, torch.device]:
    """Join the process group torchrun describes in the environment; pick this rank's device.

    ``nccl`` with one GPU per local rank when CUDA is there and asked for, ``gloo`` on CPUs.
    Multi-node works unchanged: torchrun's rendezvous (``--rdzv-endpoint``) sets the same variables.
    """
    import torch.distributed as dist

    if not launched():
        return current(), torch.device(
            "cpu" if device == "auto" and not torch.cuda.is_available() else ("cuda" if device == "auto" else device)
        )
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu" if device in ("auto", "cuda") else device)
    if use_cuda:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return current(), dev


def debug_checks() -> bool:
    """``PATCHLAB_DIST_CHECK=1``: compare the patch's checksum across ranks after every step."""
    return os.environ.get("PATCHLAB_DIST_CHECK", "") not in ("", "0")


__all__ = ["DistContext", "current", "debug_checks", "init_from_env", "launched"]
