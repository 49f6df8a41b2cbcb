"""A sleep that crashes mid-run: the shared step of the resume tests."""

from __future__ import annotations

import pytest

from sleepcore.sleep.knowledge_seeding import KnowledgeSeeding


def sleep_until_crash(monkeypatch, sleeper, crash_at_call: int = 4, stage=KnowledgeSeeding) -> None:
    """Runs ``sleeper.sleep()`` with a simulated crash (KeyboardInterrupt) at that optimisation step
    call of ``stage`` (a stage class), then restores the real step."""
    real_step = stage.step
    calls = {"n": 0}

    def step_then_crash(self, batch):
        calls["n"] += 1
        if calls["n"] == crash_at_call:
            raise KeyboardInterrupt("simulated crash")
        return real_step(self, batch)

    monkeypatch.setattr(stage, "step", step_then_crash)
    with pytest.raises(KeyboardInterrupt):
        sleeper.sleep(progress=False)
    monkeypatch.setattr(stage, "step", real_step)
