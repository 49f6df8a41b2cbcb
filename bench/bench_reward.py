"""LTI reward benchmark: ``imitation_reward`` as one Knowledge Seeding step calls it, against rapidfuzz.

One KS step rewards ``batch_size x completions`` (completion, reference) pairs (the
KnowledgeSeedingConfig defaults: 8 prompts x 4 completions = 32 pairs); a reference is the teacher's
continuation after a cut (``--tokens`` ~40 ids, vocab of SmolLM2-135M), and the student's
completions overlap it partly (copies with 0-100 % of the tokens edited, some truncated). The same
pairs decoded into strings (~150 code points, some non-ASCII) give the ``unit="char"`` case.

Providers, timed interleaved in one run (round-robin, ``--inner`` calls per sample) so that a
shared machine slows them alike:

* ``imitation_reward``: the public function, ``gamma`` and ``z0`` from the KS defaults, the
  default exact-match judge reading the texts (what the sleep benchmark's config uses);
* ``levenshtein``: the public batched distance with the reward's bands ``floor(z0 * L)`` (rapidfuzz
  underneath since the switch; the rows noted "before the switch" time the former C++ kernel);
* ``rapidfuzz_loop``: ``rapidfuzz.distance.Levenshtein.distance(x, y, score_cutoff=band)`` per pair;
* ``rapidfuzz_cpdist``: ``rapidfuzz.process.cpdist`` (pairwise, one scalar cutoff: the largest band,
  then each pair clamped to its own band). ``process.cdist`` computes all-vs-all, so it does not apply.

The KS step time (the context) is read from the sleep benchmark's JSON
(``bench/results/sleep-knowledge-<device>.json``: KS train seconds / steps) or given with
``--ks-step-seconds``. Rows go to ``bench/results/reward-<device>.csv``, with the load average in
``note`` (other jobs on the machine make absolute times noisy; compare ratios from one run).

Usage: ``python bench/bench_reward.py [--rounds 200] [--inner 10] [--note TEXT]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Levenshtein

from sleepcore.benchmarks import harness
from sleepcore.benchmarks.shapes import HEADS
from sleepcore.sleep.config import KnowledgeSeedingConfig
from sleepcore.sleep.rewards import imitation_reward, levenshtein

RESULTS = Path(__file__).resolve().parent / "results"
_EDIT_RATES = (0.0, 0.1, 0.3, 0.6, 1.0)  # fraction of a completion's tokens that differ from the reference
_PIECE_CHARACTERS = "etaoinshrdlu etaoin éßøñ漢字🙂,."


def make_pairs(rng: random.Random, prompts: int, completions: int, tokens: int, vocab: int):
    """``prompts * completions`` (completion, reference) token-id lists, grouped by prompt."""
    a, b = [], []
    for _ in range(prompts):
        reference = [rng.randrange(vocab) for _ in range(rng.randint(tokens * 3 // 4, tokens * 5 // 4))]
        for _ in range(completions):
            rate, completion = rng.choice(_EDIT_RATES), []
            for token in reference:
                if rng.random() >= rate:
                    completion.append(token)
                elif (edit := rng.random()) < 0.6:
                    completion.append(rng.randrange(vocab))  # substitute
                elif edit < 0.8:
                    completion += [token, rng.randrange(vocab)]  # insert
            if rng.random() < 0.25:  # stopped early (EOS)
                completion = completion[: rng.randint(1, len(completion) or 1)]
            a.append(completion[: len(reference)])  # the sampler stops at len(reference)
            b.append(reference)
    return a, b


def make_decoder(rng: random.Random, vocab: int):
    """A fake tokenizer's decode: each id maps to a fixed piece of 1-6 characters."""
    pieces = ["".join(rng.choice(_PIECE_CHARACTERS) for _ in range(rng.randint(1, 6))) for _ in range(vocab)]
    return lambda ids: "".join(pieces[i] for i in ids)


def bands_of(a, b, z0: float) -> list[int]:
    return [int(np.floor(z0 * max(len(x), len(y)))) for x, y in zip(a, b)]


def providers(a, b, unit: str, config: KnowledgeSeedingConfig, decode) -> dict:
    z0, bands = config.z0, bands_of(a, b, config.z0)
    texts = ({} if unit == "char" else
             {"completion_texts": [decode(x) for x in a], "reference_texts": [decode(y) for y in b]})
    band_array = np.asarray(bands)

    def cpdist():
        distances = process.cpdist(a, b, scorer=Levenshtein.distance, score_cutoff=max(bands, default=0), workers=1)
        return np.where(distances > band_array, band_array + 1, distances).tolist()

    return {
        "imitation_reward": lambda: imitation_reward(a, b, gamma=config.gamma, z0=z0, unit=unit, **texts),
        "levenshtein": lambda: levenshtein(a, b, max_distance=bands, unit=unit),
        "rapidfuzz_loop": lambda: [Levenshtein.distance(x, y, score_cutoff=k) for x, y, k in zip(a, b, bands)],
        "rapidfuzz_cpdist": cpdist,
    }


