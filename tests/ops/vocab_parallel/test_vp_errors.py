"""Bad vocab-parallel arguments raise TypeError/ValueError naming the argument, on every rank alike
(a rank that raised alone would leave the others waiting in a collective)."""

import pytest
import torch
import torch.distributed as dist

from sleepcore import ops

V, H, N = 1271, 8, 6
SIZES = (636, 635)


def _inputs(rank, *, weight_rows=None):
    torch.manual_seed(0)  # the same tensors on every rank
    hidden, weight = torch.randn(N, H), torch.randn(V, H)
    start = 0 if rank == 0 else SIZES[0]
    stop = start + SIZES[rank] if weight_rows is None else start + weight_rows
    return hidden, weight[start:stop], torch.randint(0, V, (N,)), start


def _logprobs(rank, **changes):
    hidden, weight, ids, _ = _inputs(rank)
    kwargs = dict(hidden=hidden, weight=weight, token_ids=ids, process_group=dist.group.WORLD)
    kwargs.update(changes)
    return ops.fused_linear_logprobs(**kwargs)


def _dtensor(placement, **changes):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    torch.manual_seed(0)
    hidden, weight = torch.randn(N, H), torch.randn(V, H)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    weight = distribute_tensor(weight, mesh, [Shard(0) if placement == "shard" else Replicate()])
    return ops.fused_linear_logprobs(hidden, weight, torch.zeros(N, dtype=torch.long), **changes)


def _case(rank, name):
    hidden, weight, ids, start = _inputs(rank)
    if name == "overlapping vocab_start":
        return _logprobs(rank, vocab_start=0 if rank == 0 else 600)
    if name == "vocab_start on one rank":
        return _logprobs(rank, vocab_start=0 if rank == 0 else None)
    if name == "token id = V":
        return _logprobs(rank, token_ids=ids.index_fill(0, torch.tensor([2]), V))
    if name == "hidden differs":
        return _logprobs(rank, hidden=hidden + rank)
    if name == "rows differ":
        return _logprobs(rank, hidden=hidden[: N - rank], token_ids=ids[: N - rank])
    if name == "chunk_size differs":
        return _logprobs(rank, chunk_size=2 + rank)
    if name == "empty shard":
        return _logprobs(rank, weight=_inputs(rank, weight_rows=0 if rank else None)[1])
    if name == "top-k id < 0":
        teacher_ids = torch.arange(3).repeat(N, 1).index_fill(0, torch.tensor([4]), -1)
        return ops.fused_linear_topk_jsd(hidden, weight, teacher_ids, torch.full((N, 3), -2.0),
                                         process_group=dist.group.WORLD)
    if name == "policy token id > V":
        old_logp, advantages = torch.zeros(2, 3), torch.ones(2)
        return ops.fused_linear_policy_loss(hidden.reshape(2, 3, H), weight, (ids + V).reshape(2, 3), old_logp,
                                            advantages, process_group=dist.group.WORLD)
    if name == "teacher split differently":
        return ops.fused_linear_jsd(hidden, weight, hidden, _inputs(1 - rank)[1], process_group=dist.group.WORLD)
    if name == "replicated DTensor":
        return _dtensor("replicate")
    if name == "DTensor with vocab_start":
        return _dtensor("shard", vocab_start=start)
    raise AssertionError(name)


def error_job(rank, world, *, name):
    try:
        _case(rank, name)
    except (TypeError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


ERRORS = [  # (case, exception, the start of its message)
    ("overlapping vocab_start", "ValueError", "the weight shards of process_group do not tile [0, V)"),
    ("vocab_start on one rank", "ValueError", "vocab_start must be given on every rank"),
    ("token id = V", "ValueError", "token_ids holds id 1271, outside [0, V=1271)"),
    ("hidden differs", "ValueError", "hidden differs between ranks 0 and 1"),
    ("rows differ", "ValueError", "hidden must have the same number of rows on every rank"),
    ("chunk_size differs", "ValueError", "chunk_size must be the same on every rank"),
    ("empty shard", "ValueError", "weight must hold at least one vocab row on every rank"),
    ("top-k id < 0", "ValueError", "teacher_topk_ids holds id -1"),
    ("policy token id > V", "ValueError", "token_ids holds id"),
    ("teacher split differently", "ValueError", "student_weight and teacher_weight must share V"),
    ("replicated DTensor", "ValueError", "weight is a DTensor placed (Replicate(),)"),
    ("DTensor with vocab_start", "ValueError", "vocab_start is for plain-tensor shards"),
]


@pytest.mark.parametrize("name,error,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_every_rank_raises_the_same_error(ranks, name, error, message):
    results = ranks.run(error_job, name=name)
    for rank, result in enumerate(results):
        assert result.startswith(f"{error}: ") and message in result, f"rank {rank}: {result}"
    assert len(set(results)) == 1 or name in ("teacher split differently",), results


@pytest.mark.parametrize("changes,error,message", [
    (dict(process_group="world"), TypeError, "^process_group must be a torch.distributed.ProcessGroup"),
    (dict(vocab_start=3), ValueError, "^vocab_start needs process_group"),
    (dict(vocab_start=-1), ValueError, "^vocab_start"),
    (dict(vocab_start=1.0), TypeError, "^vocab_start"),
])
def test_argument_errors_without_ranks(changes, error, message):
    hidden, weight = torch.randn(N, H), torch.randn(V, H)
    with pytest.raises(error, match=message):
        ops.fused_linear_logprobs(hidden, weight, torch.zeros(N, dtype=torch.long), **changes)
