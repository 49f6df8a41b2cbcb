"""Vocabulary-parallel (tensor-parallel) ``lm_head`` for the fused linear losses: where a rank's
shard sits, the checks across ranks, and the collectives.

Setting. Every rank of a process group holds the same tokens (hidden states ``[N, H]``, labels,
teacher inputs) and one slice ``weight[start : start + size]`` of the ``lm_head`` (``[size, H]``,
``nn.Linear`` layout; slices may be uneven, each holds at least one id). A fused op computes only
its chunk's local logits ``[C, size]`` and combines per-row statistics over the ranks
(:mod:`sleepcore.ops.vocab_parallel_rows` derives which); ``N x V`` logits are never gathered.

How a rank learns its offset: :func:`layout` all-gathers one small float64 record per rank (shard
size, ``vocab_start`` or -1, row count, requested chunk size, the range of the target ids, a
checksum of the hidden states) and reads it on the host, once per call (so on this path the
public functions break a ``torch.compile`` graph there; the custom ops themselves compile with
``fullgraph=True``). Without ``vocab_start`` the shards follow group-rank order (``start`` = the
sizes of the lower ranks added up); with ``vocab_start`` on every rank, the shards sorted by start
must tile ``[0, V)`` exactly. Every rank sees every record, so all ranks make the same checks and
raise the same error: none is left waiting in a collective. A DTensor weight placed ``(Shard(0),)`` on a 1-D device mesh brings its
group (the mesh's) and its layout (mesh order); :func:`local_shards` unwraps it with
``to_local()``, which routes the weight gradient back to the DTensor.

Gradients. The ops compute them in their forward pass inside ``torch.library`` custom ops, so no
collective is ever differentiated: the logit gradient of a shard is local once the row statistics
are combined, the weight (and bias) gradient stays on its shard, and the hidden-state gradient,
a sum over shards of ``G_local @ weight_local``, is all-reduced (:meth:`VocabShard.sum_`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sleepcore import validation

# Relative tolerance of the hidden-state checksum: rounding-level differences pass, different data fails.
_CHECKSUM_RTOL = 1e-6
_FIELDS = ("size", "start", "rows", "chunk", "id_min", "id_max", "hidden_sum", "hidden_norm")


@dataclass(frozen=True)
class VocabShard:
    """This rank's ids ``[start, start + size)`` of a vocabulary of ``vocab`` ids split over a group.

    ``group_name`` names the process group (a custom op's schema takes a string, not a group).
    """

    group_name: str
    start: int
    size: int
    vocab: int

    @property
    def group(self) -> dist.ProcessGroup:
        return dist.distributed_c10d._resolve_process_group(self.group_name)

    @property
    def op_args(self) -> tuple[str, int, int]:
        """``(group_name, vocab_start, vocab_size)``: the trailing arguments of the vocab-parallel ops."""
        return self.group_name, self.start, self.vocab

    def gather(self, stats: torch.Tensor) -> torch.Tensor:
        """Per-row statistics ``[C, m]`` of every rank, stacked in group-rank order: ``[world, C, m]``."""
        return _all_gather(stats, self.group)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) ``tensor`` over the group in place; an empty tensor is left alone."""
        if tensor.numel():
            dist.all_reduce(tensor, group=self.group)
        return tensor

    def localise(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids - start, on)``: shard-local ids and the bool mask of the ids this shard holds."""
        local = ids - self.start
        return local, (local >= 0) & (local < self.size)


def _all_gather(tensor, group):
    """``tensor`` of every rank of ``group``, stacked in group-rank order: ``[world, *tensor.shape]``."""
    tensor = tensor.contiguous()
    world = dist.get_world_size(group)
    out = tensor.new_empty(world * tensor.shape[0], *tensor.shape[1:])  # the concatenated form (gloo's only one)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # the former from torch 2.10
    gather(out, tensor, group=group)
    return out.view(world, *tensor.shape)


def _dtensor_class():
    """DTensor, or None when no DTensor can exist (its module, slow to import, was never imported)."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def _unwrap(name, value, dtensor):
    if dtensor is None or not isinstance(value, dtensor):
        return value, None
    from torch.distributed.tensor import Shard

    mesh, placements = value.device_mesh, tuple(value.placements)
    if mesh.ndim != 1 or placements != (Shard(0),):
        raise ValueError(f"{name} is a DTensor placed {placements} on a {mesh.ndim}-D mesh; a vocab-parallel "
                         f"weight must be placed (Shard(0),) on a 1-D mesh (a replicated weight: pass the whole "
                         f"tensor, e.g. inside the FSDP module's forward, where it is unsharded)")
    return value.to_local(), mesh.get_group()


def local_shards(process_group, vocab_start, hidden: dict, shards: dict):
    """Resolve the vocab-parallel arguments of a fused op; no collective, no host read.

    Args:
        process_group: None or a ``torch.distributed.ProcessGroup``.
        vocab_start: None or an int >= 0, this rank's first id (only with a plain-tensor shard).
        hidden: ``{name: tensor}`` of the inputs that must be plain tensors (the same on every rank).
        shards: ``{name: tensor or None}`` of the vocab-sharded inputs (weights ``[V_local, H]``,
            biases ``[V_local]``): each a plain tensor (this rank's slice) or a DTensor placed
            ``(Shard(0),)`` on a 1-D mesh.

    Returns:
        ``(group, local_tensors)``: the process group (None for the single-process path: no
        group and no DTensor) and the tensors of ``shards``, DTensors replaced by their local
        shard, in order.
    """
    dtensor = _dtensor_class()
    if process_group is None and vocab_start is None and (
            dtensor is None or not any(isinstance(value, dtensor) for value in shards.values())):
        return None, list(shards.values())  # one device: the fast path
    if process_group is not None and not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(f"process_group must be a torch.distributed.ProcessGroup or None, "
                        f"got {type(process_group).__name__}")
    validation.integer("vocab_start", vocab_start, minimum=0, optional=True)
    group, local = process_group, []
    for name, value in shards.items():
        value, mesh_group = _unwrap(name, value, dtensor)
        if mesh_group is not None:
            if group is not None and group.group_name != mesh_group.group_name:
                raise ValueError(f"{name} is a DTensor on process group {mesh_group.group_name!r}, but "
                                 f"{'process_group' if process_group is not None else 'another input'} is group "
                                 f"{group.group_name!r}")
            if vocab_start is not None:
                raise ValueError(f"vocab_start is for plain-tensor shards; the DTensor {name} carries its layout")
            group = mesh_group
        local.append(value)
    if group is None and vocab_start is not None:
        raise ValueError("vocab_start needs process_group (or a DTensor weight)")
    if group is not None and dist.get_rank(group) < 0:
        raise ValueError(f"this process (global rank {dist.get_rank()}) is not in process_group")
    if group is not None and dtensor is not None:
        for name, value in hidden.items():
            if isinstance(value, dtensor):
                raise TypeError(f"{name} must be a plain tensor, the same on every rank (vocab-parallel), "
                                f"got a DTensor")
    return group, local


def _record(size, vocab_start, chunk_size, hidden, ids):
    device = hidden.device
    with torch.no_grad():
        if ids is None or ids.numel() == 0:
            id_range = torch.zeros(2, dtype=torch.float64, device=device)
        else:
            id_range = torch.stack([ids.min(), ids.max()]).to(torch.float64)
        # the sum over sqrt(numel) is on the norm's scale (Cauchy-Schwarz: |sum| <= sqrt(numel) * norm)
        checksum = torch.stack([hidden.sum(dtype=torch.float32) / max(1, hidden.numel()) ** 0.5,
                                torch.linalg.vector_norm(hidden, dtype=torch.float32)])
        sizes = torch.tensor([size, -1 if vocab_start is None else vocab_start, hidden.shape[0], chunk_size or 0],
                             dtype=torch.float64, device=device)
        return torch.cat([sizes, id_range, checksum.to(torch.float64)])


def _starts(records, weight_name):
    """Each rank's first id, after checking that the shards tile ``[0, V)``."""
    sizes = [int(r["size"]) for r in records]
    if min(sizes) < 1:
        raise ValueError(f"{weight_name} must hold at least one vocab row on every rank, got shard sizes {sizes}")
    given = [int(r["start"]) for r in records]
    if all(s < 0 for s in given):
        return [sum(sizes[:rank]) for rank in range(len(sizes))]
    if any(s < 0 for s in given):
        raise ValueError(f"vocab_start must be given on every rank of process_group or on none, got {given} "
                         f"(-1: not given)")
    end = 0
    for rank in sorted(range(len(sizes)), key=given.__getitem__):
        if given[rank] != end:
            raise ValueError(f"the {weight_name} shards of process_group do not tile [0, V): rank {rank} starts at "
                             f"vocab_start={given[rank]}, but the shards below it end at {end} "
                             f"(starts {given}, sizes {sizes})")
        end += sizes[rank]
    return given


def _check_same(records, field, message):
    values = [r[field] for r in records]
    if any(v != values[0] for v in values):
        raise ValueError(f"{message}, got {[int(v) for v in values]} over the ranks of process_group")


def _check_checksums(records, hidden_name):
    first = records[0]
    tolerance = _CHECKSUM_RTOL * first["hidden_norm"]
    for rank, r in enumerate(records):
        if max(abs(r[f] - first[f]) for f in ("hidden_sum", "hidden_norm")) > tolerance:
            raise ValueError(f"{hidden_name} differs between ranks 0 and {rank} of process_group: a vocab-parallel "
                             f"loss needs the same hidden states on every rank (a Shard(0) DTensor from FSDP is a "
                             f"data-parallel shard: unshard it first)")


def layout(group, vocab_start, size, *, hidden, hidden_name, weight_name, chunk_size=None, ids=None,
           ids_name="token_ids", negative_ids_allowed=True) -> VocabShard | None:
    """All-gather the ranks' records, check them, and return this rank's :class:`VocabShard`.

    Args:
        group: the process group from :func:`local_shards`; None (one device) returns None at once.
        vocab_start: this rank's first id or None (group-rank order).
        size: this rank's shard size (``weight.shape[0]`` of the local shard).
        hidden: the flat ``[N, H]`` hidden states; every rank must hold the same ones (checked
            by row count and a checksum: sum and norm within a relative ``1e-6``). Other
            replicated inputs (labels, a teacher's hidden states) are not checked.
        chunk_size: the caller's chunk size or None; it must be the same on every rank, since each
            chunk is one round of collectives.
        ids: optional integer target ids (``[N]`` or ``[N, k]``) that must lie in ``[0, V)``;
            negative ids mark ignored rows when ``negative_ids_allowed``.

    Raises:
        ValueError naming the argument when the ranks disagree, the shards do not tile ``[0, V)``
        or an id is out of range; the same error on every rank.
    """
    if group is None:
        return None
    gathered = _all_gather(_record(size, vocab_start, chunk_size, hidden, ids), group)
    records = [dict(zip(_FIELDS, row)) for row in gathered.tolist()]
    _check_same(records, "rows", f"{hidden_name} must have the same number of rows on every rank (vocab-parallel)")
    _check_same(records, "chunk", "chunk_size must be the same on every rank (or None on every rank)")
    _check_checksums(records, hidden_name)
    starts = _starts(records, weight_name)
    vocab = sum(int(r["size"]) for r in records)
    if ids is not None:
        low, high = min(r["id_min"] for r in records), max(r["id_max"] for r in records)
        if high >= vocab or (low < 0 and not negative_ids_allowed):
            bad = int(high if high >= vocab else low)
            raise ValueError(f"{ids_name} holds id {bad}, outside [0, V={vocab}) (V: the {weight_name} shards of "
                             f"process_group added up)")
    return VocabShard(group.group_name, starts[dist.get_rank(group)], size, vocab)
