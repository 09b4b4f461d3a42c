"""The processes of a stage started by `torchrun` (one per GPU): who this process is, and the few collectives the
stages need. Started as one plain process, every function here is a no-op and the world has size 1.

Every stage calls `init()` first: it joins the process group and leaves it when the process exits. pretrain and adapt
then run through transformers' Trainer, which sets up DistributedDataParallel on that group; the importance and eval
stages shard their utterances. In every stage, process 0 alone writes the outputs.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist

from forgetting.errors import InputError


class DeviceError(InputError):
    """Devices a stage will not run on as they are set up; the message says what to set."""


def check_one_gpu_per_process(gpus: int) -> None:
    """Refuse a process that sees several GPUs: the Trainer would wrap the model in DataParallel, which replicates it
    on every step (slower than the DistributedDataParallel this project runs) and hands back one loss per GPU."""
    if gpus > 1:
        raise DeviceError(f"{gpus} GPUs are visible to one process; set resources.nproc_per_node: {gpus} to train on all "
                          f"of them (one process per GPU), or CUDA_VISIBLE_DEVICES=0 to train on one")


def world_size() -> int:
    """The number of processes of this stage (torchrun's WORLD_SIZE), 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's index among them (torchrun's RANK), 0 without torchrun."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes the stage's outputs."""
    return rank() == 0


def device() -> torch.device:
    """This process's device: its GPU (torchrun's LOCAL_RANK) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init() -> None:
    """Join the process group (NCCL on GPUs, gloo on CPUs) when started by torchrun with more than one process, and
    leave it at exit: a gloo group left to the interpreter's teardown can abort a process whose work is done
    ("terminate called without an active exception"), and torchrun then reports the stage as failed."""
    if world_size() > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(device())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(leave)


def leave() -> None:
    """Leave the process group, if this process is in one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(count: int) -> list[int]:
    """The indices of `count` items that this process handles: every world_size-th, from its rank (interleaved, so
    that items sorted by length spread their cost evenly)."""
    return list(range(rank(), count, world_size()))


def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum each tensor over all processes, in place."""
    if world_size() > 1:
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def gather_objects(value: object) -> list[object]:
    """Every process's `value`, in rank order, on every process."""
    if world_size() == 1:
        return [value]
    gathered: list[object] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered
