"""Sharded checkpoints through ``torch.distributed.checkpoint`` (DCP), with the interface of
:mod:`sleepcore.train.checkpoint` (which a single process keeps using).

In a distributed run every rank writes its shards of the DTensors (the experts' optimiser moments
and masters) and DCP has one rank write each plain tensor (the replay set, the RNG state: the same
on every rank, since the stages gather their data and draw their random choices on every rank),
as safetensors files with their offsets in JSON metadata (DCP's Hugging Face storage layout, in
``step-<n>/tensors/``: ``shard-<rank+1>-model-00001-of-00001.safetensors``). DCP's default
file-system layout is not used: its ``.metadata`` file is a pickle, and a sleepcore checkpoint is
never unpickled. Rank 0 then adds ``state.json`` and ``memory.safetensors`` (the experts are
whole on every rank between steps) and publishes the directory like a local checkpoint: written
under a temporary name, renamed into place, then ``LATEST`` moved; a crash at any moment, on any
rank, leaves the previous checkpoint or the new one. The checkpoint folder must be on a file
system every rank sees (on several nodes: a shared one).

Loading reads every tensor whole, in either layout, on any number of ranks (DCP reassembles
shards from their offsets), and a :class:`~sleepcore.distributed.DistributedRuntime` keeps its own
shard: a run saved on N ranks resumes on M, or in one process.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from sleepcore.distributed import world
from sleepcore.train import checkpoint as local

SHARDS = "tensors"  # the folder of the per-rank safetensors shards


def save_checkpoint(root: str | os.PathLike, step: int, *, tensors: dict[str, torch.Tensor], state: dict,
                    memory=None) -> Path:
    """:func:`sleepcore.train.save_checkpoint`, sharded in a distributed run (a collective: every
    rank calls it with the same names; ``state`` and ``memory`` are rank 0's). Returns the directory."""
    if not world.active():
        return local.save_checkpoint(root, step, tensors=tensors, state=state, memory=memory)
    root = Path(root)
    temporary = root / f".step-{step:06d}.tmp-sharded"
    if world.is_main():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
    world.barrier()
    dcp.save({name: tensor.detach() for name, tensor in tensors.items()},
             storage_writer=dcp.HuggingFaceStorageWriter(str(temporary / SHARDS), save_distributed=True))
    final = root / f"step-{step:06d}"
    if world.is_main():
        local.publish_checkpoint(root, step, lambda directory: local.write_state(directory, step, state, memory),
                                 temporary=temporary)
    world.barrier()
    return final


def load_checkpoint(directory: str | os.PathLike, memory=None) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, state)`` of a checkpoint of either layout, every tensor whole and on CPU; loads
    its memory into ``memory`` when given. A sharded one is read with DCP (a collective in a
    distributed run)."""
    directory = Path(directory)
    if (directory / local.TENSORS).is_file():
        return local.load_checkpoint(directory, memory)
    shards = directory / SHARDS
    if not shards.is_dir():
        raise ValueError(f"{directory} holds neither {local.TENSORS} nor {SHARDS}/: not a sleepcore checkpoint")
    metadata = dcp.HuggingFaceStorageReader(str(shards)).read_metadata().state_dict_metadata
    tensors = {name: torch.empty(entry.size, dtype=entry.properties.dtype) for name, entry in metadata.items()}
    with warnings.catch_warnings():  # DCP warns whenever it reads without a process group: intended here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(tensors, storage_reader=dcp.HuggingFaceStorageReader(str(shards)), no_dist=not world.active())
    state = json.loads((directory / local.STATE).read_text())
    if memory is not None:
        memory.load(directory / local.MEMORY)
    return tensors, state
