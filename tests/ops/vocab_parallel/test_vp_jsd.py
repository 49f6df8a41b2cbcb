"""ops.fused_linear_jsd and ops.fused_linear_topk_jsd with the lm_head split over 2 gloo ranks equal
the one-device ops: loss, hidden gradient, the weight and bias shards' gradients (the teacher side
never gets one)."""

import pytest
import torch

from _tolerance import assert_low_precision
from _vp_cases import check_against_single, parts, run_jsd, run_topk_jsd, sharded_job, whole
from sleepcore import reference

V = 1271
REDUCTIONS = ["batchmean", "sum", "none"]


def jsd_inputs(n=37, h=24, teacher_h=20, vocab=V, *, bias=True):
    labels = torch.randint(0, vocab, (n,)).masked_fill(torch.rand(n) < 0.25, -100)
    inputs = dict(hidden=torch.randn(n, h) * 2, weight=torch.randn(vocab, h) / h**0.5,
                  teacher_hidden=torch.randn(n, teacher_h) * 2,
                  teacher_weight=torch.randn(vocab, teacher_h) / teacher_h**0.5, labels=labels, grad_rows=torch.randn(n))
    if bias:
        inputs.update(bias=torch.randn(vocab), teacher_bias=torch.randn(vocab))
    return inputs


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_jsd_matches_one_device(seed, ranks, beta, reduction):
    options = dict(beta=beta, reduction=reduction, temperature=0.7, chunk_size=10)
    check_against_single(ranks, run_jsd, jsd_inputs(), (636, 635), options=options)


def test_jsd_uneven_shards_num_items_and_no_bias(seed, ranks):
    options = dict(beta=0.1, temperature=2.0, num_items_in_batch=50)
    check_against_single(ranks, run_jsd, jsd_inputs(bias=False), (871, 400), order=[1, 0], how="vocab_start",
                         options=options)


def test_jsd_dtensor_weights(seed, ranks):
    check_against_single(ranks, run_jsd, jsd_inputs(), (636, 635), how="dtensor", options=dict(beta=0.5))


def test_jsd_every_token_ignored(seed, ranks):
    inputs = jsd_inputs(n=5)
    inputs["labels"].fill_(-100)
    single = check_against_single(ranks, run_jsd, inputs, (636, 635))
    assert single["loss"] == 0 and torch.all(single["hidden"] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_jsd_low_precision(seed, ranks, dtype):
    """DESIGN.md's 16-bit rule on every rank: error vs the fp32 reference <= 2 x plain PyTorch's + 1e-2."""
    inputs = jsd_inputs(h=64, teacher_h=64, bias=False)
    low = {name: value.to(dtype) if name in ("hidden", "weight", "teacher_hidden", "teacher_weight") else value
           for name, value in inputs.items()}
    sizes = (636, 635)
    results = ranks.run(sharded_job, run=run_jsd, inputs=low, parts=parts(sizes), options=dict(beta=0.5))
    expected = run_jsd(inputs, whole, dict(beta=0.5))
    hidden, weight = whole(low["hidden"]), whole(low["weight"])
    plain_loss = reference.fused_linear_jsd(hidden, weight, low["teacher_hidden"], low["teacher_weight"],
                                            low["labels"], beta=0.5, upcast=False)
    plain = dict(loss=plain_loss, **dict(zip(("hidden", "weight"),
                                             torch.autograd.grad(1.7 * plain_loss.float(), (hidden, weight)))))
    for rank, (result, (start, stop)) in enumerate(zip(results, parts(sizes))):
        assert result["hidden"].dtype == result["weight"].dtype == dtype
        for name in ("loss", "hidden", "weight"):
            part = (lambda t: t[start:stop]) if name == "weight" else (lambda t: t)  # noqa: E731
            assert_low_precision(result[name], part(expected[name]), part(plain[name]), f"rank {rank} {name}")


def topk_inputs(k, n=37, h=24, vocab=V, *, split=636, bias=True):
    """A teacher's top-k ids and log-probs, except that (when k fits in a shard) row 0 holds k ids
    of the first shard and row 1 k ids of the second (with the teacher's log-probs of those ids, so the rest bin keeps a
    well-conditioned mass); the other rows' ids mostly span both shards."""
    teacher_logp = torch.log_softmax(torch.randn(n, vocab) * 2, -1)
    ids = teacher_logp.topk(k, dim=-1).indices
    if k <= min(split, vocab - split):
        ids[0] = torch.randperm(split)[:k]
        ids[1] = split + torch.randperm(vocab - split)[:k]
        on_first = ids < split
        if k > 1:
            assert (on_first.any(-1) & ~on_first.all(-1)).sum() > n // 2, "top-k ids should span both shards"
    inputs = dict(hidden=torch.randn(n, h) * 2, weight=torch.randn(vocab, h) / h**0.5, topk_ids=ids,
                  topk_logprobs=teacher_logp.gather(-1, ids), labels=torch.rand(n) > 0.2, grad_rows=torch.randn(n))
    if bias:
        inputs["bias"] = torch.randn(vocab)
    return inputs


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_topk_matches_one_device(seed, ranks, beta, reduction):
    options = dict(beta=beta, reduction=reduction, temperature=2.0, chunk_size=10)
    check_against_single(ranks, run_topk_jsd, topk_inputs(8), (636, 635), options=options)


@pytest.mark.parametrize("k", [1, 64])
def test_topk_other_k_and_uneven_shards(seed, ranks, k):
    inputs = topk_inputs(k, split=400, bias=False)
    inputs["topk_ids"] = inputs["topk_ids"].int()
    check_against_single(ranks, run_topk_jsd, inputs, (400, 871), options=dict(beta=0.3, temperature=0.7))


@pytest.mark.parametrize("k", [30, 37])
def test_topk_small_rest_and_k_equal_to_v(seed, ranks, k):
    """k = V leaves the rest bins empty (floored at log(1e-30)); k = 30 of 37 leaves a small rest."""
    inputs = topk_inputs(k, n=12, vocab=37, split=19)
    check_against_single(ranks, run_topk_jsd, inputs, (19, 18), options=dict(beta=0.5, reduction="none"))


def test_topk_dtensor_weight(seed, ranks):
    check_against_single(ranks, run_topk_jsd, topk_inputs(8), (636, 635), how="dtensor", options=dict(beta=0.0))
