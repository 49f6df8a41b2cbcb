"""sleepcore.sleep.rewards: the public ``levenshtein`` (rapidfuzz underneath) against a plain
O(n m) dynamic programme on random inputs, and the Learning-to-Imitate reward on hand-computed cases."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch

from sleepcore.sleep.rewards import imitation_reward, levenshtein, normalized_exact_match


def reference_distance(x, y) -> int:
    """Textbook Levenshtein: the full (n + 1) x (m + 1) table, one row at a time."""
    previous = list(range(len(y) + 1))
    for i in range(1, len(x) + 1):
        current = [i] + [0] * len(y)
        for j in range(1, len(y) + 1):
            current[j] = min(previous[j - 1] + (x[i - 1] != y[j - 1]), previous[j] + 1, current[j - 1] + 1)
        previous = current
    return previous[-1]


def expected(true_distance: int, band) -> int:
    return true_distance if band is None or true_distance <= band else band + 1


def random_token_pairs(rng: random.Random, count: int, max_len: int = 60):
    pairs = []
    for _ in range(count):
        alphabet = rng.choice([2, 4, 50])  # small alphabets give small distances, large ones large
        x = [rng.randrange(alphabet) for _ in range(rng.randint(0, max_len))]
        if rng.random() < 0.5:  # a mutated copy: a small distance
            y = list(x)
            for _ in range(rng.randint(0, 8)):
                operation, position = rng.choice("isd"), rng.randint(0, len(y))
                if operation == "i":
                    y.insert(position, rng.randrange(alphabet))
                elif position < len(y) and operation == "s":
                    y[position] = rng.randrange(alphabet)
                elif position < len(y):
                    del y[position]
        else:
            y = [rng.randrange(alphabet) for _ in range(rng.randint(0, max_len))]
        pairs.append((x, y))
    return pairs


@pytest.mark.parametrize("band", [None, 0, 1, 3, 7, 20, 100])
def test_tokens_match_reference(seed, band):
    rng = random.Random(seed)
    pairs = random_token_pairs(rng, 150)
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    got = levenshtein(a, b, max_distance=band)
    want = [expected(reference_distance(x, y), band) for x, y in pairs]
    assert got == want


def test_tokens_per_pair_bands_and_input_kinds(seed):
    rng = random.Random(seed)
    pairs = random_token_pairs(rng, 60)
    bands = [rng.choice([None, 0, 2, 5, 30]) for _ in pairs]
    truth = [reference_distance(x, y) for x, y in pairs]
    want = [expected(t, k) for t, k in zip(truth, bands)]
    # lists, tuples, int32 tensors and numpy arrays give the same answers
    a = [torch.tensor(x, dtype=torch.int32) if i % 3 == 0 else tuple(x) for i, (x, _) in enumerate(pairs)]
    b = [np.asarray(y, dtype=np.int64) if i % 2 else y for i, (_, y) in enumerate(pairs)]
    assert levenshtein(a, b, max_distance=bands) == want
    # large and negative token ids do not collide (Python's hash(2**61 - 1) == hash(0), hash(-1) == hash(-2))
    assert levenshtein([[2**62, 1]], [[2**62 + 1, 1]]) == [1]
    assert levenshtein([[2**61 - 1], [-1], [-2**63]], [[0], [-2], [2**63 - 1]]) == [1, 1, 1]
    # uint64 ids are compared as int64, as before: 2**64 - 1 is -1
    assert levenshtein([np.array([2**64 - 1], dtype=np.uint64)], [[-1]]) == [0]


def test_huge_ids_match_reference(seed):
    # ids spread over the int64 range, many of them equal modulo 2**61 - 1 (where Python's hash wraps)
    rng = random.Random(seed)
    spread = [(k % 4) * (2**61 - 1) - k for k in range(50)]
    pairs = [([spread[t] for t in x], [spread[t] for t in y]) for x, y in random_token_pairs(rng, 80)]
    bands = [rng.choice([None, 0, 3, 20]) for _ in pairs]
    want = [expected(reference_distance(x, y), k) for (x, y), k in zip(pairs, bands)]
    assert levenshtein([x for x, _ in pairs], [y for _, y in pairs], max_distance=bands) == want


def test_bands_around_the_true_distance(seed):
    # k = d - 1 must give d (= k + 1), k = d and k = d + 1 must give d: the early exit never fires too soon
    rng = random.Random(seed)
    pairs = [pair for pair in random_token_pairs(rng, 200) if reference_distance(*pair) > 0]
    a, b, bands, want = [], [], [], []
    for x, y in pairs:
        distance = reference_distance(x, y)
        for band in (distance - 1, distance, distance + 1):
            a.append(x), b.append(y), bands.append(band), want.append(distance)
    assert levenshtein(a, b, max_distance=bands) == want


def test_strided_tensor_rows():
    rows = torch.arange(24).reshape(4, 6)
    assert levenshtein([rows[:, 0]], [rows[:, 1]]) == [4]  # non-contiguous columns are copied


@pytest.mark.parametrize("band", [None, 0, 2, 6, 40])
def test_chars_match_reference(seed, band):
    rng = random.Random(seed)
    alphabet = "aeiouéèàçñßø漢字🙂🚀👍🏽\u0301 \ud800"  # a lone surrogate is one code point too
    a, b = [], []
    for _ in range(120):
        x = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        y = x[: rng.randint(0, len(x))] + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        a.append(x)
        b.append(y if rng.random() < 0.7 else "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))))
    got = levenshtein(a, b, max_distance=band, unit="char")
    assert got == [expected(reference_distance(x, y), band) for x, y in zip(a, b)]


def test_known_values_and_edges():
    assert levenshtein(["kitten", "flaw", "", "abc", "e\u0301"], ["sitting", "lawn", "", "", "é"], unit="char") \
        == [3, 2, 0, 3, 2]
    assert levenshtein(["🙂🙂", "naïve"], ["🙂", "naive"], unit="char") == [1, 1]
    assert levenshtein([[], [], [1, 2]], [[], [7, 8, 9], []]) == [0, 3, 2]
    assert levenshtein([], []) == []
    assert levenshtein([], [], unit="char", max_distance=3) == []
    assert levenshtein([()], [()], max_distance=0) == [0]
    assert levenshtein([[], [], [1]], [[], [4, 5], []], max_distance=[0, 1, 0]) == [0, 2, 1]
    assert levenshtein(["", "", "ß"], ["", "漢🙂", ""], unit="char", max_distance=[0, 1, None]) == [0, 2, 1]


def test_length_difference_shortcut():
    # |n - m| > k gives k + 1 without looking at the tokens, even for a prefix
    assert levenshtein([list(range(50))], [list(range(40))], max_distance=9) == [10]
    assert levenshtein([list(range(50))], [list(range(40))], max_distance=10) == [10]
    assert levenshtein([[]], [[1, 2, 3]], max_distance=2) == [3]
    assert levenshtein(["abcdef"], ["ab"], max_distance=0, unit="char") == [1]


def test_band_boundary():
    x, y = list(range(30)), list(range(100, 130))  # all substitutions: distance 30
    assert levenshtein([x, x, x], [y, y, y], max_distance=[29, 30, 31]) == [30, 30, 30]
    assert levenshtein([x], [y], max_distance=5) == [6]


def test_errors():
    with pytest.raises(ValueError, match="same length"):
        levenshtein([[1]], [[1], [2]])
    with pytest.raises(TypeError, match="a must be a list or tuple"):
        levenshtein("abc", ["abc"], unit="char")
    with pytest.raises(TypeError, match=r"b\[0\]"):
        levenshtein([[1]], [[1.5]])
    with pytest.raises(TypeError, match=r"a\[0\].*unit='char'"):
        levenshtein(["abc"], ["abd"])
    with pytest.raises(TypeError, match=r"a\[1\] must be a str"):
        levenshtein(["abc", [1]], ["abd", "x"], unit="char")
    with pytest.raises(TypeError, match="tensor"):
        levenshtein([torch.ones(3)], [[1]])
    with pytest.raises(ValueError, match="1-D"):
        levenshtein([torch.ones(2, 2, dtype=torch.long)], [[1]])
    with pytest.raises(ValueError, match="max_distance must be an int >= 0"):
        levenshtein([[1]], [[1]], max_distance=-1)
    with pytest.raises(TypeError, match="max_distance"):
        levenshtein([[1]], [[1]], max_distance=1.0)
    with pytest.raises(ValueError, match=r"max_distance\[1\]"):
        levenshtein([[1], [2]], [[1], [2]], max_distance=[1, -2])
    with pytest.raises(ValueError, match="entries for 2 pairs"):
        levenshtein([[1], [2]], [[1], [2]], max_distance=[1])
    with pytest.raises(ValueError, match="unit"):
        levenshtein([[1]], [[1]], unit="word")


def test_normalized_exact_match():
    assert normalized_exact_match("The Eiffel  Tower!", "eiffel tower") == 1.0
    assert normalized_exact_match("an apple, a day", "Apple day.") == 1.0
    assert normalized_exact_match("Paris", "London") == 0.0
    assert normalized_exact_match("", "the") == 1.0
    with pytest.raises(TypeError, match="reference"):
        normalized_exact_match("a", None)


def test_imitation_reward_hand_computed():
    tokens = [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [], [5, 6]]
    refs = [[1, 2, 3, 4], [9, 9, 9, 9], [1, 2, 9, 9], [], [5, 6, 7, 8]]
    # identical: 1; all different (z = 4 > 2): 0; z = 2 = z0 * 4 exactly: 1 - 2/4; both empty: 1;
    # lengths 2 vs 4: z = 2 = 0.5 * 4, on the boundary: 1 - 2/4
    assert imitation_reward(tokens, refs, gamma=0.0) == [1.0, 0.0, 0.5, 1.0, 0.5]
    # just past the boundary: z = 2 > 0.49 * 4
    assert imitation_reward(tokens, refs, gamma=0.0, z0=0.49) == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert imitation_reward([[1, 2]], [[1, 3]], gamma=0.0, z0=0.0) == [0.0]
    assert imitation_reward([[1, 2]], [[3, 4]], gamma=0.0, z0=1.0) == [0.0]  # z = L: 1 - 1
    assert imitation_reward([[1, 2, 3]], [[4, 5]], gamma=0.0, z0=1.0) == [0.0]
    assert imitation_reward([[1, 2, 3]], [[1, 5]], gamma=0.0, z0=1.0) == pytest.approx([1 - 2 / 3])

    texts = ["Paris", "paris.", "Rome", "", "x"]
    ref_texts = ["the Paris", "Paris", "Paris", "", "y"]
    got = imitation_reward(tokens, refs, gamma=0.25, completion_texts=texts, reference_texts=ref_texts)
    r_sem = [1.0, 1.0, 0.0, 1.0, 0.0]
    r_abs = [1.0, 0.0, 0.5, 1.0, 0.5]
    assert got == pytest.approx([0.25 * s + 0.75 * a for s, a in zip(r_sem, r_abs)])
    # totally different sequences: only gamma * r_sem remains
    assert imitation_reward([[1, 2]], [[3, 4]], gamma=0.3, completion_texts=["a"], reference_texts=["a"]) \
        == pytest.approx([0.3])


def test_imitation_reward_chars_and_judge():
    # unit="char": the strings are also the judge's texts
    assert imitation_reward(["The cat", "dog"], ["the cat!", "cat"], unit="char") \
        == pytest.approx([0.5 * 1 + 0.5 * (1 - 2 / 8), 0.5 * 0 + 0.5 * 0])
    calls = []

    def judge(completion, reference):
        calls.append((completion, reference))
        return 0.8

    got = imitation_reward([[1], [2]], [[1], [3]], gamma=1.0, judge=judge, completion_texts=["c0", "c1"],
                           reference_texts=["r0", "r1"])
    assert got == pytest.approx([0.8, 0.8]) and calls == [("c0", "r0"), ("c1", "r1")]
    calls.clear()
    assert imitation_reward([[1]], [[1]], gamma=0.0, judge=judge) == [1.0] and not calls  # judge unused
    assert imitation_reward([], [], gamma=0.5, completion_texts=[], reference_texts=[]) == []


def test_imitation_reward_errors():
    ok = dict(completion_texts=["a"], reference_texts=["a"])
    for name, value in (("gamma", 1.5), ("gamma", -0.1), ("z0", float("nan")), ("z0", 2)):
        with pytest.raises(ValueError, match=name):
            imitation_reward([[1]], [[1]], **{name: value}, **ok)
    with pytest.raises(TypeError, match="gamma"):
        imitation_reward([[1]], [[1]], gamma="0.5", **ok)
    with pytest.raises(ValueError, match="completion_texts and reference_texts are required"):
        imitation_reward([[1]], [[1]])
    with pytest.raises(ValueError, match="reference_texts must have one text per pair"):
        imitation_reward([[1]], [[1]], completion_texts=["a"], reference_texts=["a", "b"])
    with pytest.raises(ValueError, match="completions and references"):
        imitation_reward([[1]], [], gamma=0.0)
    with pytest.raises(TypeError, match="judge must be callable"):
        imitation_reward([[1]], [[1]], judge="exact", **ok)
    with pytest.raises(ValueError, match=r"judge must return a score in \[0, 1\]"):
        imitation_reward([[1]], [[1]], judge=lambda c, r: 2.0, **ok)
    with pytest.raises(ValueError, match="unit"):
        imitation_reward([[1]], [[1]], unit="bytes", gamma=0.0)


@pytest.mark.slow
def test_speed_report():
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 8, 200).tolist() for _ in range(1000)]
    b = [x[:150] + rng.integers(0, 8, 50).tolist() if i % 2 else rng.integers(0, 8, 200).tolist()
         for i, x in enumerate(a)]
    levenshtein(a[:10], b[:10], max_distance=100)  # warm-up
    start = time.perf_counter()
    banded = levenshtein(a, b, max_distance=100)
    core_s = time.perf_counter() - start
    start = time.perf_counter()
    exact = levenshtein(a, b)
    full_s = time.perf_counter() - start
    sample = 10
    start = time.perf_counter()
    python = [reference_distance(x, y) for x, y in zip(a[:sample], b[:sample])]
    python_s = (time.perf_counter() - start) * len(a) / sample
    assert banded[:sample] == [expected(t, 100) for t in python] and banded == [expected(t, 100) for t in exact]
    print(f"\n1000 pairs of length 200: banded k=100 {core_s * 1e3:.1f} ms, unbanded {full_s * 1e3:.1f} ms, "
          f"python DP ~{python_s:.1f} s (extrapolated from {sample} pairs), speed-up ~{python_s / core_s:.0f}x")
