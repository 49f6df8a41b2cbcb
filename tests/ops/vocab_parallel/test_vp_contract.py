"""The vocab-parallel custom ops pass torch.library.opcheck on 2 gloo ranks (each rank checks its
shard, the collectives run in step), and one compiles with torch.compile(fullgraph=True)."""

import torch
import torch.distributed as dist

import sleepcore.ops  # noqa: F401 - registers the torch.ops.sleepcore ops in the ranks

V, H, N = 40, 8, 9
SIZES = (21, 19)


def _shard_inputs(rank):
    torch.manual_seed(0)
    start = 0 if rank == 0 else SIZES[0]
    shard = slice(start, start + SIZES[rank])
    hidden = torch.randn(N, H, requires_grad=True)
    weight = torch.randn(V, H)[shard].requires_grad_()
    bias = torch.randn(V)[shard].requires_grad_()
    teacher_hidden, teacher_weight = torch.randn(N, H + 3), torch.randn(V, H + 3)[shard]
    group = (dist.group.WORLD.group_name, start, V)
    return hidden, weight, bias, teacher_hidden, teacher_weight, group


def _cases(rank):
    hidden, weight, bias, teacher_hidden, teacher_weight, group = _shard_inputs(rank)
    scale = torch.rand(N)
    ids = torch.randint(0, V, (N,)).masked_fill(torch.rand(N) < 0.3, -1)
    top = torch.log_softmax(torch.randn(N, V), -1).topk(4, -1)
    B, T = 3, 3
    mask = torch.rand(B, T) > 0.3
    weights = mask.float() / mask.sum().clamp_min(1)
    lse, entropy = torch.randn(N), torch.rand(N)
    ops = torch.ops.sleepcore
    return [
        (ops.vocab_parallel_linear_jsd.default, (hidden, weight, teacher_hidden, teacher_weight, scale, bias, None,
                                                 0.5, 1.3, 4, "auto", *group, True, True, True)),
        (ops.vocab_parallel_linear_jsd_rows.default, (hidden, weight, teacher_hidden, teacher_weight, scale, None,
                                                      None, 1.0, 1.0, 4, "auto", *group)),
        (ops.vocab_parallel_linear_topk_jsd.default, (hidden, weight, top.indices, top.values, scale, bias, 0.0, 0.7,
                                                      5, "auto", *group, True, True, True)),
        (ops.vocab_parallel_linear_topk_jsd_rows.default, (hidden, weight, top.indices, top.values, scale, None, 0.5,
                                                           1.0, 5, "auto", *group)),
        (ops.vocab_parallel_linear_logprobs.default, (hidden, weight, ids, bias, 0.8, 4, "auto", True, *group)),
        (ops.vocab_parallel_linear_logprobs_backward.default,  # no double backward: no input requires grad
         (torch.randn(N), torch.randn(N), hidden.detach(), weight.detach(), ids, bias.detach(), lse, entropy, 0.8, 4,
          "auto", *group, True, True, True)),
        (ops.vocab_parallel_linear_policy_loss.default, (hidden, weight, bias, ids, torch.randn(B, T), torch.randn(B),
                                                         mask, weights, torch.randn(B, T), None, 0.7, 6, "auto",
                                                         "gspo", 0.2, 0.3, 2.0, 0.1, "k2", 0.01, None, *group, True,
                                                         True, True)),
    ]


def opcheck_job(rank, world):
    failures = []
    for op, args in _cases(rank):
        try:
            torch.library.opcheck(op, args)
        except Exception as error:  # noqa: BLE001 - collected, then reported together
            failures.append(f"{op}: {error}")
    return failures


def compile_job(rank, world):
    hidden, weight, _, teacher_hidden, teacher_weight, group = _shard_inputs(rank)
    scale = torch.ones(N) / N

    def loss(hidden, weight):
        return torch.ops.sleepcore.vocab_parallel_linear_jsd(hidden, weight, teacher_hidden, teacher_weight, scale,
                                                             None, None, 0.5, 1.0, 4, "auto", *group, True, True,
                                                             False)[0]

    eager = loss(hidden, weight)
    eager_grads = torch.autograd.grad(eager, (hidden, weight))
    compiled = torch.compile(loss, fullgraph=True)(hidden, weight)
    compiled_grads = torch.autograd.grad(compiled, (hidden, weight))
    torch.testing.assert_close(compiled, eager)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want)


def test_opcheck(ranks):
    assert ranks.run(opcheck_job) == [[], []]


def test_compile_fullgraph(ranks):
    ranks.run(compile_job)
