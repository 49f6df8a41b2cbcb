"""The process group of a torchrun launch: starting it from torchrun's environment, this rank's
place in it, the data-parallel device mesh, and the few collectives on Python objects that the
stages need (each a no-op in a single process, so callers need no branch).

A run is *distributed* when the default process group is initialised with two or more ranks.
Work lists are split into contiguous blocks, rank ``r`` of ``W`` taking items
``[r * n // W, (r + 1) * n // W)`` of ``n`` (sizes differ by at most one, possibly zero), so that
concatenating the ranks' blocks in rank order gives back the list in its order: a result computed
block-wise and gathered is ordered exactly like the single-process one.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh


def active() -> bool:
    """True inside an initialised process group of two or more ranks."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a distributed run)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of ranks (1 outside a distributed run)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on the rank that shows progress and writes logs, reports and checkpoint metadata."""
    return rank() == 0


def init_from_environment() -> torch.device | None:
    """Starts the default process group when launched by torchrun with ``WORLD_SIZE > 1`` (once;
    later calls return the same device): NCCL with ``cuda:LOCAL_RANK`` when CUDA is available,
    else gloo on CPU. Returns the rank's device, or None for a single-process run (nothing is done)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


@contextlib.contextmanager
def process_group():
    """The body of a torchrun launch: on a normal end every rank meets at a barrier, then the default
    process group (if one was started) is destroyed. Without the barrier a rank that tore gloo down
    while rank 0 still wrote its files aborted once in CI ("terminate called without an active
    exception"); after an exception there is no barrier, so the failing rank exits and torchrun
    stops the others instead of leaving them waiting."""
    try:
        yield
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    finally:
        shutdown()


def shutdown() -> None:
    """Destroys the default process group if one was started (the end of a torchrun launch)."""
    if dist.is_available() and dist.is_initialized():
        mesh.cache_clear()
        dist.destroy_process_group()
        gc.collect()  # the gloo groups' worker threads are joined now, not during interpreter shutdown


@functools.cache
def mesh(device_type: str) -> DeviceMesh:
    """The 1-D data-parallel mesh over every rank (``"cpu"``: gloo, ``"cuda"``: NCCL), built once
    per device type. FSDP2 is always given this mesh explicitly: without one, ``fully_shard`` picks
    CUDA on a machine with GPUs even under a gloo group."""
    return init_device_mesh(device_type, (world_size(),))


def block_bounds(size: int) -> tuple[int, int]:
    """``(start, stop)`` of this rank's contiguous block of ``size`` items (see the module docstring)."""
    world, me = world_size(), rank()
    return me * size // world, (me + 1) * size // world


def block(items: list) -> list:
    """This rank's contiguous block of ``items`` (all of them in a single process; may be empty)."""
    start, stop = block_bounds(len(items))
    return list(items[start:stop])


def gather(items: list) -> list:
    """Every rank's ``items`` (picklable objects; tensors in them must be on CPU), concatenated in
    rank order: the inverse of :func:`block`. A collective: every rank must call it."""
    return [item for part in all_gather_objects(list(items)) for item in part]


def all_sum(values: list[float]) -> list[float]:
    """The element-wise sum over ranks of ``values`` (float64; a collective)."""
    if not active():
        return [float(value) for value in values]
    total = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return total.tolist()


def all_gather_objects(value) -> list:
    """``value`` of every rank, in rank order (a collective; ``[value]`` in a single process)."""
    if not active():
        return [value]
    parts = [None] * world_size()
    dist.all_gather_object(parts, value)
    return parts


def barrier() -> None:
    """Waits for every rank (nothing in a single process)."""
    if active():
        dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

