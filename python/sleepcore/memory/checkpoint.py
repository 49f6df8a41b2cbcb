"""One-file safetensors persistence of a ContinuumMemory.

Layout: tensors ``layers.<layer>.levels.<level>.A.<slot>`` (``[r, d]``) and ``...B.<slot>`` (``[d, r]``),
for a gated level also ``...gate_weight.<slot>`` (``[d]``) and ``...gate_bias.<slot>`` (``[1]``), in
the model's dtype, and ``levels.<level>.active`` (bool ``[slots]``, the mask shared by all layers);
metadata ``format``, ``config`` (the resolved :class:`MemoryConfig` as JSON) and ``state`` (JSON).
A save writes ``<path>.tmp-<pid>``, flushes it to disk and renames it over ``path``, so a crash
leaves either the old file or the new one, never a partial one.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "sleepcore.memory/1"


def _parameters(memory) -> dict[str, torch.nn.Parameter]:
    parameters = {}
    for layer, mlp in memory.layers.items():
        for level_index, level in enumerate(mlp.levels):
            for slot in range(len(level.active)):
                for name, parameter in zip(("A", "B", "gate_weight", "gate_bias"), level.parameters_of(slot)):
                    parameters[f"layers.{layer}.levels.{level_index}.{name}.{slot}"] = parameter
    return parameters


def _masks(memory) -> dict[str, torch.Tensor]:
    masks = {}
    for level_index, level in enumerate(memory.config.levels):
        active = set(memory.active_slots(level_index))
        masks[f"levels.{level_index}.active"] = torch.tensor([slot in active for slot in range(level.slots)])
    return masks


def save(memory, path) -> None:
    """See :meth:`ContinuumMemory.save`. Raises ``ValueError`` if ``memory.state`` is not JSON-serialisable."""
    try:
        state = json.dumps(memory.state)
    except (TypeError, ValueError) as error:
        raise ValueError(f"memory.state must be JSON-serialisable: {error}") from error
    metadata = {"format": FORMAT, "config": json.dumps(memory.config.to_json_dict()), "state": state}
    path = os.fspath(path)
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        tensors = {name: parameter.detach().cpu().contiguous() for name, parameter in _parameters(memory).items()}
        save_file(tensors | _masks(memory), temporary, metadata=metadata)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def load(memory, path) -> None:
    """See :meth:`ContinuumMemory.load`: checks everything before changing anything."""
    path = os.fspath(path)
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a sleepcore memory file (format {metadata.get('format')!r})")
        saved = json.loads(metadata["config"])
        for level in saved.get("levels", []):  # files written before LevelConfig.router existed
            level.setdefault("router", "sum")
        current = json.loads(json.dumps(memory.config.to_json_dict()))
        if saved != current:
            raise ValueError(f"memory config mismatch: {path} holds {saved}, this memory has {current}")
        parameters = _parameters(memory)
        expected = {name: parameter.shape for name, parameter in parameters.items()}
        expected |= {name: mask.shape for name, mask in _masks(memory).items()}
        names = set(handle.keys())
        if names != set(expected):
            missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
            raise ValueError(f"memory tensors mismatch in {path}: missing {missing[:4]}, unexpected {extra[:4]}")
        loaded = {name: handle.get_tensor(name) for name in names}
    for name, tensor in loaded.items():
        if tensor.shape != expected[name]:
            raise ValueError(f"shape mismatch for {name} in {path}: {tuple(tensor.shape)} in the file, "
                             f"{tuple(expected[name])} expected")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(loaded[name])
    for level_index in range(len(memory.config.levels)):
        for slot, active in enumerate(loaded[f"levels.{level_index}.active"].tolist()):
            (memory.activate if active else memory.deactivate)(level_index, slot)
    memory.state = json.loads(metadata["state"])
