"""sleepcore.ops.policy_loss / group_advantages against the plain-torch reference (sleepcore.reference.policy).

The reference itself is pinned by small hand-computed cases (run against both implementations).
"""

import math

import pytest
import torch

from sleepcore import ops, reference

TOL = dict(atol=1e-6, rtol=1e-5)
LOSS_TYPES = ["grpo", "dapo", "dr_grpo", "gspo", "cispo"]
AGGS = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
METRICS = ["clip_frac", "approx_kl", "entropy", "ratio_mean", "ratio_max"]


def impl(name):
    return reference.policy_loss if name == "reference" else ops.policy_loss


def close(actual, expected, name):
    torch.testing.assert_close(actual.float(), torch.as_tensor(expected, dtype=torch.float32), **TOL,
                               msg=lambda m: f"{name}: {m}")


def make_inputs(B=6, T=11, adv_2d=False, spread=0.5):
    """Random inputs with ragged masks, left padding, one fully masked row and garbage at padding."""
    logp = -torch.rand(B, T) * 3 - 0.05
    old_logp = logp + spread * torch.randn(B, T)
    ref_logp = logp + 0.5 * torch.randn(B, T)
    rollout_logp = old_logp + 0.4 * torch.randn(B, T)
    entropy = torch.rand(B, T) * 2
    advantages = torch.randn(B, T) if adv_2d else torch.randn(B)
    t = torch.arange(T)
    start = torch.randint(0, 3, (B,))
    end = torch.randint(3, T + 1, (B,))
    mask = (t[None] >= start[:, None]) & (t[None] < end[:, None])
    mask[1] = False  # a sequence with no tokens
    mask[-1] = True  # a full-length one
    # Padding holds values that would dominate every statistic if it leaked in.
    pad = ~mask
    logp[pad] = 0.0
    old_logp[pad] = -12.0
    rollout_logp[pad] = 5.0
    entropy[pad] = 50.0
    return dict(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask, ref_logp=ref_logp,
                rollout_logp=rollout_logp, entropy=entropy)


def evaluate(fn, inputs, **kwargs):
    """(loss, metrics, grad_logp, grad_entropy) of fn; gradients of 1.3 * loss, zeros where unused."""
    x = dict(inputs)
    logp = x.pop("logp").clone().requires_grad_()
    entropy = x.pop("entropy")
    if entropy is not None:
        entropy = entropy.clone().requires_grad_()
    loss, metrics = fn(logp, x.pop("old_logp"), x.pop("advantages"), x.pop("mask"), entropy=entropy, **x, **kwargs)
    wrt = [logp] + ([entropy] if entropy is not None else [])
    grads = torch.autograd.grad(loss * 1.3, wrt, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)]
    return loss, metrics, grads[0], (grads[1] if entropy is not None else None)


def compare(inputs, **kwargs):
    got = evaluate(ops.policy_loss, inputs, **kwargs)
    want = evaluate(reference.policy_loss, inputs, **kwargs)
    close(got[0], want[0], "loss")
    assert got[0].dim() == 0
    close(got[2], want[2], "grad logp")
    if want[3] is not None:
        close(got[3], want[3], "grad entropy")
    assert set(got[1]) >= set(METRICS), f"metrics keys {sorted(got[1])}"
    for key in METRICS:
        value = got[1][key]
        assert isinstance(value, torch.Tensor) and value.dim() == 0, f"metric {key} must be a 0-d tensor"
        assert not value.requires_grad, f"metric {key} must be detached"
        close(value, want[1][key], f"metric {key}")
    return got, want


# ---------------------------------------------------------------------------------------------------------
# Hand-computed cases (pin the reference; the op must agree too)
# ---------------------------------------------------------------------------------------------------------

LN15, LN09, LN07 = math.log(1.5), math.log(0.9), math.log(0.7)


