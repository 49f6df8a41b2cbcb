"""ops.sample_tokens (CPU kernel and Triton kernel): allowed sets, frequencies, seeding, log-probs, errors.

The Triton path runs under the interpreter without a GPU (tests/conftest.py), at V = 50.
"""

import pytest
import torch

from sleepcore import ops
from sleepcore._core import _C, address
from sleepcore.ops.sampling import sample_tokens
from sleepcore.reference.logprobs import logprobs_from_logits

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [("cpu", "cpu"), (DEVICE, "triton")]


def allowed_sets(logits, temperature, top_k, top_p, min_p, slack=0.0):
    """[B, V] bool: the allowed set of each row (float64 reference, ties at a boundary kept); slack
    widens (> 0) or narrows (< 0) the top-p and min-p boundaries."""
    z = logits.double() / temperature.double()[:, None]
    probs = torch.softmax(z, dim=-1)
    sorted_z = z.sort(dim=-1, descending=True).values
    kth = sorted_z.gather(1, (top_k.clamp(1, z.shape[1]) - 1)[:, None])
    keep_k = (top_k[:, None] == 0) | (z >= kth)
    renorm = torch.where(keep_k, probs, 0.0)
    renorm = renorm / renorm.sum(-1, keepdim=True)
    sorted_p = renorm.sort(dim=-1, descending=True).values
    mass_before = torch.cumsum(sorted_p, -1) - sorted_p
    kept = mass_before < top_p.double()[:, None] + slack
    p_min = torch.where(kept, sorted_p, 2.0).min(-1, keepdim=True).values
    keep_p = renorm >= p_min
    keep_min = probs >= min_p.double()[:, None] * probs.max(-1, keepdim=True).values - slack
    return keep_k & keep_p & keep_min


def random_params(rows, generator):
    pick = lambda options, dtype: torch.tensor(options, dtype=dtype)[  # noqa: E731
        torch.randint(len(options), (rows,), generator=generator)]
    return dict(temperature=pick([0.5, 0.8, 1.0, 1.5], torch.float64), top_k=pick([0, 1, 5, 20], torch.int64),
                top_p=pick([1.0, 0.9, 0.5], torch.float32), min_p=pick([0.0, 0.05, 0.2], torch.float32))


def draw(logits, device, backend, *, temperature, top_k=0, top_p=1.0, min_p=0.0, seeds, steps):
    """(tokens, truncated log-probs) on CPU. The Triton kernel is called directly: the op's log-prob pass
    (the trainer's Triton row kernel, one program per row) is too slow under the interpreter at these B."""
    if backend == "cpu":
        tokens, _, truncated = sample_tokens(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                             min_p=min_p, seeds=seeds, steps=steps, backend="cpu")
        return tokens, truncated
    from sleepcore.kernels import sampling as triton_sampling

    rows = logits.shape[0]
    full = lambda v, dtype: (v if isinstance(v, torch.Tensor) else torch.full((rows,), v)).to(device, dtype)  # noqa: E731
    tokens = torch.empty(rows, dtype=torch.int64, device=device)
    truncated = torch.empty(rows, device=device)
    bad = torch.empty(rows, dtype=torch.int32, device=device)
    triton_sampling.sample_rows(logits.to(device).contiguous(), full(temperature, torch.float64),
                                full(top_k, torch.int64), full(top_p, torch.float32), full(min_p, torch.float32),
                                full(seeds, torch.int64), full(steps, torch.int64), tokens, truncated, bad)
    assert not bad.any()
    return tokens.cpu(), truncated.cpu()


def to(device, params):
    return {name: value.to(device) for name, value in params.items()}


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_samples_inside_allowed_set(device, backend, dtype, seed):
    rows, vocab = 2000, 50
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=gen) * 2).to(dtype)
    params = random_params(rows, gen)
    seeds = torch.randint(0, 2**62, (rows,), generator=gen)
    steps = torch.randint(0, 1000, (rows,), generator=gen)
    tokens, truncated = draw(logits, device, backend, **params, seeds=seeds, steps=steps)
    loose = allowed_sets(logits.float(), **params, slack=1e-5)
    assert loose.gather(1, tokens.cpu()[:, None]).all()
    # top_k = 1 and min_p-only rows pin down the argmax; the token's truncated log-prob is log of its
    # renormalised probability under the allowed set
    strict = allowed_sets(logits.float(), **params, slack=-1e-5)
    stable = strict.sum(-1) == loose.sum(-1)
    z = logits.double() / params["temperature"][:, None]
    target = torch.where(loose, torch.softmax(z, -1), 0.0)
    expected = (target / target.sum(-1, keepdim=True)).gather(1, tokens.cpu()[:, None]).squeeze(1).log()
    tol = 1e-5 if dtype == torch.float32 else 1e-4
    torch.testing.assert_close(truncated.cpu()[stable].double(), expected[stable], atol=tol, rtol=tol)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("options", [dict(), dict(top_k=12), dict(top_p=0.8), dict(min_p=0.1),
                                     dict(top_k=20, top_p=0.9, min_p=0.02)])
