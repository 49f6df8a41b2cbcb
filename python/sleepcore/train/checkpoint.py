"""Atomic checkpoints without pickles: tensors in safetensors, everything else in JSON.

A checkpoint is a directory ``<root>/step-<n>/`` holding ``tensors.safetensors`` (optimiser
moments, fp32 master weights, cached tensors of a stage, the torch RNG state), ``state.json``
(step, Python RNG state, sampler position, metrics, buffers) and, when a memory is given,
``memory.safetensors`` (a distributed run writes the tensors as per-rank safetensors shards
instead: :mod:`sleepcore.distributed.checkpoint`). It is written under a temporary name and
renamed into place; then ``<root>/LATEST`` (written to a temporary file and ``os.replace``-d)
points at it, and older checkpoints are removed. A crash at any moment leaves either the previous checkpoint or the new
one. Nothing is ever unpickled: a directory in the old pickled format (``state.pt``) is refused
with a ``ValueError`` instead of being loaded, since unpickling runs whatever code the file names.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LATEST = "LATEST"
TENSORS, STATE, MEMORY = "tensors.safetensors", "state.json", "memory.safetensors"
PICKLED_STATE = "state.pt"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary sibling, ``fsync`` and ``os.replace``."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def random_state(generator=random) -> list:
    """The state of a Python ``random.Random`` (default: the global one) as JSON (nested lists)."""
    version, internal, gauss = generator.getstate()
    return [version, list(internal), gauss]


def restore_random_state(state: list, generator=random) -> None:
    """Restores what :func:`random_state` returned."""
    version, internal, gauss = state
    generator.setstate((version, tuple(internal), gauss))


def save_checkpoint(root: str | os.PathLike, step: int, *, tensors: dict[str, torch.Tensor], state: dict,
                    memory=None) -> Path:
    """Writes checkpoint ``step``: ``tensors`` (names to tensors), ``state`` (JSON-serialisable) and
    ``memory`` (anything with ``save(path)``; optional). Returns its directory."""

    def write(directory: Path) -> None:
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()},
                  str(directory / TENSORS))
        write_state(directory, step, state, memory)

    return publish_checkpoint(root, step, write)


def write_state(directory: Path, step: int, state: dict, memory=None) -> None:
    """``state.json`` (``state`` with its ``step``) and, when given, ``memory.safetensors`` in ``directory``."""
    (directory / STATE).write_text(json.dumps({"step": step, **state}))
    if memory is not None:
        memory.save(directory / MEMORY)


def publish_checkpoint(root: str | os.PathLike, step: int, write, *, temporary: Path | None = None) -> Path:
    """Completes checkpoint ``step`` atomically: ``write(directory)`` fills a temporary directory
    (``temporary``, which may already hold files, or a new one), which is then renamed to
    ``<root>/step-<n>``; ``LATEST`` is pointed at it and older checkpoints are removed. Returns it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    if temporary is None:
        temporary = root / f".step-{step:06d}.tmp-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir()
    try:
        write(temporary)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    atomic_write_text(root / LATEST, final.name)
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The directory ``LATEST`` names, or None when there is no complete checkpoint. Raises
    ``ValueError`` for a checkpoint in the old pickled format (it is never unpickled)."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    directory = Path(root) / pointer.read_text().strip()
    _refuse_pickles(directory)
    return directory if (directory / STATE).is_file() else None


def load_checkpoint(directory: str | os.PathLike, memory=None) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, state)`` of a checkpoint; loads its memory into ``memory`` in place when given."""
    directory = Path(directory)
    _refuse_pickles(directory)
    tensors = load_file(str(directory / TENSORS))
    state = json.loads((directory / STATE).read_text())
    if memory is not None:
        memory.load(directory / MEMORY)
    return tensors, state


def _refuse_pickles(directory: Path) -> None:
    if (directory / PICKLED_STATE).exists():
        raise ValueError(f"{directory} holds a pickled checkpoint ({PICKLED_STATE}, an older sleepcore format); "
                         f"it is not loaded, since unpickling runs arbitrary code. Delete {directory.parent} to "
                         f"start afresh.")