@pytest.mark.parametrize("which", ["reference", "op"])
def test_hand_grpo_one_sequence_two_tokens(which):
    # rho = [1.5, 0.9], A = 1, eps 0.2: token 0 is clipped (-1.2 > -1.5), token 1 is inside the range.
    old = torch.tensor([[-1.0, -1.0]])
    logp = (old + torch.tensor([[LN15, LN09]])).requires_grad_()
    loss, m = impl(which)(logp, old, torch.tensor([1.0]), torch.tensor([[True, True]]))
    (g,) = torch.autograd.grad(loss, logp)
    close(loss, (-1.2 - 0.9) / 2, "loss")  # seq-mean-token-mean
    close(g, [[0.0, -0.9 / 2]], "grad")
    close(m["clip_frac"], 0.5, "clip_frac")
    close(m["approx_kl"], -(LN15 + LN09) / 2, "approx_kl")
    close(m["ratio_mean"], 1.2, "ratio_mean")
    close(m["ratio_max"], 1.5, "ratio_max")
    close(m["entropy"], 0.0, "entropy")


@pytest.mark.parametrize("which", ["reference", "op"])
def test_hand_dual_clip_kl_entropy(which):
    # rho = [1.5, 0.7], A = -1: token 0 -> max(1.5, 1.2) = 1.5, dual clip min(1.5, 1.3) = 1.3;
    # token 1 -> max(0.7, 0.8) = 0.8 (clipped). k1 = [0.1, 0.2] * 0.1, entropy bonus -0.01 * [1, 2].
    old = torch.tensor([[-1.0, -1.0]])
    logp = (old + torch.tensor([[LN15, LN07]])).requires_grad_()
    ref = logp.detach() - torch.tensor([[0.1, 0.2]])
    ent = torch.tensor([[1.0, 2.0]], requires_grad=True)
    loss, m = impl(which)(logp, old, torch.tensor([-1.0]), torch.tensor([[True, True]]), ref_logp=ref, entropy=ent,
                          clip_ratio_c=1.3, kl_coef=0.1, kl_estimator="k1", entropy_coef=0.01, agg="token-mean")
    g, ge = torch.autograd.grad(loss, (logp, ent))
    close(loss, ((1.3 + 0.01 - 0.01) + (0.8 + 0.02 - 0.02)) / 2, "loss")
    close(g, [[0.05, 0.05]], "grad logp")  # only the KL term has a gradient
    close(ge, [[-0.005, -0.005]], "grad entropy")
    close(m["clip_frac"], 0.5, "clip_frac")
    close(m["approx_kl"], -(LN15 + LN07) / 2, "approx_kl")
    close(m["entropy"], 1.5, "entropy")
    close(m["ratio_mean"], 1.1, "ratio_mean")
    close(m["ratio_max"], 1.5, "ratio_max")


@pytest.mark.parametrize("which", ["reference", "op"])
@pytest.mark.parametrize("estimator,value,grad", [
    ("k1", 0.5, 1.0),
    ("k2", 0.125, 0.5),
    ("k3", math.exp(-0.5) + 0.5 - 1, 1 - math.exp(-0.5)),
])
def test_hand_kl_estimators(which, estimator, value, grad):
    # One token, logp = old (rho = 1), A = 0 so pg = 0; logp - ref = 0.5.
    logp = torch.tensor([[-1.0]], requires_grad=True)
    loss, _ = impl(which)(logp, logp.detach().clone(), torch.tensor([0.0]), torch.tensor([[True]]),
                          ref_logp=torch.tensor([[-1.5]]), kl_coef=1.0, kl_estimator=estimator)
    (g,) = torch.autograd.grad(loss, logp)
    close(loss, value, "loss")
    close(g, [[grad]], "grad")


@pytest.mark.parametrize("which", ["reference", "op"])
def test_hand_cispo_with_tis(which):
    # rho = [1.5, 0.9], eps_high 0.28 -> weights [1.28, 0.9]; A = [2, -1] per token;
    # TIS: exp(old - rollout) = [2, 0.5], capped at 1.5 -> [1.5, 0.5]. pg = -w * A * logp * tis.
    old = torch.tensor([[-1.0, -1.0]])
    lp = [-1 + LN15, -1 + LN09]
    logp = torch.tensor([lp], requires_grad=True)
    rollout = old - torch.tensor([[math.log(2.0), math.log(0.5)]])
    loss, m = impl(which)(logp, old, torch.tensor([[2.0, -1.0]]), torch.tensor([[True, True]]), loss_type="cispo",
                          eps_high=0.28, rollout_logp=rollout, tis_cap=1.5)
    (g,) = torch.autograd.grad(loss, logp)
    expected = (-1.28 * 2 * lp[0] * 1.5 + -0.9 * -1 * lp[1] * 0.5) / 2  # token-mean
    close(loss, expected, "loss")
    close(g, [[-1.28 * 2 * 1.5 / 2, 0.9 * 0.5 / 2]], "grad")
    close(m["clip_frac"], 0.5, "clip_frac")  # rho > 1.28 on token 0
    close(m["ratio_mean"], 1.2, "ratio_mean")
    close(m["ratio_max"], 1.5, "ratio_max")


@pytest.mark.parametrize("which", ["reference", "op"])
def test_hand_gspo_default_eps(which):
    # Both sequences have lr = [ln 1.5, ln 0.9] -> s = sqrt(1.35); default eps 3e-4.
    # A = +1: pg = max(-s, -1.0003) = -1.0003 (clipped, no grad). A = -1: pg = s, grad s per token.
    s = math.sqrt(1.35)
    old = torch.full((2, 2), -1.0)
    logp = (old + torch.tensor([[LN15, LN09], [LN15, LN09]])).requires_grad_()
    loss, m = impl(which)(logp, old, torch.tensor([1.0, -1.0]), torch.ones(2, 2, dtype=torch.bool), loss_type="gspo")
    (g,) = torch.autograd.grad(loss, logp)
    close(loss, (-1.0003 + s) / 2, "loss")  # seq-mean-token-mean
    close(g, [[0.0, 0.0], [s / 4, s / 4]], "grad")
    close(m["clip_frac"], 0.5, "clip_frac")
    close(m["ratio_mean"], s, "ratio_mean")
    close(m["ratio_max"], s, "ratio_max")


@pytest.mark.parametrize("which", ["reference", "op"])
@pytest.mark.parametrize("agg,expected,weights", [
    # masked token losses: seq 0 -> [-2], seq 1 -> [-1, -3, -5]; rho = 1 everywhere so pg = -A.
    ("token-mean", -11 / 4, [[1 / 4], [1 / 4] * 3]),
    ("seq-mean-token-sum", (-2 - 9) / 2, [[1 / 2], [1 / 2] * 3]),
    ("seq-mean-token-mean", (-2 / 1 - 9 / 3) / 2, [[1 / 2], [1 / 6] * 3]),
    ("seq-mean-token-sum-norm", -11 / (2 * 3), [[1 / 6], [1 / 6] * 3]),
])
def test_hand_aggregation(which, agg, expected, weights):
    A = torch.tensor([[2.0, 7.0, 7.0], [1.0, 3.0, 5.0]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    logp = torch.full((2, 3), -0.7, requires_grad=True)
    loss, _ = impl(which)(logp, logp.detach().clone(), A, mask, agg=agg)
    (g,) = torch.autograd.grad(loss, logp)
    close(loss, expected, "loss")
    w = torch.tensor([[weights[0][0], 0.0, 0.0], weights[1]])
    close(g, -A * w, "grad")
    # Given totals replace this call's counts.
    loss, _ = impl(which)(logp, logp.detach().clone(), A, mask, agg=agg, global_tokens=10, global_seqs=5,
                          max_len=4)
    close(loss, {"token-mean": -11 / 10, "seq-mean-token-sum": -11 / 5, "seq-mean-token-mean": -5 / 5,
                 "seq-mean-token-sum-norm": -11 / 20}[agg], "loss with global counts")


@pytest.mark.parametrize("which", ["reference", "op"])
def test_hand_group_advantages(which):
    fn = reference.group_advantages if which == "reference" else ops.group_advantages
    r = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    std = math.sqrt(1 / 3)  # unbiased std of [1, 0, 0]
    close(fn(r, 3), [(2 / 3) / (std + 1e-6), (-1 / 3) / (std + 1e-6), (-1 / 3) / (std + 1e-6), 0, 0, 0], "std")
    close(fn(r, 3, scale="none"), [2 / 3, -1 / 3, -1 / 3, 0, 0, 0], "none")


# ---------------------------------------------------------------------------------------------------------
# Op vs reference on random inputs
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("adv_2d", [False, True])
@pytest.mark.parametrize("agg", AGGS + [None])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_type_by_agg(seed, loss_type, agg, adv_2d):
    compare(make_inputs(adv_2d=adv_2d), loss_type=loss_type, agg=agg)


OPTIONS = [
    *[(lt, dict(kl_coef=0.1, kl_estimator=est)) for lt in ["grpo", "gspo"] for est in ["k1", "k2", "k3"]],
    *[(lt, dict(clip_ratio_c=1.5)) for lt in ["grpo", "dapo"]],
    *[(lt, dict(clip_ratio_c=3.0, eps_low=0.1)) for lt in ["dr_grpo", "dapo"]],
    *[(lt, dict(tis_cap=cap)) for lt in ["grpo", "cispo"] for cap in [None, 1.2]],
    *[(lt, dict(entropy_coef=0.01)) for lt in ["dapo", "gspo"]],
    *[(lt, dict(eps_low=0.1, eps_high=0.3)) for lt in ["grpo", "cispo"]],
    *[(lt, dict(eps_low=0.2)) for lt in ["gspo", "dapo"]],
    ("dr_grpo", dict(max_len=20)),
    *[(lt, dict(kl_coef=0.05, kl_estimator="k3", tis_cap=2.0, entropy_coef=0.02, global_tokens=40, global_seqs=9,
                **({} if lt == "cispo" else dict(clip_ratio_c=2.0)))) for lt in LOSS_TYPES],
]


@pytest.mark.parametrize("adv_2d", [False, True])
@pytest.mark.parametrize("case", range(len(OPTIONS)))
def test_options(seed, case, adv_2d):
    loss_type, kwargs = OPTIONS[case]
    inputs = make_inputs(adv_2d=adv_2d)
    if "tis_cap" not in kwargs:
        inputs["rollout_logp"] = None
    compare(inputs, loss_type=loss_type, **kwargs)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_optional_inputs_absent(seed, loss_type):
    """No ref / rollout / entropy: loss unchanged by ignoring them; entropy metric 0."""
    inputs = make_inputs()
    inputs.update(ref_logp=None, rollout_logp=None, entropy=None)
    got, _ = compare(inputs, loss_type=loss_type)
    close(got[1]["entropy"], 0.0, "entropy metric without entropy")
    # ref_logp given with kl_coef = 0 is ignored.
    with_ref = evaluate(ops.policy_loss, dict(inputs, ref_logp=make_inputs()["ref_logp"]), loss_type=loss_type)
    close(with_ref[0], got[0], "loss with unused ref_logp")


@pytest.mark.parametrize("loss_type", ["grpo", "gspo"])
def test_extreme_log_ratios_are_clamped(seed, loss_type):
    inputs = make_inputs(adv_2d=True)
    inputs["rollout_logp"] = None  # TIS weights exp(old - rollout) would swamp the clamped tokens
    inputs["old_logp"][-1, :2] = inputs["logp"][-1, :2] - 30.0   # lr = +30 -> 20
    inputs["advantages"][-1, :2] = -0.5
    inputs["old_logp"][-1, 2] = inputs["logp"][-1, 2] + 30.0   # lr = -30 -> -20
    for kwargs in [dict(), dict(eps_low=0.2, eps_high=0.2)]:
        got = evaluate(ops.policy_loss, inputs, loss_type=loss_type, **kwargs)
        want = evaluate(reference.policy_loss, inputs, loss_type=loss_type, **kwargs)
        assert torch.isfinite(got[0]) and torch.isfinite(got[2]).all()
        close(got[0], want[0], "loss")
        close(got[2], want[2], "grad logp")
        # approx_kl is left out: the spec's text (old_logp - logp) and verl's ppo_kl (clamped) differ here.
        for key in ["clip_frac", "ratio_mean", "ratio_max"]:
            close(got[1][key], want[1][key], f"metric {key}")


# ---------------------------------------------------------------------------------------------------------
# Micro-batch equivalence: summed micro-batch losses and gradients equal the full batch's
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("counts_as", ["int", "tensor"])
@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "gspo", "cispo"])
def test_micro_batches_sum_to_full_batch(seed, loss_type, agg, counts_as):
    B, T = 7, 10
    inputs = make_inputs(B=B, T=T, adv_2d=(agg == "token-mean"))
    inputs["mask"][3] = False  # the 1-sequence micro-batch has no tokens at all
    inputs["mask"][1, 2:5] = True
    opts = dict(loss_type=loss_type, agg=agg, kl_coef=0.1, entropy_coef=0.01, tis_cap=2.0)
    if loss_type == "gspo":
        opts.update(eps_low=0.2)
    n_tokens = int(inputs["mask"].sum())

    full = evaluate(ops.policy_loss, inputs, **opts)
    want = evaluate(reference.policy_loss, inputs, **opts)
    close(full[0], want[0], "full-batch loss vs reference")
    close(full[2], want[2], "full-batch grad vs reference")

    def count(v):
        return torch.tensor(v) if counts_as == "tensor" else v

    logp = inputs["logp"].clone().requires_grad_()
    entropy = inputs["entropy"].clone().requires_grad_()
    total = torch.zeros(())
    for lo, hi in [(0, 3), (3, 4), (4, 7)]:
        part = {k: v[lo:hi] for k, v in inputs.items() if k not in ("logp", "entropy")}
        loss, _ = ops.policy_loss(logp[lo:hi], part.pop("old_logp"), part.pop("advantages"), part.pop("mask"),
                                  entropy=entropy[lo:hi], **part, **opts, global_tokens=count(n_tokens),
                                  global_seqs=count(B))
        total = total + loss
    g, ge = torch.autograd.grad(total * 1.3, (logp, entropy))
    close(total, full[0], "sum of micro-batch losses")
    close(g, full[2], "micro-batch grad logp")
    close(ge, full[3], "micro-batch grad entropy")


# ---------------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): no graph breaks / host syncs, same values and gradients
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss_type,opts", [
    ("grpo", dict(kl_coef=0.1, clip_ratio_c=1.5, tis_cap=2.0, entropy_coef=0.01, agg="token-mean")),
    ("gspo", dict(kl_coef=0.1, kl_estimator="k2", eps_low=0.2)),
    ("cispo", dict(tis_cap=None, agg="seq-mean-token-sum-norm")),
])
def test_compile_fullgraph(seed, loss_type, opts):
    inputs = make_inputs(adv_2d=loss_type == "cispo")

    def fn(logp, old_logp, advantages, mask, *, entropy, ref_logp, rollout_logp):
        return ops.policy_loss(logp, old_logp, advantages, mask, entropy=entropy, ref_logp=ref_logp,
                               rollout_logp=rollout_logp, loss_type=loss_type,
                               global_tokens=torch.tensor(37), global_seqs=torch.tensor(8), **opts)

    torch._dynamo.reset()
    eager = evaluate(fn, inputs)
    compiled = evaluate(torch.compile(fn, fullgraph=True), inputs)
    close(compiled[0], eager[0], "loss")
    close(compiled[2], eager[2], "grad logp")
    close(compiled[3], eager[3], "grad entropy")
    for key in METRICS:
        close(compiled[1][key], eager[1][key], f"metric {key}")


