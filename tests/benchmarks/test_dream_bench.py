"""The Dreaming inner-loop benchmark on its tiny case: every provider trains the same tokens (never its timings)."""

import pytest

from sleepcore.benchmarks import driver
from sleepcore.benchmarks.dream import BENCHMARK, PROVIDERS, summarise


def test_every_provider_runs_the_small_case(capsys):
    pytest.importorskip("peft")
    args = driver.parse(BENCHMARK, ["--case", "small", "--warmup", "0", "--reps", "1"], "")
    rows = []
    for provider in PROVIDERS:
        rows += [{"case": "small", **row} for row in driver.worker(BENCHMARK, provider, "small", args)["rows"]]
    assert [row["provider"] for row in rows] == list(PROVIDERS)
    assert len({row["trained_tokens"] for row in rows}) == 1 and rows[0]["trained_tokens"] > 0
    summarise(rows)
    assert "1.00x" in capsys.readouterr().out
