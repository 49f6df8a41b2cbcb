"""Saved results of a knowledge-suite run, so that an interrupted run can resume (``resume=True``).

Every finished row (one per budget multiplier for trained rows) and every finished generator is
written atomically as ``<output_dir>/<name>/result.json``; a resumed run reads those back instead
of redoing them. Below that grain only a generator's meta-training resumes (from its last ReST-EM
round, :meth:`~sleepcore.sleep.dreamer.Dreamer.fit`, and its final measurement, cached by
:meth:`~sleepcore.sleep.dreamer.Dreamer.measured`); an interrupted row is rerun from the unchanged
model. ``<output_dir>/suite.json`` holds the run's config: a resumed run must have the same one
(``methods`` and ``budgets`` may differ, so rows and budget points can be added: each row at each
multiplier runs from the unchanged model with its own seed), or it raises ``ValueError`` naming
the fields that differ. A field the saved config lacks (added to the code since) matches when the run's value is
that field's default: the options are added off by default, so the older run behaved as the default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from sleepcore.train import atomic_write_text

__all__ = ["CONFIG_FILE", "RESULT_FILE", "SuiteResults"]

CONFIG_FILE = "suite.json"
RESULT_FILE = "result.json"
#: Suite fields a resumed run may change: each adds or drops whole rows, never changes one.
RESUMABLE_CHANGES = frozenset({"methods", "budgets"})


class SuiteResults:
    """The finished parts of one suite run under ``root`` (see the module docstring).

    Args:
        root: the run's output folder.
        config: the suite's config as a JSON-able dict (``configuration.to_dict``).
        resume: read finished parts back; if False every part is recomputed (and saved again).
        defaults: the default config as the same kind of dict, for fields a saved config lacks
            (None: any field it lacks differs).
    """

    def __init__(self, root, config: dict, *, resume: bool, defaults: dict | None = None):
        if not isinstance(resume, bool):
            raise TypeError(f"resume must be a bool, got {type(resume).__name__}")
        self.root, self.resume, self.loaded = Path(root), resume, []
        config = json.loads(json.dumps(config))  # tuples as lists, as the saved copy has them
        path = self.root / CONFIG_FILE
        if resume and path.is_file():
            saved = json.loads(path.read_text())
            defaults = json.loads(json.dumps(defaults)) if defaults else None
            differ = _differences(saved, config, defaults, skip=RESUMABLE_CHANGES)
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


def _differences(saved: dict, config: dict, defaults: dict | None, *, skip: set = frozenset(),
                 where: str = "") -> list[str]:
    """The dotted names of the fields whose values differ between ``saved`` and ``config``, sorted; a
    field ``saved`` lacks matches when ``config`` has its value in ``defaults``."""
    differ = []
    for key in sorted(set(saved) | set(config)):
        name, value = f"{where}{key}", config.get(key)
        default = defaults.get(key) if isinstance(defaults, dict) else None
        if key in skip:
            continue
        if key not in saved:
            if not isinstance(defaults, dict) or key not in defaults or value != default:
                differ.append(name)
        elif isinstance(saved[key], dict) and isinstance(value, dict):
            differ += _differences(saved[key], value, default, where=f"{name}.")
        elif saved[key] != value:
            differ.append(name)
    return differ
