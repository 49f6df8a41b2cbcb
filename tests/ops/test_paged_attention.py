"""Paged KV cache ops (write_kv, copy_blocks, paged_attention) against the fp32 reference.

Both backends: ``_C`` on CPU and Triton (under the interpreter without a GPU, at tiny shapes).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from sleepcore.ops.paged_attention import copy_blocks, paged_attention, write_kv  # noqa: E402
from sleepcore.reference.attention import paged_attention as reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP32 = dict(atol=1e-5, rtol=1e-4)
BACKENDS = ["cpu", "triton"] if DEVICE == "cpu" else ["triton"]

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # interpreter: masked lanes in numpy


def make_case(context_lens, query_counts, *, block_size, heads_q=8, heads_kv=2, head_dim=64, dtype=torch.float32,
              spare_blocks=3, device=DEVICE):
    """Random caches, shuffled block tables (padded with -1 past each sequence) and queries."""
    blocks = [-(-n // block_size) for n in context_lens]
    max_blocks = max(blocks) + 1
    num_blocks = sum(blocks) + spare_blocks
    k_cache = torch.randn(num_blocks, block_size, heads_kv, head_dim).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, heads_kv, head_dim).to(dtype)
    order = torch.randperm(num_blocks)
    tables = torch.full((len(context_lens), max_blocks), -1, dtype=torch.int32)
    used = 0
    for b, n in enumerate(blocks):
        tables[b, :n] = order[used:used + n].int()
        used += n
    query_start = torch.tensor([0] + list(query_counts)).cumsum(0)
    q = torch.randn(int(query_start[-1]), heads_q, head_dim).to(dtype)
    lens = torch.tensor(context_lens, dtype=torch.int32)
    return tuple(t.to(device) for t in (q, k_cache, v_cache, tables, lens, query_start))


def check_against_reference(case, tols, **options):
    expected = reference(*(t.cpu() for t in case), scale=options["scale"],
                         sliding_window=options.get("sliding_window", 0), softcap=options.get("softcap", 0.0))
    out = paged_attention(*case, **options)
    assert out.dtype == case[0].dtype and out.shape == case[0].shape
    torch.testing.assert_close(out.float().cpu(), expected, **tols)


DECODE = ([37, 16, 1, 75, 50], [1, 1, 1, 1, 1])
PREFILL = ([37, 16, 9, 75, 20], [37, 4, 0, 10, 1])  # fresh prompt, cached prefixes, an empty query


@pytest.mark.parametrize("mode", ["decode", "prefill"])
@pytest.mark.parametrize("block_size", [16, 4])
@pytest.mark.parametrize("head_dim", [64, 40])
@pytest.mark.parametrize("window,softcap", [(0, 0.0), (7, 0.0), (0, 5.0), (20, 3.0)])
def test_cpu_fp32(seed, mode, block_size, head_dim, window, softcap):
    lens, counts = DECODE if mode == "decode" else PREFILL
    case = make_case(lens, counts, block_size=block_size, head_dim=head_dim, device="cpu")
    check_against_reference(case, FP32, scale=head_dim ** -0.5, sliding_window=window, softcap=softcap,
                            backend="cpu")


@pytest.mark.parametrize("heads_q,heads_kv", [(3, 3), (6, 3), (6, 1), (16, 2), (7, 7)])
def test_cpu_group_sizes(seed, heads_q, heads_kv):
    """Every GQA group size: the compiled-in ones (1, 2, 3, 4, 8) and the generic path (6, 7)."""
    case = make_case(*PREFILL, block_size=4, heads_q=heads_q, heads_kv=heads_kv, head_dim=20, device="cpu")
    check_against_reference(case, FP32, scale=0.2, sliding_window=9, backend="cpu")


def test_cpu_non_contiguous_query(seed):
    q, k_cache, v_cache, tables, lens, starts = make_case(*DECODE, block_size=16, device="cpu")
    q_strided = q.transpose(0, 1).contiguous().transpose(0, 1)
    assert not q_strided.is_contiguous()
    check_against_reference((q_strided, k_cache, v_cache, tables, lens, starts), FP32, scale=0.1, backend="cpu")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["decode", "prefill"])
def test_cpu_half_storage(seed, dtype, mode):
    lens, counts = DECODE if mode == "decode" else PREFILL
    case = make_case(lens, counts, block_size=16, heads_q=9, heads_kv=3, head_dim=36, dtype=dtype, device="cpu")
    # Reference on the same stored values in fp32: the op's only extra error is rounding out.
    tol = 2 ** -8 if dtype == torch.bfloat16 else 2 ** -11
    check_against_reference(case, dict(atol=1e-3, rtol=2 * tol), scale=0.2, sliding_window=30, backend="cpu")


@pytest.mark.parametrize("mode", ["decode", "prefill"])
@pytest.mark.parametrize("block_size,head_dim,window,softcap", [(4, 40, 0, 0.0), (16, 16, 5, 2.0), (4, 16, 3, 0.0)])
def test_triton(seed, mode, block_size, head_dim, window, softcap):
    lens, counts = ([9, 3, 20], [1, 1, 1]) if mode == "decode" else ([9, 3, 20], [9, 0, 6])
    case = make_case(lens, counts, block_size=block_size, heads_q=4, heads_kv=2, head_dim=head_dim)
    check_against_reference(case, FP32, scale=0.3, sliding_window=window, softcap=softcap, backend="triton")


def test_triton_fp16(seed):
    case = make_case([9, 20], [1, 4], block_size=4, heads_q=2, heads_kv=1, head_dim=16, dtype=torch.float16)
    check_against_reference(case, dict(atol=1e-3, rtol=2 ** -10), scale=0.3, backend="triton")


def test_output_independent_of_batch(seed):
    """A sequence's output is bitwise the same alone or batched with others (rollout == trainer)."""
    q, k_cache, v_cache, tables, lens, starts = make_case(*PREFILL, block_size=4, device="cpu")
    batched = paged_attention(q, k_cache, v_cache, tables, lens, starts, scale=0.1, backend="cpu")
    alone = paged_attention(q[starts[3]:starts[4]], k_cache, v_cache, tables[3:4], lens[3:4],
                            starts[3:5] - starts[3], scale=0.1, backend="cpu")
    assert torch.equal(alone, batched[starts[3]:starts[4]])


