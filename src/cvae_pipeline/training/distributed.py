"""Data-parallel training across processes: ``torchrun`` + DistributedDataParallel.

``torchrun --nproc_per_node=N stages/train.py`` starts N copies of the stage;
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_*``)
says which one each is. Each process trains on its own 1/N of every shuffled
epoch with ``train.batch_size / N`` images per step, and DDP averages the
gradients, so the optimiser sees the same global batch as one process would.
Only rank 0 writes: checkpoints, reports, the model, and everything in MLflow.
Backend: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on CPU.
Multi-node: the same command on every node with ``--nnodes``/``--rdzv-endpoint``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import PipelineError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum floats over all processes (identity for one process)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any (e.g. a NaN loss on one rank)."""
        return self.all_reduce_sum([float(flag)])[0] > 0 if self.enabled else flag

    def broadcast(self, value):
        """Rank 0's ``value`` on every process (a decision only rank 0 measured, e.g. the precision)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value) -> list:
        """Every process's ``value``, in rank order (``[value]`` for one process)."""
        if not self.enabled:
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def replicas_in_sync(self, model: torch.nn.Module) -> bool:
        """Whether every process ends with the same weights (what DDP promises; checked, not assumed)."""
        if not self.enabled:
            return True
        checksum = float(sum(p.detach().double().sum().item() for p in model.parameters()))
        sums = torch.zeros(self.world_size, dtype=torch.float64, device=_collective_device())
        sums[self.rank] = checksum
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        return bool(torch.allclose(sums, sums[0].expand_as(sums), rtol=0, atol=0))


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def from_environment() -> Distributed:
    """The process group torchrun describes, initialised; a single process when not under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(rank, world_size, local_rank)


def device_for(ctx: Distributed, requested: torch.device) -> torch.device:
    """One GPU per process under torchrun; otherwise what ``train.device`` resolved to."""
    if ctx.enabled and requested.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return requested


def per_process_batch(batch_size: int, ctx: Distributed) -> int:
    if batch_size % ctx.world_size:
        raise PipelineError(
            f"train.batch_size = {batch_size} is not divisible by the {ctx.world_size} "
            "torchrun processes; choose a multiple (it is the global batch)"
        )
    return batch_size // ctx.world_size


def shutdown(ctx: Distributed) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
