"""Every op passes torch.library.opcheck, matches under torch.compile(fullgraph=True), and rejects
bad input with an exception that names the argument."""

import pytest
import torch

from sleepcore import ops


def linear_args(n=9, h=8, v=40, dtype=torch.float32):
    sh = torch.randn(n, h, dtype=dtype, requires_grad=True)
    sw = torch.randn(v, h, dtype=dtype, requires_grad=True)
    th, tw = torch.randn(n, h + 3, dtype=dtype), torch.randn(v, h + 3, dtype=dtype)
    return sh, sw, th, tw


def topk_teacher(n=9, v=40, k=4):
    logp = torch.log_softmax(torch.randn(n, v), -1).topk(k, -1)
    return logp.indices, logp.values


def opcheck_cases(dtype=torch.float32):
    """(op, args); ``dtype`` is the fused linear ops' hidden states, weights and biases (the
    divergence-of-logits cases stay float32)."""
    sh, sw, th, tw = linear_args(dtype=dtype)
    bias = torch.randn(40, dtype=dtype, requires_grad=True)
    scale = torch.rand(9)
    ids, logprobs = topk_teacher()
    logits_s, logits_t = torch.randn(9, 40, requires_grad=True), torch.randn(9, 40)
    sleepcore = torch.ops.sleepcore
    return [
        (sleepcore.fused_linear_jsd.default, (sh, sw, th, tw, scale, bias, None, 0.5, 1.3, 4, "auto", True, True, True)),
        (sleepcore.fused_linear_jsd_rows.default, (sh, sw, th, tw, scale, None, None, 0.0, 1.0, 4, "auto")),
        (sleepcore.fused_linear_topk_jsd.default, (sh, sw, ids, logprobs, scale, bias, 1.0, 0.7, 5, "auto", True, True,
                                                   True)),
        (sleepcore.fused_linear_topk_jsd_rows.default, (sh, sw, ids, logprobs, scale, None, 0.5, 1.0, 5, "auto")),
        (sleepcore.generalized_jsd.default, (logits_s, logits_t, scale, 0.5, 2.0, "auto", True)),
        (sleepcore.generalized_jsd_rows.default, (logits_s, logits_t, scale, 0.1, 1.0, "auto")),
        (sleepcore.fused_linear_policy_loss.default, (*policy_inputs(dtype=dtype), None, None, 1.0, 6, "auto", "grpo",
                                                      0.2, 0.2, None, 0.0, "k3", 0.0, None, True, True, False)),
        (sleepcore.fused_linear_policy_loss.default, (*policy_inputs(bias, dtype=dtype), torch.randn(3, 3),
                                                      torch.randn(3, 3), 0.7, 4, "auto", "gspo", 0.2, 0.3, 2.0, 0.1,
                                                      "k2", 0.01, 1.5, True, True, True)),
    ]


def policy_inputs(bias=None, B=3, T=3, dtype=torch.float32):
    """hidden [B*T, H], weight, bias, ids (-1: masked), old_logp, advantages, mask, aggregation weights."""
    sh, sw, _, _ = linear_args(n=B * T, dtype=dtype)
    mask = torch.rand(B, T) > 0.3
    ids = torch.where(mask.reshape(-1), torch.randint(0, 40, (B * T,)), -1)
    return sh, sw, bias, ids, torch.randn(B, T), torch.randn(B), mask, mask.float() / mask.sum().clamp_min(1)


@pytest.mark.parametrize("case", range(8))
def test_opcheck(seed, case):
    op, args = opcheck_cases()[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [0, 1, 2, 3, 6, 7])
def test_opcheck_16bit(seed, case, dtype):
    """16-bit fused linear ops: on the CPU they compute in float32, and must still return the fake
    ops' dtypes (gradients in the inputs' dtypes)."""
    op, args = opcheck_cases(dtype)[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_compile_fullgraph_parity(seed, reduction):
    sh, sw, th, tw = linear_args()
    ids, logprobs = topk_teacher()
    labels = torch.tensor([1, -100, 3, 4, 5, -100, 7, 8, 9])

    def losses(sh, sw):
        a = ops.fused_linear_jsd(sh, sw, th, tw, labels, reduction=reduction, num_items_in_batch=torch.tensor(11))
        b = ops.fused_linear_topk_jsd(sh, sw, ids, logprobs, labels, reduction=reduction, beta=0.2)
        c = ops.generalized_jsd(sh @ sw.T, th[:, :8] @ tw[:, :8].T, labels, reduction=reduction, temperature=0.7)
        return (a + b + c).sum()

    eager = losses(sh, sw)
    eager_grads = torch.autograd.grad(eager, (sh, sw))
    compiled_fn = torch.compile(losses, fullgraph=True)
    compiled = compiled_fn(sh, sw)
    compiled_grads = torch.autograd.grad(compiled, (sh, sw))
    torch.testing.assert_close(compiled, eager)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want)