def test_frequencies_match_target(device, backend, options, seed):
    draws, vocab, temperature = 4000, 50, 0.8
    gen = torch.Generator().manual_seed(seed)
    row = torch.randn(vocab, generator=gen) * 1.5
    logits = row.expand(draws, vocab)
    full = dict(top_k=0, top_p=1.0, min_p=0.0) | options
    tokens, _ = draw(logits, device, backend, temperature=temperature, **full, seeds=seed, steps=torch.arange(draws))
    params = dict(temperature=torch.full((1,), temperature, dtype=torch.float64),
                  top_k=torch.tensor([full["top_k"]]), top_p=torch.tensor([full["top_p"]]),
                  min_p=torch.tensor([full["min_p"]]))
    allowed = allowed_sets(row[None], **params)[0]
    target = torch.where(allowed, torch.softmax(row.double() / temperature, -1), 0.0)
    target /= target.sum()
    counts = torch.bincount(tokens.cpu(), minlength=vocab).double()
    assert counts[~allowed].sum() == 0
    cosine = torch.nn.functional.cosine_similarity(counts / draws, target, dim=0)
    assert cosine > 0.99, cosine
    expected = target * draws
    cells = expected >= 5  # chi-square over the well-populated cells (the rest pooled)
    observed = torch.cat([counts[cells], counts[~cells].sum().view(1)])
    expect = torch.cat([expected[cells], expected[~cells].sum().view(1)])
    keep = expect > 0
    chi2 = ((observed[keep] - expect[keep]) ** 2 / expect[keep]).sum().item()
    dof = max(int(keep.sum()) - 1, 1)
    assert chi2 < dof + 8 * (2 * dof) ** 0.5 + 10, (chi2, dof)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_seeded_draw_depends_only_on_own_row(device, backend, seed):
    rows, vocab = 64, 50
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=gen)
    params = random_params(rows, gen)
    seeds = torch.randint(0, 2**40, (rows,), generator=gen)
    steps = torch.randint(0, 50, (rows,), generator=gen)

    def run(index, step_shift=0):
        out = sample_tokens(logits[index].to(device), **to(device, {k: v[index] for k, v in params.items()}),
                            seeds=seeds[index].to(device), steps=(steps[index] + step_shift).to(device),
                            backend=backend)
        return [t.cpu() for t in out]

    base = run(torch.arange(rows))
    perm = torch.randperm(rows, generator=gen)
    shuffled = run(perm)
    for a, b in zip(base, shuffled):
        assert torch.equal(a[perm], b)
    sub = torch.tensor([5, 3, 40])  # a smaller batch, other neighbours
    for a, b in zip(base, run(sub)):
        assert torch.equal(a[sub], b)
    assert torch.equal(base[0], run(torch.arange(rows))[0])  # repeatable
    # another step: another stream (most high-entropy rows change their token)
    params |= dict(temperature=torch.full((rows,), 2.0, dtype=torch.float64), top_k=torch.zeros(rows, dtype=torch.int64),
                   top_p=torch.ones(rows), min_p=torch.zeros(rows))
    now, later = run(torch.arange(rows))[0], run(torch.arange(rows), step_shift=1)[0]
    assert (now != later).float().mean() > 0.5


def test_uniform_streams():
    n = 4096
    u = torch.empty(3, n)
    for i, (s, t) in enumerate([(7, 0), (7, 1), (8, 0)]):
        _C.sampling_uniforms(s, t, n, address(u[i]))
    assert (u > 0).all() and (u < 1).all()
    assert abs(u.mean().item() - 0.5) < 0.02 and abs(u.var().item() - 1 / 12) < 0.01
    assert not torch.equal(u[0], u[1]) and not torch.equal(u[0], u[2])
    assert abs(torch.corrcoef(u)[0, 1:]).max() < 0.1


@pytest.mark.skipif(DEVICE == "cpu" and __import__("os").environ.get("TRITON_INTERPRET") != "1",
                    reason="needs TRITON_INTERPRET=1")
