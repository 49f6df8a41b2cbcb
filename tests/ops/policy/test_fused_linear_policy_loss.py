"""ops.fused_linear_policy_loss (gradients in the forward pass) against the fp32 references
(reference.fused_linear_logprobs, then reference.policy_loss), and the FusedLinearPolicyLoss module over it.

opcheck of the custom op is in tests/ops/test_ops_contract.py.
"""

import pytest
import torch

from sleepcore import ops, reference
from sleepcore.losses import FusedLinearPolicyLoss
from _tolerance import assert_close_fp32, assert_low_precision

LOSS_TYPES = ["grpo", "dapo", "dr_grpo", "gspo", "cispo"]
AGGS = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
METRICS = ["clip_frac", "approx_kl", "entropy", "ratio_mean", "ratio_max"]


def make_batch(B=5, T=9, H=24, V=1271, *, dtype=torch.float32, bias=False, adv_2d=False):
    """Random inputs with ragged masks: one full sequence and one with no kept token."""
    hidden = torch.randn(B, T, H).to(dtype).requires_grad_()
    weight = (torch.randn(V, H) / H**0.5 * 3).to(dtype).requires_grad_()
    bias = torch.randn(V).to(dtype).requires_grad_() if bias else None
    token_ids = torch.randint(0, V, (B, T))
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0], lengths[-1] = T, 0
    mask = torch.arange(T)[None, :] < lengths[:, None]
    with torch.no_grad():
        logp = reference.fused_linear_logprobs(hidden.reshape(-1, H), weight, token_ids.reshape(-1), bias=bias)[0]
    old_logp = logp.reshape(B, T) + torch.randn(B, T) * 0.2
    return dict(hidden=hidden, weight=weight, token_ids=token_ids, old_logp=old_logp,
                advantages=torch.randn(B, T) if adv_2d else torch.randn(B), mask=mask, bias=bias,
                ref_logp=logp.reshape(B, T) + torch.randn(B, T) * 0.2,
                rollout_logp=old_logp + torch.randn(B, T) * 0.1)


def run_op(batch, fn=ops.fused_linear_policy_loss, **options):
    """The op's ``(loss, metrics)``; rollout_logp only with tis_cap, ref_logp only with kl_coef."""
    return fn(batch["hidden"], batch["weight"], batch["token_ids"], batch["old_logp"], batch["advantages"],
              batch["mask"], bias=batch["bias"], ref_logp=batch["ref_logp"] if "kl_coef" in options else None,
              rollout_logp=batch["rollout_logp"] if "tis_cap" in options else None, **options)


def run_reference(batch, *, temperature=1.0, chunk_size=None, backend=None, **options):
    hidden = batch["hidden"]
    B, T, H = hidden.shape
    logp, entropy = reference.fused_linear_logprobs(hidden.reshape(-1, H), batch["weight"],
                                                    batch["token_ids"].reshape(-1), temperature=temperature,
                                                    bias=batch["bias"])
    return reference.policy_loss(logp.reshape(B, T), batch["old_logp"], batch["advantages"], batch["mask"],
                                 entropy=entropy.reshape(B, T),
                                 ref_logp=batch["ref_logp"] if "kl_coef" in options else None,
                                 rollout_logp=batch["rollout_logp"] if "tis_cap" in options else None, **options)


def check(batch, **options):
    """Loss, metrics and the gradients of ``1.7 * loss`` w.r.t. hidden, weight (and bias) match the reference."""
    loss, metrics = run_op(batch, **options)
    expected, expected_metrics = run_reference(batch, **options)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close_fp32(loss, expected, "loss")
    wrt = [batch[name] for name in ("hidden", "weight", "bias") if batch[name] is not None]
    for name, got, want in zip(("hidden", "weight", "bias"), torch.autograd.grad(loss * 1.7, wrt),
                               torch.autograd.grad(expected * 1.7, wrt)):
        assert got.dtype == batch[name].dtype
        assert_close_fp32(got, want, f"grad_{name}", accumulated=name != "hidden")
    for name in METRICS:
        assert metrics[name].dim() == 0 and not metrics[name].requires_grad
        assert_close_fp32(metrics[name], expected_metrics[name], name)


@pytest.mark.parametrize("agg", AGGS + [None])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_type_by_agg(seed, loss_type, agg):
    check(make_batch(adv_2d=agg == "token-mean"), loss_type=loss_type, agg=agg, chunk_size=2 * 9)