BAD_LINEAR = [
    ("student_weight", lambda sh, sw, th, tw: dict(student_weight=sw[:, :5])),
    ("share V", lambda sh, sw, th, tw: dict(teacher_weight=tw[:30])),
    ("same number of tokens", lambda sh, sw, th, tw: dict(teacher_hidden=th[:5])),
    ("share one dtype", lambda sh, sw, th, tw: dict(student_weight=sw.detach().double().float().half())),
    ("one device", lambda sh, sw, th, tw: dict(teacher_weight=tw.to("meta"))),
    ("beta", lambda sh, sw, th, tw: dict(beta=1.5)),
    ("beta", lambda sh, sw, th, tw: dict(beta=-0.1)),
    ("temperature", lambda sh, sw, th, tw: dict(temperature=0.0)),
    ("labels", lambda sh, sw, th, tw: dict(labels=torch.zeros(4, dtype=torch.long))),
    ("labels", lambda sh, sw, th, tw: dict(labels=torch.zeros(9))),
    ("reduction", lambda sh, sw, th, tw: dict(reduction="mean")),
    ("chunk_size", lambda sh, sw, th, tw: dict(chunk_size=0)),
    ("num_items_in_batch", lambda sh, sw, th, tw: dict(num_items_in_batch=0)),
    ("student_hidden", lambda sh, sw, th, tw: dict(student_hidden=sh.detach().long())),
    ("student_hidden", lambda sh, sw, th, tw: dict(student_hidden=sh.detach()[0])),
    ("student_bias", lambda sh, sw, th, tw: dict(student_bias=torch.zeros(41))),
]


@pytest.mark.parametrize("match,change", BAD_LINEAR, ids=[f"{i}-{m}" for i, (m, _) in enumerate(BAD_LINEAR)])
def test_fused_linear_jsd_rejects_bad_input(match, change):
    sh, sw, th, tw = linear_args()
    kwargs = dict(student_hidden=sh, student_weight=sw, teacher_hidden=th, teacher_weight=tw, labels=None)
    kwargs.update(change(sh, sw, th, tw))
    with pytest.raises((ValueError, TypeError), match=match):
        ops.fused_linear_jsd(**kwargs)


OPTIONS = [  # (option, value, error): a wrong type raises TypeError, a bad value ValueError
    ("beta", 1.5, ValueError), ("beta", True, TypeError), ("beta", "0.5", TypeError),
    ("temperature", 0.0, ValueError), ("temperature", float("nan"), ValueError), ("temperature", None, TypeError),
    ("reduction", "mean", ValueError), ("reduction", "avg", ValueError), ("reduction", 1, TypeError),
    ("backend", "gpu", ValueError), ("backend", None, TypeError),
    ("chunk_size", 0, ValueError), ("chunk_size", 2.0, TypeError), ("chunk_size", True, TypeError),
    ("num_items_in_batch", 0, ValueError), ("num_items_in_batch", torch.ones(2), ValueError),
    ("num_items_in_batch", "9", TypeError), ("num_items_in_batch", True, TypeError),
]


@pytest.mark.parametrize("option,value,error", OPTIONS, ids=[f"{o}-{v!r}" for o, v, _ in OPTIONS])
def test_options_follow_the_rule(option, value, error):
    sh, sw, th, tw = linear_args()
    with pytest.raises(error, match=f"^{option}"):
        ops.fused_linear_jsd(sh, sw, th, tw, **{option: value})
    if option != "chunk_size" and (option, value) != ("reduction", "mean"):  # generalized_jsd has TRL's "mean"
        with pytest.raises(error, match=f"^{option}"):
            ops.generalized_jsd(torch.zeros(2, 5), torch.zeros(2, 5), **{option: value})


@pytest.mark.parametrize("match,teacher", [
    ("k = teacher_topk_ids", lambda: (torch.zeros(9, 41, dtype=torch.long), torch.zeros(9, 41))),
    ("teacher_topk_ids", lambda: (torch.zeros(9, 3), torch.zeros(9, 3))),
    ("same shape", lambda: (torch.zeros(9, 3, dtype=torch.long), torch.zeros(9, 4))),
    ("one row per token", lambda: (torch.zeros(8, 3, dtype=torch.long), torch.zeros(8, 3))),
])
def test_topk_rejects_bad_teacher(match, teacher):
    sh, sw, _, _ = linear_args()
    ids, logprobs = teacher()
    with pytest.raises((ValueError, TypeError), match=match):
        ops.fused_linear_topk_jsd(sh, sw, ids, logprobs)


@pytest.mark.parametrize("match,student,teacher", [
    ("same shape", torch.zeros(3, 10), torch.zeros(3, 11)),
    ("share one dtype", torch.zeros(3, 10), torch.zeros(3, 10, dtype=torch.bfloat16)),
    ("student_logits", torch.zeros(3, 10, dtype=torch.long), torch.zeros(3, 10, dtype=torch.long)),
])
def test_generalized_jsd_rejects_bad_input(match, student, teacher):
    with pytest.raises((ValueError, TypeError), match=match):
        ops.generalized_jsd(student, teacher)


def test_triton_backend_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        ops.generalized_jsd(torch.zeros(2, 5), torch.zeros(2, 5), backend="triton")
