"""Measuring tools shared by the benchmarks: memory probes, timing, worker processes and CSV rows.

Memory on CPU is the process's resident set read from ``/proc/self/status``: ``VmRSS`` now and
``VmHWM``, the peak, which :func:`reset_peak` lowers to the current RSS (``/proc/self/clear_refs``,
Linux 4.0 and later) so that one measured region has its own peak. Where that file cannot be
written the peak stays the process's lifetime peak (``ru_maxrss``). On CUDA memory is
``torch.cuda.memory_allocated`` and ``max_memory_allocated``.
"""

from __future__ import annotations

import csv
import ctypes
import gc
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


def _status_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_now(device: str) -> int:
    """Resident set of this process (CPU) or allocated device memory (CUDA) now, in bytes."""
    if device == "cuda":
        return torch.cuda.memory_allocated()
    return _status_bytes("VmRSS") or peak_memory_bytes(device)


def peak_memory_bytes(device: str) -> int:
    """Peak RSS since the last :func:`reset_peak` (CPU) or peak allocated device memory (CUDA), in bytes."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak(device: str) -> bool:
    """Start a new peak at the current memory; False where the kernel does not allow it (CPU)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release_memory(device: str) -> None:
    """Free what the process no longer uses: Python garbage, glibc's free heap pages, CUDA's cache."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_runs(step, device: str, warmup: int, reps: int, prepare=None) -> list[float]:
    """Seconds per ``step(state)`` over ``reps`` calls after ``warmup`` calls.

    ``prepare()``, when given, runs before each call outside the timed region and its result is
    ``state`` (e.g. a forward pass whose backward is timed); otherwise ``state`` is None.
    """
    times = []
    for index in range(warmup + reps):
        state = prepare() if prepare else None
        synchronize(device)
        start = time.perf_counter()
        step(state)
        synchronize(device)
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def quantiles(times: list[float]) -> dict:
    ordered = sorted(times)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]  # noqa: E731
    return {"median_s": statistics.median(ordered), "p20_s": pick(0.2), "p80_s": pick(0.8)}


def run_worker(module: str, arguments: list[str], timeout_s: float) -> dict:
    """Run ``python -m module *arguments`` and parse the last JSON line it prints (an ``error`` on failure)."""
    done = subprocess.run([sys.executable, "-m", module, *arguments], capture_output=True, text=True,
                          timeout=timeout_s)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit code {done.returncode}"}
    return json.loads(lines[-1])


def device_name() -> str:
    """A file-name-safe device label: the GPU's name, or the CPU model and core count."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
    else:
        name = _cpu_model() + f" {os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def results_path(family: str, folder: Path = Path("bench/results")) -> Path:
    """``<folder>/<family>-<device>.csv``: one CSV per benchmark family and device."""
    return Path(folder) / f"{family}-{device_name()}.csv"


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
    old_rows, header = read_csv(path)
    fields = list(dict.fromkeys(header + [f for row in rows for f in row]))
    if header and fields == header:
        with path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore").writerows(rows)
        return
    write_csv(path, old_rows + rows, fields)


def read_csv(path: Path) -> tuple[list[dict], list[str]]:
    """``(rows, header)`` of a CSV file; empty when it does not exist."""
    if not path.exists() or path.stat().st_size == 0:
        return [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader), list(reader.fieldnames or [])


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    """Write ``rows`` under ``fields`` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)