OPTIONS = [
    ("grpo", dict(clip_ratio_c=3.0, kl_coef=0.1, kl_estimator="k3", entropy_coef=0.01)),
    ("gspo", dict(kl_coef=0.05, kl_estimator="k2", tis_cap=2.0, agg="seq-mean-token-sum", eps_low=0.2)),
    ("cispo", dict(kl_coef=0.05, kl_estimator="k1", tis_cap=1.5, entropy_coef=0.02)),
    ("dapo", dict(eps_low=0.1, eps_high=0.3, agg="seq-mean-token-sum-norm", max_len=12, temperature=0.7)),
    ("dr_grpo", dict(tis_cap=None, clip_ratio_c=2.0, global_tokens=50, global_seqs=7)),
    ("dapo", dict(global_tokens=torch.tensor(40), chunk_size=1, temperature=1.5)),
    ("grpo", dict(global_seqs=torch.tensor(8.0), chunk_size=1000, entropy_coef=-0.02)),
]


@pytest.mark.parametrize("shape", [(5, 9, 24, 1271), (3, 13, 61, 999)])
@pytest.mark.parametrize("case", range(len(OPTIONS)))
def test_options_with_bias(seed, case, shape):
    loss_type, options = OPTIONS[case]
    check(make_batch(*shape, bias=True, adv_2d=case % 2 == 1), loss_type=loss_type, **options)


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_fully_masked_batch_gives_zero_loss_and_grads(seed, loss_type, agg):
    batch = make_batch(bias=True)
    batch["mask"] = torch.zeros_like(batch["mask"])
    loss, metrics = run_op(batch, loss_type=loss_type, agg=agg, kl_coef=0.1, entropy_coef=0.01, tis_cap=2.0)
    assert loss.item() == 0
    for grad in torch.autograd.grad(loss, (batch["hidden"], batch["weight"], batch["bias"])):
        assert torch.count_nonzero(grad) == 0
    assert all(metrics[name].item() == 0 for name in METRICS)


def test_mask_forms(seed):
    batch = make_batch()
    bool_mask = batch["mask"]
    loss, _ = run_op(batch)
    assert torch.equal(run_op(dict(batch, mask=bool_mask.float()))[0], loss)
    assert torch.equal(run_op(dict(batch, mask=bool_mask.to(torch.uint8)))[0], loss)
    everything = run_op(dict(batch, mask=None))[0]
    assert torch.equal(everything, run_op(dict(batch, mask=torch.ones_like(bool_mask)))[0])


def test_non_contiguous_inputs(seed):
    batch = make_batch(adv_2d=True)
    transposed = {name: batch[name].detach().transpose(0, 1).contiguous().transpose(0, 1)
                  for name in ("token_ids", "old_logp", "advantages", "mask")}
    hidden = batch["hidden"].detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not hidden.is_contiguous()
    loss, _ = run_op(batch)
    other, _ = run_op(dict(batch, hidden=hidden, **transposed))
    assert_close_fp32(other, loss, "loss")
    assert_close_fp32(torch.autograd.grad(other, hidden)[0], torch.autograd.grad(loss, batch["hidden"])[0], "grad")


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_micro_batches_sum_to_the_batch(seed, loss_type):
    batch = make_batch()
    hidden, weight, mask = batch["hidden"], batch["weight"], batch["mask"]
    full, _ = run_op(batch, loss_type=loss_type)
    full_grads = torch.autograd.grad(full, (hidden, weight))
    totals = dict(global_tokens=mask.sum(), global_seqs=5, max_len=9)
    hidden_parts, weight_sum, loss_sum = [], 0, 0
    for part in (slice(0, 2), slice(2, 3), slice(3, 5)):
        micro = {name: value[part] if isinstance(value, torch.Tensor) and name != "weight" else value
                 for name, value in batch.items()}
        micro["hidden"] = hidden[part].detach().requires_grad_()
        loss, _ = run_op(micro, loss_type=loss_type, **totals)
        grad_hidden, grad_weight = torch.autograd.grad(loss, (micro["hidden"], weight))
        hidden_parts.append(grad_hidden)
        weight_sum, loss_sum = weight_sum + grad_weight, loss_sum + loss
    assert_close_fp32(loss_sum, full, "loss")
    assert_close_fp32(torch.cat(hidden_parts), full_grads[0], "grad_hidden")
    assert_close_fp32(weight_sum, full_grads[1], "grad_weight", accumulated=True)


