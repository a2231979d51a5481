"""Family training over many processes with ``torch.distributed`` (gloo on CPU, nccl on GPU),
started by ``torchrun``: ``torchrun --nproc-per-node 2 -m onefit train RUN``.

Data parallel, with the global batch the loader gives: every rank reads the same batches (one
seed) and takes its own contiguous shard of each; every rank samples the same sub-models (the
recipe's seed); each rank accumulates the gradients of all of a step's sub-models on its shard,
then *every* parameter's gradient is averaged across ranks in one flat all-reduce, just before
the optimizer steps. So a step over N ranks is the step one process takes on the whole batch
(the mean of equal shards' mean losses is the batch's mean loss), up to float rounding.

Why not the ``DistributedDataParallel`` wrapper: its reducer fires during ``backward``, once per
pass, and a nested step makes several passes over different sub-models before one optimizer
step. Accumulating them under ``no_sync`` with ``find_unused_parameters=True`` reduces only what
the last pass touched (pytorch issue 69031), and the sandwich's last pass is the smallest
sub-model: the rest of the network would silently train on rank-local gradients. Reducing the
accumulated gradients once, at ``optimizer.step()``, has no such trap and costs one all-reduce a
step, as DDP's does.

At the start, rank 0's parameters and random states (the loader's order, the recipe's sampler,
torch's, numpy's and Python's generators) are copied to every rank, so the ranks agree even when
one of them used the loader before (``onefit run``'s rank 0 checks the data first).

Batch-norm layers normalise over each rank's shard (as under DDP without SyncBatchNorm); their
running statistics are averaged across ranks at the end of every epoch, before rank 0 writes the
checkpoint. Only rank 0 writes; the others wait for it, so a rank that reads a checkpoint
afterwards finds it whole.

>>> batch = (torch.arange(8).reshape(4, 2), torch.arange(4))
>>> [t.tolist() for t in shard(batch, rank=1, world=2)]
[[[4, 5], [6, 7]], [2, 3]]
>>> shard(batch, rank=0, world=3)
Traceback (most recent call last):
...
onefit.tasks.base.DataError: a batch of 4 samples cannot be shared evenly by 3 processes: ...
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
from torch import nn

from onefit.tasks import DataError


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class Group:
    """This process's place in the process group."""

    rank: int
    world: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


def current() -> Group | None:
    """The initialised process group of more than one process, or None (one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return Group(dist.get_rank(), dist.get_world_size())


def init_from_env(timeout_s: float = 1800.0) -> Group | None:
    """Join the process group ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``): nccl when this rank has a GPU, gloo otherwise. None when
    the process was not launched as one of several."""
    import torch.distributed as dist

    if not launched():
        return None
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start "
                               "onefit with torchrun (torchrun --nproc-per-node N -m onefit ...)")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def shutdown() -> None:
    """Leave the process group: every rank waits for the others first (gloo needs it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if current() is not None:
        dist.barrier()


def broadcast_object(value):
    """``value`` as rank 0 has it, on every rank (JSON-like objects)."""
    import torch.distributed as dist

    if current() is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(batch, rank: int, world: int):
    """This rank's contiguous share of ``batch``: every tensor with the batch's first dimension
    is sliced (nested tuples, lists and dicts too); a batch the ranks cannot share evenly is a
    ``DataError``, as the global batch would otherwise change with the number of processes."""
    n = _batch_size(batch)
    if n is None:
        raise DataError(f"cannot share a batch of type {type(batch).__name__} between processes: it holds no tensor")
    if n % world:
        raise DataError(f"a batch of {n} samples cannot be shared evenly by {world} processes: use a batch size "
                        f"that is a multiple of {world}, and drop_last=True in the DataLoader when the dataset's "
                        f"size is not one")
    per = n // world
    return _slice(batch, n, slice(rank * per, (rank + 1) * per))


def _batch_size(batch) -> int | None:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else None
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (tuple, list)) else ()
    for item in items:
        n = _batch_size(item)
        if n is not None:
            return n
    return None


def _slice(batch, n: int, part: slice):
    if isinstance(batch, torch.Tensor):
        return batch[part] if batch.dim() and batch.shape[0] == n else batch
    if isinstance(batch, dict):
        return type(batch)({k: _slice(v, n, part) for k, v in batch.items()})
    if isinstance(batch, (tuple, list)):
        return type(batch)(_slice(v, n, part) for v in batch)
    return batch


def check_loader(data, world: int) -> None:
    """Refuse, before training starts, a DataLoader whose batches the ranks cannot share evenly."""
    batch_size = getattr(data, "batch_size", None)
    dataset = getattr(data, "dataset", None)
    if not isinstance(batch_size, int) or dataset is None or not hasattr(dataset, "__len__"):
        return  # anything else is checked batch by batch
    last = len(dataset) % batch_size if not getattr(data, "drop_last", False) else 0
    bad = [size for size in (batch_size, last) if size and size % world]
    if bad:
        raise DataError(f"{world} processes cannot share the training batches evenly: the batch size is {batch_size}"
                        + (f" and the last batch holds {last} of the {len(dataset)} samples" if last else "")
                        + f"; use a batch size that is a multiple of {world}"
                        + (", and drop_last=True" if last and last % world else ""))


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (one starting point)."""
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_buffers(module: nn.Module) -> None:
    """Every floating buffer (batch-norm running statistics) averaged across ranks."""
    import torch.distributed as dist

    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if buffers:
        _all_reduce_mean([b.data for b in buffers], dist.get_world_size())


def average_gradients(parameters, world: int) -> None:
    """Every gradient averaged across ranks in one flat all-reduce. A parameter without a gradient
    here is counted as zero, so ranks always reduce the same buffer."""
    params = [p for p in parameters if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    _all_reduce_mean([p.grad for p in params], world)


def _all_reduce_mean(tensors: list[torch.Tensor], world: int) -> None:
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    for dtype in sorted({t.dtype for t in tensors}, key=str):  # one flat buffer per dtype
        group = [t for t in tensors if t.dtype == dtype]
        flat = _flatten_dense_tensors(group)
        dist.all_reduce(flat)
        flat /= world
        for t, reduced in zip(group, _unflatten_dense_tensors(flat, group)):
            t.copy_(reduced)


class SyncedOptimizer:
    """``optimizer`` whose ``step`` first averages every gradient across ranks; everything else is
    the optimizer's (``zero_grad``, ``param_groups``, ``state``)."""

    def __init__(self, optimizer, world: int):
        self.optimizer, self.world = optimizer, world

    def step(self, closure=None):
        with torch.no_grad():
            average_gradients([p for g in self.optimizer.param_groups for p in g["params"]], self.world)
        return self.optimizer.step(closure)

    def __getattr__(self, name: str):
        return getattr(self.optimizer, name)


def mean_across_ranks(values: list[float]) -> list[float]:
    """The mean of each value over the ranks (the epoch's losses in the history)."""
    import torch.distributed as dist

    group = current()
    if group is None:
        return values
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / group.world).tolist()