def test_cpu_and_triton_draw_the_same_stream(seed):
    rows, vocab = 256, 50
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=gen)
    params = random_params(rows, gen)
    seeds, steps = torch.randint(0, 2**40, (rows,), generator=gen), torch.arange(rows)
    cpu = draw(logits, "cpu", "cpu", **params, seeds=seeds, steps=steps)[0]
    tri = draw(logits, DEVICE, "triton", **params, seeds=seeds, steps=steps)[0]
    assert (cpu == tri).float().mean() >= 0.99


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_are_the_trainers(temperature, seed):
    rows, hidden_size, vocab = 32, 64, 1000
    hidden, weight = torch.randn(rows, hidden_size), torch.randn(vocab, hidden_size) * 0.1
    logits = torch.mm(hidden, weight.t())  # the GEMM fused_linear_logprobs runs on a 32-row chunk
    temps = torch.full((rows,), temperature, dtype=torch.float64)
    temps[::4] = 0.0  # greedy rows: log-prob at T = 1
    tokens, logp, _ = sample_tokens(logits, temperature=temps, top_k=50, seeds=seed, steps=3)
    for value, rows_t in ((temperature, temps > 0), (1.0, temps == 0)):
        trainer, _ = ops.fused_linear_logprobs(hidden, weight, tokens, temperature=value, return_entropy=False)
        assert torch.equal(logp[rows_t], trainer[rows_t])
        ref, _ = logprobs_from_logits(logits, tokens, temperature=value)
        torch.testing.assert_close(logp[rows_t], ref[rows_t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_greedy_and_masked_tokens(device, backend, seed):
    rows, vocab = 40, 50
    logits = torch.randn(rows, vocab)
    logits[:, ::3] = -float("inf")  # masked tokens: never drawn
    logits[0, :-1] = -float("inf")  # one finite entry
    temps = torch.ones(rows, dtype=torch.float64)
    temps[::2] = 0.0
    tokens, logp, truncated = [t.cpu() for t in sample_tokens(logits.to(device), temperature=temps.to(device),
                                                              seeds=seed, steps=0, backend=backend)]
    greedy = temps == 0
    assert torch.equal(tokens[greedy], logits[greedy].argmax(-1))
    assert (truncated[greedy] == 0).all()
    assert torch.isfinite(logits.gather(1, tokens[:, None])).all() and tokens[0] == vocab - 1
    torch.testing.assert_close(logp, logprobs_from_logits(logits, tokens)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "all_masked"])
def test_invalid_logits_raise(device, backend, bad):
    logits = torch.randn(4, 50)
    if bad == "all_masked":
        logits[2] = -float("inf")
    else:
        logits[2, 7] = bad
    with pytest.raises(ValueError, match="logits"):
        sample_tokens(logits.to(device), temperature=1.0, seeds=0, steps=0, backend=backend)


@pytest.mark.parametrize("name,value,error", [
    ("temperature", -0.5, ValueError), ("top_k", -1, ValueError), ("top_p", 0.0, ValueError),
    ("top_p", 1.5, ValueError), ("min_p", 1.0, ValueError), ("min_p", -0.1, ValueError),
    ("top_k", 2.5, TypeError), ("seeds", 1.5, TypeError), ("top_p", True, TypeError), ("temperature", "1", TypeError),
    ("temperature", float("inf"), ValueError),
    ("temperature", torch.tensor([1.0, -1.0, 1.0]), ValueError), ("top_k", torch.tensor([1, -2, 0]), ValueError),
    ("top_p", torch.tensor([0.5, 1.01, 1.0]), ValueError), ("min_p", torch.tensor([0.0, 1.0, 0.0]), ValueError),
    ("top_p", torch.ones(4), ValueError), ("steps", torch.zeros(3, 1, dtype=torch.int64), ValueError),
    ("top_k", torch.ones(3), TypeError),
])
def test_bad_parameters_raise(name, value, error):
    kwargs = dict(temperature=1.0, seeds=0, steps=0) | {name: value}
    with pytest.raises(error, match=f"^{name}"):
        sample_tokens(torch.randn(3, 20), **kwargs)


def test_bad_logits_arguments_raise():
    with pytest.raises(ValueError, match="logits"):
        sample_tokens(torch.randn(3, 20)[:, ::2], temperature=1.0, seeds=0, steps=0)
    with pytest.raises((TypeError, ValueError), match="logits"):
        sample_tokens(torch.randn(3, 20, 2), temperature=1.0, seeds=0, steps=0)
    with pytest.raises(TypeError, match="logits"):
        sample_tokens(torch.randn(3, 20).double(), temperature=1.0, seeds=0, steps=0)


def test_opcheck():
    rows = 5
    args = (torch.randn(rows, 30), torch.full((rows,), 0.9, dtype=torch.float64), torch.full((rows,), 5),
            torch.full((rows,), 0.9), torch.zeros(rows), torch.arange(rows), torch.zeros(rows, dtype=torch.int64),
            "cpu")
    torch.library.opcheck(torch.ops.sleepcore.sample_tokens.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_compile_fullgraph_matches_eager():
    logits = torch.randn(4, 100)
    seeds, steps = torch.arange(4), torch.zeros(4, dtype=torch.long)

    def draw(x):
        return sample_tokens(x, temperature=0.8, top_k=5, top_p=0.9, seeds=seeds, steps=steps)

    for got, want in zip(torch.compile(draw, fullgraph=True)(logits), draw(logits)):
        assert torch.equal(got, want)