def time_interleaved(calls: dict, rounds: int, inner: int) -> dict[str, list[float]]:
    """Seconds per call of each provider: ``rounds`` samples each, the providers in turn."""
    for call in calls.values():  # warm-up
        for _ in range(inner):
            call()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(inner):
                call()
            times[name].append((time.perf_counter() - start) / inner)
    return times


def ks_step_seconds(given: float | None) -> tuple[float | None, str]:
    if given is not None:
        return given, "--ks-step-seconds"
    path = RESULTS / f"sleep-knowledge-{harness.device_name()}.json"
    if not path.exists():
        return None, "none"
    sleeps = json.loads(path.read_text())["results"].get("ks", {}).get("sleeps", [])
    seconds, steps = sum(s.get("train_seconds", 0) for s in sleeps), sum(s.get("steps", 0) for s in sleeps)
    return (seconds / steps, f"{path.name}: KS {seconds:.0f} s / {steps} steps") if steps else (None, "none")


def run_case(unit: str, a, b, args, config, decode) -> list[dict]:
    calls = providers(a, b, unit, config, decode)
    distances = calls["levenshtein"]()
    if calls["rapidfuzz_loop"]() != distances or calls["rapidfuzz_cpdist"]() != distances:
        raise AssertionError(f"unit={unit}: the providers disagree on the distances")
    load = os.getloadavg()[0]
    stats = {name: harness.quantiles(times) for name, times in time_interleaved(calls, args.rounds, args.inner).items()}
    baseline = stats["rapidfuzz_loop"]["median_s"]
    lengths = [len(x) + len(y) for x, y in zip(a, b)]
    return [{"bench": "reward", "case": f"ks-{unit}", "unit": unit, "pairs": len(a),
             "mean_pair_length": sum(lengths) / (2 * len(a)), "provider": name, **stat,
             "ratio_vs_rapidfuzz_loop": stat["median_s"] / baseline,
             "note": f"{args.note}; load average {load:.2f} -> {os.getloadavg()[0]:.2f}".lstrip("; ")}
            for name, stat in stats.items()]


def print_table(rows: list[dict], step_s: float | None, step_source: str) -> None:
    print(f"{'case':<9} {'provider':<18} {'median us':>10} {'p20 us':>9} {'p80 us':>9} {'vs loop':>8}"
          + (f" {'share of KS step':>17}" if step_s else ""))
    for row in rows:
        share = f" {row['median_s'] / step_s:>17.2e}" if step_s else ""
        print(f"{row['case']:<9} {row['provider']:<18} {row['median_s'] * 1e6:>10.1f} {row['p20_s'] * 1e6:>9.1f} "
              f"{row['p80_s'] * 1e6:>9.1f} {row['ratio_vs_rapidfuzz_loop']:>7.2f}x" + share)
    if step_s:
        print(f"KS step: {step_s:.1f} s ({step_source})")
    print(f"note: {rows[0]['note']}")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=40, help="reference length, about (default 40)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--inner", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ks-step-seconds", type=float, default=None)
    parser.add_argument("--note", default="", help="free text for the CSV (e.g. 'shared machine')")
    parser.add_argument("--no-csv", action="store_true")
    args = parser.parse_args(argv)

    config, vocab, rng = KnowledgeSeedingConfig(), HEADS["smollm2-135m"].vocab, random.Random(args.seed)
    a, b = make_pairs(rng, config.batch_size, config.completions, args.tokens, vocab)
    decode = make_decoder(rng, vocab)
    rows = run_case("token", a, b, args, config, decode)
    rows += run_case("char", [decode(x) for x in a], [decode(y) for y in b], args, config, decode)
    step_s, step_source = ks_step_seconds(args.ks_step_seconds)
    for row in rows:
        row.update(ks_step_s=step_s or "", share_of_ks_step=row["median_s"] / step_s if step_s else "")
    print_table(rows, step_s, step_source)
    if not args.no_csv:
        path = RESULTS / f"reward-{harness.device_name()}.csv"
        harness.append_csv(path, rows)
        print(f"appended {len(rows)} rows to {path}")
    return rows


if __name__ == "__main__":
    main()
