"""Atomic checkpoints of a sleep in progress.

A checkpoint is a directory ``<root>/step-<n>/`` holding ``state.pt`` (step, RNG states, optimiser,
replay set, metrics) and ``memory.safetensors`` (the Continuum Memory). It is written under a
temporary name and renamed into place; then ``<root>/LATEST`` (written to a temporary file and
``os.replace``-d) points at it, and older checkpoints are removed. A crash at any moment leaves
either the previous checkpoint or the new one, never a half-written one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch

LATEST = "LATEST"


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary sibling and ``os.replace``."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(root: str | os.PathLike, step: int, state: dict, memory) -> Path:
    """Writes checkpoint ``step`` (``state`` is torch-saveable; ``memory`` has ``save(path)``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    temporary = root / f".step-{step:06d}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        torch.save({"step": step, **state}, temporary / "state.pt")
        memory.save(temporary / "memory.safetensors")
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
    """The directory ``LATEST`` names, or None when there is no complete checkpoint."""
    pointer = Path(root) / LATEST
    if not pointer.is_file():
        return None
    directory = Path(root) / pointer.read_text().strip()
    return directory if (directory / "state.pt").is_file() else None


def load_checkpoint(directory: Path, memory) -> dict:
    """The state dict of a checkpoint; loads its memory into ``memory`` in place."""
    state = torch.load(directory / "state.pt", weights_only=False)
    memory.load(directory / "memory.safetensors")
    return state