def away_from_clip_edges(batch, edges=(0.8, 1.2), margin=0.1):
    """Set ``old_logp`` to the fp32 log-prob (ratio 1) wherever a token's ratio lies within ``margin`` of a clip edge.

    At an edge the clipped loss's gradient jumps (a token's whole term switches on or off), so a
    16-bit log-prob error of 1e-3 there moves the gradient by far more than any accuracy rule allows:
    the op would be judged on which side of the edge rounding put one token, not on its accuracy.
    bf16 log-probs here are off by up to about 0.04 (a ratio off by 4%), hence the margin of 0.1.
    """
    with torch.no_grad():
        H = batch["hidden"].shape[-1]
        logp = reference.fused_linear_logprobs(batch["hidden"].reshape(-1, H), batch["weight"],
                                               batch["token_ids"].reshape(-1))[0].reshape(batch["old_logp"].shape)
        ratio = (logp - batch["old_logp"]).exp()
        near = torch.zeros_like(ratio, dtype=torch.bool)
        for edge in edges:
            near |= (ratio - edge).abs() < margin
    return dict(batch, old_logp=torch.where(near, logp, batch["old_logp"]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(seed, dtype):
    batch = away_from_clip_edges(make_batch(3, 11, 64, 1271))
    low = dict(batch, hidden=batch["hidden"].detach().to(dtype).requires_grad_(),
               weight=batch["weight"].detach().to(dtype).requires_grad_())
    loss, _ = run_op(low, kl_coef=0.1, entropy_coef=0.01)
    expected, _ = run_reference(batch, kl_coef=0.1, entropy_coef=0.01)
    all_logp = torch.log_softmax(low["hidden"] @ low["weight"].T, -1)  # plain PyTorch in the same dtype
    logp = all_logp.gather(-1, low["token_ids"][..., None])[..., 0]
    entropy = -(all_logp.exp() * all_logp).sum(-1)
    plain, _ = reference.policy_loss(logp, batch["old_logp"], batch["advantages"], batch["mask"],
                                     ref_logp=batch["ref_logp"], entropy=entropy, kl_coef=0.1, entropy_coef=0.01)
    assert_low_precision(loss, expected, plain, "loss")
    wrt = ("hidden", "weight")
    for name, got, want, base in zip(wrt, torch.autograd.grad(loss, [low[n] for n in wrt]),
                                     torch.autograd.grad(expected, [batch[n] for n in wrt]),
                                     torch.autograd.grad(plain, [low[n] for n in wrt])):
        assert got.dtype == dtype
        assert_low_precision(got, want, base, f"grad_{name}")


def test_compile_fullgraph(seed):
    batch = make_batch(bias=True, adv_2d=True)

    def fn(hidden, weight, bias):
        loss, metrics = ops.fused_linear_policy_loss(
            hidden, weight, batch["token_ids"], batch["old_logp"], batch["advantages"], batch["mask"], bias=bias,
            ref_logp=batch["ref_logp"], rollout_logp=batch["rollout_logp"], loss_type="gspo", temperature=0.9,
            kl_coef=0.1, entropy_coef=0.01, tis_cap=2.0, eps_low=0.2, global_tokens=torch.tensor(40), chunk_size=9)
        return loss, metrics

    wrt = (batch["hidden"], batch["weight"], batch["bias"])
    torch._dynamo.reset()
    eager, eager_metrics = fn(*wrt)
    compiled, compiled_metrics = torch.compile(fn, fullgraph=True)(*wrt)
    torch.testing.assert_close(compiled, eager)
    for got, want in zip(torch.autograd.grad(compiled * 1.3, wrt), torch.autograd.grad(eager * 1.3, wrt)):
        torch.testing.assert_close(got, want)
    for name in METRICS:
        torch.testing.assert_close(compiled_metrics[name], eager_metrics[name])


def test_triton_backend(seed):
    batch = make_batch()
    eager, _ = run_op(batch, entropy_coef=0.01)
    triton, _ = run_op(batch, entropy_coef=0.01, backend="triton")
    assert_close_fp32(triton, eager, "triton loss")
    wrt = (batch["hidden"], batch["weight"])
    for a, b in zip(torch.autograd.grad(triton, wrt), torch.autograd.grad(eager, wrt)):
        assert_close_fp32(a, b, "triton grad")


def _half_mask(batch):
    mask = batch["mask"].float()
    mask[0, 0] = 0.5
    return dict(mask=mask)


BAD_INPUTS = [
    (ValueError, "hidden", lambda b: dict(hidden=b["hidden"][0])),
    (TypeError, "hidden", lambda b: dict(hidden=b["hidden"].detach().long())),
    (ValueError, "weight", lambda b: dict(weight=b["weight"][:, :5])),
    (ValueError, "bias", lambda b: dict(bias=torch.zeros(7))),
    (TypeError, "share one dtype", lambda b: dict(weight=b["weight"].detach().half())),
    (ValueError, "token_ids", lambda b: dict(token_ids=b["token_ids"][:, :3])),
    (TypeError, "token_ids", lambda b: dict(token_ids=b["token_ids"].float())),
    (ValueError, "old_logp", lambda b: dict(old_logp=b["old_logp"][:, :3])),
    (TypeError, "old_logp", lambda b: dict(old_logp=b["old_logp"].long())),
    (TypeError, "old_logp", lambda b: dict(old_logp=[0.0])),
    (ValueError, "advantages", lambda b: dict(advantages=b["advantages"][:3])),
    (ValueError, "mask", lambda b: dict(mask=b["mask"][:, :3])),
    (ValueError, "mask", _half_mask),
    (ValueError, "ref_logp", lambda b: dict(ref_logp=b["ref_logp"][:2], kl_coef=0.1)),
    (ValueError, "rollout_logp", lambda b: dict(rollout_logp=b["rollout_logp"][:, :2])),
    (ValueError, "kl_coef != 0 needs ref_logp", lambda b: dict(kl_coef=0.1, ref_logp=None)),
    (ValueError, "one device", lambda b: dict(advantages=b["advantages"].to("meta"))),
    (ValueError, "loss_type", lambda b: dict(loss_type="ppo2")),
    (ValueError, "agg", lambda b: dict(agg="mean")),
    (ValueError, "kl_estimator", lambda b: dict(kl_estimator="k4")),
    (ValueError, "eps_low", lambda b: dict(eps_low=-0.1)),
    (TypeError, "eps_high", lambda b: dict(eps_high="0.2")),
    (ValueError, "clip_ratio_c", lambda b: dict(clip_ratio_c=1.0)),
    (ValueError, "clip_ratio_c", lambda b: dict(clip_ratio_c=3.0, loss_type="cispo")),
    (ValueError, "tis_cap", lambda b: dict(tis_cap=0.0)),
    (TypeError, "kl_coef", lambda b: dict(kl_coef=None)),
    (ValueError, "entropy_coef", lambda b: dict(entropy_coef=float("nan"))),
    (ValueError, "temperature", lambda b: dict(temperature=0.0)),
    (TypeError, "temperature", lambda b: dict(temperature="1")),
    (ValueError, "chunk_size", lambda b: dict(chunk_size=0)),
    (TypeError, "chunk_size", lambda b: dict(chunk_size=2.5)),
    (ValueError, "backend", lambda b: dict(backend="gpu")),
    (ValueError, "global_tokens", lambda b: dict(global_tokens=0)),
    (TypeError, "global_seqs", lambda b: dict(global_seqs=True)),
    (ValueError, "max_len", lambda b: dict(max_len=torch.tensor([3, 4]))),
    (ValueError, "out of range", lambda b: dict(token_ids=b["token_ids"] + 1271)),
]


@pytest.mark.parametrize("error,match,change", BAD_INPUTS, ids=[f"{i}-{m}" for i, (_, m, _) in enumerate(BAD_INPUTS)])
def test_bad_input_names_the_argument(error, match, change):
    batch = make_batch(bias=True)
    arguments = dict(batch)
    arguments.update(change(batch))
    tensors = [arguments.pop(name) for name in ("hidden", "weight", "token_ids", "old_logp", "advantages", "mask")]
    with pytest.raises(error, match=match):
        ops.fused_linear_policy_loss(*tensors, **arguments)


def test_module_wraps_the_op(seed):
    batch = make_batch(bias=True)
    options = dict(loss_type="dapo", temperature=0.8, tis_cap=2.0, entropy_coef=0.01, chunk_size=9)
    module = FusedLinearPolicyLoss(**options)
    assert "loss_type='dapo'" in repr(module) and "agg='token-mean'" in repr(module)

    loss, metrics = module(batch["hidden"], batch["weight"], batch["token_ids"], batch["old_logp"],
                           batch["advantages"], batch["mask"], bias=batch["bias"], rollout_logp=batch["rollout_logp"],
                           global_tokens=30)
    expected, expected_metrics = run_op(batch, **options, global_tokens=30)
    assert torch.equal(loss, expected)
    assert all(torch.equal(metrics[name], expected_metrics[name]) for name in METRICS)
    got = torch.autograd.grad(loss, (batch["hidden"], batch["weight"]))
    want = torch.autograd.grad(expected, (batch["hidden"], batch["weight"]))
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_module_checks_options_on_construction(seed):
    with pytest.raises(ValueError, match="loss_type"):
        FusedLinearPolicyLoss("ppo2")
    with pytest.raises(ValueError, match="temperature"):
        FusedLinearPolicyLoss(temperature=0)
    with pytest.raises(TypeError, match="chunk_size"):
        FusedLinearPolicyLoss(chunk_size="8")
    batch = make_batch()
    with pytest.raises(ValueError, match="token_ids"):
        FusedLinearPolicyLoss()(batch["hidden"], batch["weight"], batch["token_ids"][:, :3], batch["old_logp"],
                                batch["advantages"], batch["mask"])