# ---------------------------------------------------------------------------------------------------------
# group_advantages
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", ["std", "none"])
@pytest.mark.parametrize("group_size", [2, 3, 4, 12])
def test_group_advantages(seed, scale, group_size):
    for rewards in [torch.randn(12), torch.randint(0, 2, (12,)).float()]:
        close(ops.group_advantages(rewards, group_size, scale=scale),
              reference.group_advantages(rewards, group_size, scale=scale), "advantages")
    rewards = torch.randn(12)
    close(ops.group_advantages(rewards, group_size, scale=scale, eps=0.5),
          reference.group_advantages(rewards, group_size, scale=scale, eps=0.5), "advantages eps=0.5")


@pytest.mark.parametrize("which", ["reference", "op"])
def test_group_advantages_bad_input(which):
    fn = reference.group_advantages if which == "reference" else ops.group_advantages
    with pytest.raises(ValueError, match="group_size"):
        fn(torch.randn(10), 3)
    with pytest.raises(ValueError, match="group_size"):
        fn(torch.randn(10), 0)
    with pytest.raises(ValueError, match="scale"):
        fn(torch.randn(10), 5, scale="max")


# ---------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------

def bad_cases():
    B, T = 3, 5

    def base():
        return dict(logp=torch.randn(B, T), old_logp=torch.randn(B, T), advantages=torch.randn(B),
                    mask=torch.ones(B, T, dtype=torch.bool))

    def case(match, errors=(ValueError, TypeError), **changes):
        return match, errors, {**base(), **changes}

    half_mask = torch.ones(B, T)
    half_mask[0, 1] = 0.5
    return [
        case("logp", logp=torch.randn(B * T), old_logp=torch.randn(B * T), mask=torch.ones(B * T, dtype=torch.bool),
             advantages=torch.randn(B * T)),
        case("old_logp", old_logp=torch.randn(B, T + 1)),
        case("ref_logp", ref_logp=torch.randn(B + 1, T), kl_coef=0.1),
        case("rollout_logp", rollout_logp=torch.randn(B, T - 1)),
        case("entropy", entropy=torch.randn(B, T + 2), entropy_coef=0.1),
        case("advantages", advantages=torch.randn(B + 1)),
        case("advantages", advantages=torch.randn(B, T + 1)),
        case("mask", mask=torch.ones(B, T + 1, dtype=torch.bool)),
        case("mask", mask=half_mask),
        case("loss_type", loss_type="ppo2"),
        case("agg", agg="mean"),
        case("kl_estimator", kl_estimator="k4", kl_coef=0.1, ref_logp=torch.randn(B, T)),
        case("eps_low", eps_low=-0.1),
        case("eps_high", eps_high=-0.1),
        case("tis_cap", tis_cap=0.0, rollout_logp=torch.randn(B, T)),
        case("tis_cap", tis_cap=-1.0, rollout_logp=torch.randn(B, T)),
        case("clip_ratio_c", clip_ratio_c=1.0),
        case("clip_ratio_c", clip_ratio_c=3.0, loss_type="cispo"),
        case("global_tokens", global_tokens=0),
        case("global_seqs", global_seqs=-2),
        case("kl_coef|ref_logp", errors=ValueError, kl_coef=0.1),
        case("entropy", errors=ValueError, entropy_coef=0.1),
    ]


@pytest.mark.parametrize("which", ["reference", "op"])
@pytest.mark.parametrize("case", range(len(bad_cases())))
def test_bad_input(which, case):
    match, errors, kwargs = bad_cases()[case]
    args = [kwargs.pop(k) for k in ("logp", "old_logp", "advantages", "mask")]
    with pytest.raises(errors, match=match):
        impl(which)(*args, **kwargs)
