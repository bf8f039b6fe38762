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
  (checked with a checksum when ``PATCHLAB_DIST_CHECK=1``). The loop takes that gradient
  to a float64 copy of the patch, so the sums over images and ranks run in float64 and
  round to float32 once: N ranks give one process's patch update bit for bit where the
  model's per-image gradients do not depend on the batch size (with float32 partial
  sums, added in another order, EOT and Adam grow the last bit to 1e-3 in a few steps).

Judging (``eval transfer``, ``eval matrix``, ``attack``) shards whole batches instead:
batch ``b`` of the single-process run goes to rank ``b % world``
(:meth:`DistContext.owns`), every rank still draws every batch's random placements (or
seeds) in order, and :meth:`DistContext.gather_batches` puts the per-batch results back
in batch order. Each model then sees exactly the batches one process would feed it, so
the gathered per-image outcomes, counts and intervals are those of one process, bit for
bit (a row split would change the batch composition, which can move a logit's last bit
and, with it, a near-tied prediction).

Without an initialised process group :func:`current` is rank 0 of 1 and every method
is the identity, so library code calls them unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from .errors import ConfigError

T = TypeVar("T")


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

    def owns(self, batch: int) -> bool:
        """Whether batch number ``batch`` of a sharded loop is this rank's (batch ``b`` -> rank ``b % world``)."""
        return batch % self.world == self.rank

    def round_rows(self, batch: int, n: int, batch_size: int) -> int:
        """Rows of ``n`` in the round of ``world`` consecutive batches that holds ``batch``.

        Rank 0 owns the first batch of every round, so advancing a progress bar by this
        after each of its batches counts all ``n`` rows once by the end.
        """
        first = (batch // self.world) * self.world * batch_size
        return max(0, min(n, first + self.world * batch_size) - first)

    def gather_batches(self, mine: dict[int, T], n_batches: int) -> list[T]:
        """All ranks' per-batch results ``{batch: value}`` as one list in batch order, on every rank.

        Values are pickled (``all_gather_object``), so keep them CPU tensors or plain
        data. One process returns its own batches in order.
        """
        if not self.active:
            return [mine[b] for b in range(n_batches)]
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, mine)
        merged: dict[int, T] = {}
        for p in parts:
            merged.update(p)
        missing = [b for b in range(n_batches) if b not in merged]
        if missing:
            raise RuntimeError(f"batches {missing[:5]} were run by no rank (world {self.world})")
        return [merged[b] for b in range(n_batches)]

    def round_batches(self, batch: int, n_batches: int) -> int:
        """How many of ``n_batches`` batches are in the round of ``world`` consecutive batches holding ``batch``."""
        first = (batch // self.world) * self.world
        return max(0, min(n_batches, first + self.world) - first)

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


def secondary_rank() -> bool:
    """Whether this process is a torchrun rank other than 0 (it writes nothing; read before the group exists)."""
    return launched() and int(os.environ.get("RANK", "0")) != 0


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


def join(device: str = "auto") -> tuple[DistContext, torch.device]:
    """The group and device of a command: torchrun's group (:func:`init_from_env`) when launched by it,
    else rank 0 of 1 on :func:`patchlab.utils.resolve_device` ``(device)``."""
    if launched():
        return init_from_env(device)
    from .utils import resolve_device

    return current(), resolve_device(device)


def debug_checks() -> bool:
    """``PATCHLAB_DIST_CHECK=1``: compare the patch's checksum across ranks after every step."""
    return os.environ.get("PATCHLAB_DIST_CHECK", "") not in ("", "0")


def leave(ctx: DistContext) -> None:
    """Leave torchrun's process group once every rank is done (nothing in one process)."""
    if ctx.active:
        import torch.distributed as dist

        ctx.barrier()
        dist.destroy_process_group()


__all__ = ["DistContext", "current", "debug_checks", "init_from_env", "join", "launched", "leave", "secondary_rank"]