def shared_prefix_case(block_size=4, heads_q=6, heads_kv=2, head_dim=24):
    """Forked samples: decoding sequences whose tables share their first blocks (one whose context
    ends inside the shared blocks), a pair sharing only their first block, and an unrelated one."""
    k_cache = torch.randn(40, block_size, heads_kv, head_dim)
    v_cache = torch.randn_like(k_cache)
    shared = [5, 9, 2, 30]
    tables = torch.tensor([shared + [11, 12, 13], shared + [14, 15, 16], shared + [17, 18, 19],
                           [6, 20, 21, 22, 23, 24, 25], [6, 26, 27, 28, 29, 31, 32],
                           shared + [33, 34, 35], [36, 37, 38, 39, 1, 3, 4]], dtype=torch.int32)
    lens = torch.tensor([27, 17, 25, 26, 21, 10, 28])
    q = torch.randn(len(lens), heads_q, head_dim)
    return q, k_cache, v_cache, tables, lens, torch.arange(len(lens) + 1)


@pytest.mark.parametrize("softcap", [0.0, 4.0])
def test_shared_prefix_decode_is_bitwise_the_per_sequence_result(seed, softcap):
    """The CPU kernel attends shared prefix blocks once for a group of decodes; each token must
    still get exactly its own result: bitwise equal to the sequence alone, and to the reference."""
    q, k_cache, v_cache, tables, lens, starts = case = shared_prefix_case()
    batched = paged_attention(*case, scale=0.2, softcap=softcap, backend="cpu")
    for b in range(len(lens)):
        alone = paged_attention(q[b:b + 1], k_cache, v_cache, tables[b:b + 1], lens[b:b + 1], starts[:2],
                                scale=0.2, softcap=softcap, backend="cpu")
        assert torch.equal(alone, batched[b:b + 1]), b
    torch.testing.assert_close(batched, reference(*case, scale=0.2, sliding_window=0, softcap=softcap), **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_write_then_attend_matches_dense_causal_attention(seed, backend):
    """Prompt prefill through write_kv + paged_attention equals dense causal SDPA (GQA)."""
    heads_q, heads_kv, head_dim, block_size, length = 4, 2, 16, 4, 11
    k_cache = torch.zeros(8, block_size, heads_kv, head_dim, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    table = torch.tensor([[5, 0, 7]], dtype=torch.int32, device=DEVICE)
    positions = torch.arange(length, device=DEVICE)
    slots = table[0, positions // block_size].long() * block_size + positions % block_size
    q, k, v = (torch.randn(length, h, head_dim, device=DEVICE) for h in (heads_q, heads_kv, heads_kv))
    write_kv(k, v, k_cache, v_cache, slots, backend=backend)
    out = paged_attention(q, k_cache, v_cache, table, torch.tensor([length], device=DEVICE),
                          torch.tensor([0, length], device=DEVICE), scale=0.25, backend=backend)
    dense = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, scale=0.25, enable_gqa=True)
    torch.testing.assert_close(out, dense.transpose(0, 1), **FP32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_write_kv_skips_negative_slots(seed, backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16 and DEVICE == "cpu":
        pytest.skip("bf16 is broken under the Triton interpreter")
    k_cache = torch.randn(6, 4, 2, 24, device=DEVICE).to(dtype)
    v_cache = torch.randn_like(k_cache)
    k, v = (torch.randn(5, 2, 24, device=DEVICE).to(dtype) for _ in range(2))
    slots = torch.tensor([3, -1, 22, 0, -5], device=DEVICE)
    expected_k, expected_v = k_cache.clone().view(-1, 2, 24), v_cache.clone().view(-1, 2, 24)
    keep = slots >= 0
    expected_k[slots[keep]] = k[keep]
    expected_v[slots[keep]] = v[keep]
    write_kv(k, v, k_cache, v_cache, slots.int(), backend=backend)
    assert torch.equal(k_cache.view(-1, 2, 24), expected_k) and torch.equal(v_cache.view(-1, 2, 24), expected_v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_copy_blocks(seed, backend):
    k_cache = torch.randn(6, 4, 2, 8, device=DEVICE)
    v_cache = torch.randn_like(k_cache)
    pairs = torch.tensor([[1, 4], [2, 0], [1, 5]], device=DEVICE)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    for src, dst in pairs.tolist():
        expected_k[dst], expected_v[dst] = expected_k[src], expected_v[src]
    copy_blocks(k_cache, v_cache, pairs, backend=backend)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)


def _good():
    return make_case([9, 5], [2, 1], block_size=4, heads_q=4, heads_kv=2, head_dim=8, device="cpu")


def _bad_attention_args():
    q, kc, vc, tables, lens, starts = _good()
    return {
        "q": ((q[..., :6], kc, vc, tables, lens, starts), {}),
        "k_cache": ((q, kc[:, :, :1], vc, tables, lens, starts), {}),
        "v_cache": ((q, kc, vc.transpose(1, 2), tables, lens, starts), {}),
        "block_tables": ((q, kc, vc, tables.float(), lens, starts), {}),
        "context_lens": ((q, kc, vc, tables, lens[:1], starts), {}),
        "query_start": ((q, kc, vc, tables, lens, starts[:2]), {}),
        "scale": ((q, kc, vc, tables, lens, starts), {"scale": float("nan")}),
        "sliding_window": ((q, kc, vc, tables, lens, starts), {"sliding_window": -1}),
        "softcap": ((q, kc, vc, tables, lens, starts), {"softcap": -2.0}),
        "backend": ((q, kc, vc, tables, lens, starts), {"backend": "gpu"}),
        # index values, checked by the CPU kernel before it writes anything
        "context_lens ": ((q, kc, vc, tables, torch.tensor([9, 0]), starts), {}),
        "block_tables ": ((q, kc, vc, tables.masked_fill(tables >= 0, 99), lens, starts), {}),
        "query_start ": ((q, kc, vc, tables, lens, torch.tensor([0, 2, 2])), {}),
    }


@pytest.mark.parametrize("name", list(_bad_attention_args()))
def test_paged_attention_rejects_bad_arguments(name):
    args, options = _bad_attention_args()[name]
    with pytest.raises((ValueError, TypeError), match=name.strip()):
        paged_attention(*args, **{"scale": 0.5, "backend": "cpu", **options})


@pytest.mark.parametrize("name,value", [("scale", "0.5"), ("sliding_window", 2.0), ("softcap", True),
                                        ("backend", None)])
def test_paged_attention_rejects_wrong_scalar_types(name, value):
    with pytest.raises(TypeError, match=f"^{name} must"):
        paged_attention(*_good(), **{"scale": 0.5, "backend": "cpu", name: value})


def test_cache_writers_reject_bad_arguments():
    kc, vc = torch.zeros(3, 4, 2, 8), torch.zeros(3, 4, 2, 8)
    k = torch.zeros(2, 2, 8)
    with pytest.raises(ValueError, match="slot_mapping"):
        write_kv(k, k, kc, vc, torch.tensor([0, 12]))
    with pytest.raises(ValueError, match="slot_mapping"):
        write_kv(k, k, kc, vc, torch.tensor([0]))
    with pytest.raises(ValueError, match="k "):
        write_kv(torch.zeros(2, 1, 8), k, kc, vc, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="k_cache"):
        write_kv(k, k, kc.half(), vc.half(), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="pairs"):
        copy_blocks(kc, vc, torch.tensor([[0, 3]]))
    with pytest.raises(ValueError, match="pairs"):
        copy_blocks(kc, vc, torch.tensor([0, 1]))
    assert not kc.any()


def test_opcheck(seed):
    q, kc, vc, tables, lens, starts = _good()
    torch.library.opcheck(torch.ops.sleepcore.paged_attention.default,
                          (q, kc, vc, tables, lens.long(), starts, 0.5, 3, 2.0, "cpu"))
    k = torch.randn(3, 2, 8)
    torch.library.opcheck(torch.ops.sleepcore.write_kv.default, (k, k.clone(), kc, vc, torch.tensor([1, -1, 7]), "cpu"))
    torch.library.opcheck(torch.ops.sleepcore.copy_blocks.default, (kc, vc, torch.tensor([[0, 2], [1, 3]]), "cpu"))


def test_compile_fullgraph(seed):
    case = _good()

    def step(q, kc, vc, tables, lens, starts):
        return paged_attention(q, kc, vc, tables, lens, starts, scale=0.5, softcap=3.0, backend="cpu") * 2

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*case), step(*case), **FP32)
