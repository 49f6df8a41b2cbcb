"""A pool of gloo ranks for the vocab-parallel tests: spawned once, then fed jobs.

Starting ranks costs seconds (each imports torch), so a session starts them once
(``conftest.py``) and every test sends jobs: ``pool.run(job, **kwargs)`` calls
``job(rank, world, **kwargs)`` on every rank at once and returns the per-rank results in rank
order, or raises ``AssertionError`` carrying each failing rank's traceback. A job is a
module-level function (it is pickled by name); tensors travel through shared memory.
"""

from __future__ import annotations

import datetime
import os
import queue
import tempfile
import traceback

import torch.multiprocessing as mp

JOB_TIMEOUT_S = 120


def _serve(rank, world, init_file, inbox, outbox):
    import torch.distributed as dist  # the environment (TRITON_INTERPRET) is the test process's

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=JOB_TIMEOUT_S // 2))
    for job, kwargs in iter(inbox.get, None):
        try:
            outbox.put((rank, True, job(rank, world, **kwargs)))
        except BaseException:  # noqa: BLE001 - reported to the test process
            outbox.put((rank, False, traceback.format_exc()))
    dist.destroy_process_group()


class RankPool:
    """``world`` spawned processes in one gloo group (file rendezvous: no port to pick)."""

    def __init__(self, world: int = 2):
        context = mp.get_context("spawn")
        self.world = world
        self._dir = tempfile.TemporaryDirectory()
        init_file = os.path.join(self._dir.name, "rendezvous")
        self._outbox = context.Queue()
        self._inboxes = [context.Queue() for _ in range(world)]
        self._processes = [context.Process(target=_serve, args=(rank, world, init_file, inbox, self._outbox),
                                           daemon=True) for rank, inbox in enumerate(self._inboxes)]
        for process in self._processes:
            process.start()

    def run(self, job, **kwargs) -> list:
        for inbox in self._inboxes:
            inbox.put((job, kwargs))
        results, failures = [None] * self.world, []
        for _ in range(self.world):
            try:
                rank, ok, value = self._outbox.get(timeout=JOB_TIMEOUT_S)
            except queue.Empty:
                self.close()
                raise AssertionError(f"{job.__name__}: no answer from the ranks within {JOB_TIMEOUT_S} s") from None
            if ok:
                results[rank] = value
            else:
                failures.append(f"rank {rank}:\n{value}")
        if failures:
            raise AssertionError(f"{job.__name__} failed\n" + "\n".join(failures))
        return results

    def close(self):
        for inbox, process in zip(self._inboxes, self._processes):
            if process.is_alive():
                inbox.put(None)
        for process in self._processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        self._dir.cleanup()
