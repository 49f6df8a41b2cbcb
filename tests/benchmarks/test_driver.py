"""The benchmark driver on tiny shapes: its modes, rows and CSV columns (never its timings)."""

import csv
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from sleepcore.benchmarks import driver, harness
from sleepcore.benchmarks.driver import Benchmark, Run

ROW_FIELDS = {"provider", "mode", "median_s", "p20_s", "p80_s", "peak_bytes", "baseline_bytes", "extra_bytes",
              "memory_baseline", "threads"}


@dataclass(frozen=True)
class ToyCase:
    tokens: int = 8
    hidden: int = 4
    vocab: int = 16
    device: str = "cpu"


def toy_inputs(case):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(case.tokens, case.hidden, generator=generator, requires_grad=True)
    weight = torch.randn(case.vocab, case.hidden, generator=generator, requires_grad=True)
    return hidden, weight, torch.randint(0, case.vocab, (case.tokens,), generator=generator)


def toy_run(provider, case, inputs, options):
    hidden, weight, labels = inputs
    if provider == "counter":
        return Run(lambda: {"tokens": case.tokens}, report=lambda output: {"seen": output["tokens"]})
    scale = 2.0 if provider == "doubled" else 1.0
    loss = lambda: (scale * torch.nn.functional.cross_entropy(hidden @ weight.T, labels), {})  # noqa: E731
    return Run(loss, leaves=(hidden, weight), weight=weight)


def toy_benchmark(**overrides):
    settings = dict(family="toy", module="unused", cases={"tiny": ToyCase()}, providers=("torch", "doubled"),
                    inputs=toy_inputs, make_run=toy_run, describe=lambda case: "toy loss",
                    case_fields=lambda case, options: {"tokens": case.tokens}, flops=lambda case: 1000)
    return Benchmark(**{**settings, **overrides})


def in_process_worker(bench):
    """``harness.run_worker`` without the subprocess: parse the worker's arguments, run it here."""
    def run_worker(module, arguments, timeout_s):
        args = driver.parse(bench, arguments, "")
        return driver.worker(bench, args.worker, args.case, args)
    return run_worker


def test_worker_times_each_mode_and_reports_memory():
    bench = toy_benchmark()
    args = driver.parse(bench, ["--case", "tiny", "--reps", "3", "--warmup", "1"], "")
    rows = driver.worker(bench, "torch", "tiny", args)["rows"]
    assert [row["mode"] for row in rows] == list(driver.MODES)
    for row in rows:
        assert ROW_FIELDS <= set(row)
        assert row["p20_s"] <= row["median_s"] <= row["p80_s"]
        assert row["extra_bytes"] == row["peak_bytes"] - row["baseline_bytes"]
        assert row["memory_baseline"] == "rss-after-inputs"
    by_mode = {row["mode"]: row for row in rows}
    assert by_mode["forward"]["loss"] == by_mode["full"]["loss"] == by_mode["backward"]["loss"]
    assert "tflops" in by_mode["full"] and "tflops" not in by_mode["forward"]
    # forward leaves no gradient; backward and full do, and the same one
    assert "grad_weight_norm" not in by_mode["forward"]
    assert by_mode["backward"]["grad_weight_norm"] == pytest.approx(by_mode["full"]["grad_weight_norm"])


def test_counts_give_a_throughput_and_reports_add_fields():
    bench = toy_benchmark(providers=("counter",), modes=("forward",), throughput=("tokens", "tokens_per_s"),
                          reference=("counter",))
    args = driver.parse(bench, ["--case", "tiny", "--reps", "2", "--warmup", "0"], "")
    (row,) = driver.worker(bench, "counter", "tiny", args)["rows"]
    assert row["tokens"] == 8 and row["seen"] == 8
    assert row["tokens_per_s"] == pytest.approx(8 / row["median_s"])
    assert "loss" not in row


def test_unsupported_modes_and_providers_are_refused():
    bench = toy_benchmark(modes=("forward",))
    with pytest.raises(SystemExit):
        driver.parse(bench, ["--case", "tiny", "--modes", "backward"], "")
    with pytest.raises(SystemExit):
        driver.parse(bench, ["--case", "tiny", "--providers", "nope"], "")


def test_main_writes_one_csv_per_family(tmp_path, monkeypatch, capsys):
    bench = toy_benchmark()
    monkeypatch.setattr(harness, "run_worker", in_process_worker(bench))
    argv = ["--case", "tiny", "--reps", "1", "--warmup", "0", "--modes", "full,forward",
            "--results-dir", str(tmp_path), "--note", "test"]
    driver.main(bench, argv)
    driver.main(bench, argv)
    path = tmp_path / f"toy-{harness.device_name()}.csv"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 2  # two runs x two providers x two modes
    assert ROW_FIELDS | {"bench", "case", "tokens", "timestamp", "git_sha", "torch", "load_avg", "note"} <= set(rows[0])
    assert {(row["provider"], row["mode"]) for row in rows} == {(p, m) for p in ("torch", "doubled")
                                                                 for m in ("full", "forward")}
    assert {row["bench"] for row in rows} == {"toy"} and {row["note"] for row in rows} == {"test"}
    table = capsys.readouterr().out
    assert "ratios against torch" in table and "doubled" in table


def test_append_keeps_old_rows_under_new_columns(tmp_path):
    path = tmp_path / "family-device.csv"
    harness.append_csv(path, [{"provider": "a", "median_s": 1.0}])
    harness.append_csv(path, [{"provider": "b", "median_s": 2.0, "mode": "full"}])
    rows, header = harness.read_csv(path)
    assert [row["provider"] for row in rows] == ["a", "b"] and header[-1] == "mode"
    assert rows[0]["mode"] == "" and rows[1]["mode"] == "full"


def test_policy_benchmark_runs_in_its_worker_process(tmp_path):
    """The real subprocess path, on the policy benchmark's tiny case (two sequences of 8 tokens)."""
    done = subprocess.run([sys.executable, "-m", "sleepcore.benchmarks.policy", "--case", "tiny", "--providers",
                           "torch,sleepcore", "--warmup", "0", "--reps", "1", "--csv", str(tmp_path / "p.csv")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows, header = harness.read_csv(tmp_path / "p.csv")
    assert {"sequences", "seq_len", "hidden", "vocab", "dtype", "extra_bytes"} <= set(header)
    assert {(row["provider"], row["mode"]) for row in rows} == {(p, m) for p in ("torch", "sleepcore")
                                                                 for m in driver.MODES}
    losses = {row["provider"]: float(row["loss"]) for row in rows if row["mode"] == "full"}
    assert losses["sleepcore"] == pytest.approx(losses["torch"], rel=1e-4)
