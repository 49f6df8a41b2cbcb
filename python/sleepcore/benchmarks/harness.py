"""Run one provider per subprocess (clean peak-memory readings), time it, and record results.

Each provider runs in a fresh interpreter so that peak RSS (CPU) or ``max_memory_allocated``
(GPU) belongs to it alone. Times are wall-clock per forward+backward after warm-up (compilation
excluded), reported as median with p20/p80.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch


def peak_memory_bytes(device: str) -> int:
    """Peak RSS of this process (CPU) or peak allocated device memory (CUDA), in bytes."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed_runs(step, device: str, warmup: int, reps: int) -> list[float]:
    """Seconds per call of ``step()`` over ``reps`` calls after ``warmup`` calls."""
    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def quantiles(times: list[float]) -> dict:
    ordered = sorted(times)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]  # noqa: E731
    return {"median_s": statistics.median(ordered), "p20_s": pick(0.2), "p80_s": pick(0.8)}


def run_worker(module: str, provider: str, case: str, extra: list[str], timeout_s: float) -> dict:
    """Run ``python -m module --worker provider --case case`` and parse its last JSON line."""
    command = [sys.executable, "-m", module, "--worker", provider, "--case", case, *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"provider": provider, "error": " | ".join(tail) or f"exit code {done.returncode}"}
    return json.loads(lines[-1])


def device_name() -> str:
    """A file-name-safe device label: the GPU's name, or the CPU model and core count."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = _cpu_model() + f" {os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu " + platform.processor()


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def append_csv(path: Path, rows: list[dict]) -> None:
    """Append result rows (with versions, git sha and a timestamp) to ``path``. When the rows bring
    columns the file lacks, the file is rewritten (atomically) under the union of the columns."""
    import sleepcore

    stamp = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_sha": _git_sha(),
             "sleepcore": sleepcore.__version__, "torch": torch.__version__, "device": device_name()}
    rows = [{**stamp, **row} for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    old_rows, header = [], []
    if path.exists() and path.stat().st_size > 0:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header, old_rows = list(reader.fieldnames or []), list(reader)
    fields = header + [f for row in rows for f in row if f not in header]
    fields = list(dict.fromkeys(fields))
    if header and fields == header:
        with path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore").writerows(rows)
        return
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(old_rows + rows)
    os.replace(temporary, path)
