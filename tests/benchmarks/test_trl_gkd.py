"""bench/bench_trl.py's loss-part providers on the tiny case: rows, and TRL's and sleepcore's
losses and head gradients agree (never its timings). The whole-step providers load SmolLM2 and
are left to the benchmark run."""

import pytest

pytest.importorskip("trl", minversion="1.16")

from sleepcore.benchmarks import driver  # noqa: E402
from sleepcore.benchmarks.trl_gkd import BENCHMARK, summary  # noqa: E402


def test_loss_providers_agree_and_summarise(capsys):
    args = driver.parse(BENCHMARK, ["--case", "tiny", "--modes", "full", "--warmup", "0", "--reps", "1"], "")
    rows = [row for provider in ("trl", "sleepcore")
            for row in driver.worker(BENCHMARK, provider, "tiny", args)["rows"]]
    trl, ours = rows
    assert ours["loss"] == pytest.approx(trl["loss"], rel=1e-5)
    assert ours["grad_weight_norm"] == pytest.approx(trl["grad_weight_norm"], rel=1e-4)
    summary(rows, tokens=32)
    assert "sleepcore" in capsys.readouterr().out
