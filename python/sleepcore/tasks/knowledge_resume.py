"""Saved results of a knowledge-suite run, so that an interrupted run can resume (``resume=True``).

Every finished row (one per budget multiplier for trained rows) and every finished generator is
written atomically as ``<output_dir>/<name>/result.json``; a resumed run reads those back instead
of redoing them. Below that grain only a generator's meta-training resumes (from its last ReST-EM
round, :meth:`~sleepcore.sleep.dreamer.Dreamer.fit`, and its final measurement, cached by
:meth:`~sleepcore.sleep.dreamer.Dreamer.measured`); an interrupted row is rerun from the unchanged
model. ``<output_dir>/suite.json`` holds the run's config: a resumed run must have the same one
(``methods`` may differ, so rows can be added), or it raises ``ValueError`` naming the fields that
differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from sleepcore.train import atomic_write_text

__all__ = ["CONFIG_FILE", "RESULT_FILE", "SuiteResults"]

CONFIG_FILE = "suite.json"
RESULT_FILE = "result.json"


class SuiteResults:
    """The finished parts of one suite run under ``root`` (see the module docstring).

    Args:
        root: the run's output folder.
        config: the suite's config as a JSON-able dict (``configuration.to_dict``).
        resume: read finished parts back; if False every part is recomputed (and saved again).
    """

    def __init__(self, root, config: dict, *, resume: bool):
        if not isinstance(resume, bool):
            raise TypeError(f"resume must be a bool, got {type(resume).__name__}")
        self.root, self.resume, self.loaded = Path(root), resume, []
        config = json.loads(json.dumps(config))  # tuples as lists, as the saved copy has them
        path = self.root / CONFIG_FILE
        if resume and path.is_file():
            saved = json.loads(path.read_text())
            differ = sorted(key for key in set(saved) | set(config)
                            if key != "methods" and saved.get(key) != config.get(key))
            if differ:
                raise ValueError(f"resume: {self.root} holds a run of another config (different "
                                 f"{', '.join(differ)}); use another output_dir or do not resume")
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(config, indent=1))

    def cached(self, name: str, compute: Callable[[], dict]) -> dict:
        """The saved result of part ``name`` (a folder under ``root``, e.g. ``sft/x16``) when resuming
        and it exists; else ``compute()``, saved atomically before it is returned."""
        path = self.root / name / RESULT_FILE
        if self.resume and path.is_file():
            self.loaded.append(name)
            return json.loads(path.read_text())
        result = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(result))
        return result
