"""The knowledge suite's report: a table on screen, ``knowledge.json``, the plots
(:mod:`sleepcore.tasks.knowledge_plots`), and the issues' targets checked against one report (see
:mod:`sleepcore.tasks.knowledge_suite`). Targets read each row's run at the largest budget and its
last (largest) sleep."""

from __future__ import annotations

import json
from pathlib import Path

from sleepcore.tasks.knowledge_dreaming_report import dreaming_targets, plot_rewards, reward_lines
from sleepcore.tasks.knowledge_plots import plot_budgets, plot_report

#: Ratio targets (issue 5 on EM; issue 11 on contains): (name, metric, method, baseline, factor).
RATIO_TARGETS = (("ks >= 0.7x in-context (EM)", "em", "ks", "in-context", 0.7),
                 ("ks >= 2x sft (EM)", "em", "ks", "sft", 2.0),
                 ("ks >= 2x sft (contains)", "contains", "ks", "sft", 2.0),
                 ("ks >= gkd (contains)", "contains", "ks", "gkd", 1.0),
                 ("ks >= 0.6x paraphrase-oracle (contains)", "contains", "ks", "paraphrase-oracle", 0.6))
#: Threshold targets (issue 11): (name, method, 1-hop score, minimum).
THRESHOLD_TARGETS = (("oracle >= 0.9 contains", "oracle", "contains", 0.9),
                     ("ks gap closure >= 0.35 (contains)", "ks", "gap_closure", 0.35))
RETENTION_POINTS = 5.0


def write_report(report: dict, output_dir) -> Path:
    """Writes ``knowledge.json`` (atomically), ``knowledge.png`` and ``knowledge_budgets.png``
    (:mod:`sleepcore.tasks.knowledge_plots`), and with Dreaming rows ``knowledge_dreaming.png`` (the
    ReST-EM reward per round); returns the JSON's path."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    path = output / "knowledge.json"
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2))
    temporary.replace(path)
    plot_report(report, output / "knowledge.png")
    plot_budgets(report, output / "knowledge_budgets.png")
    plot_rewards(report, output / "knowledge_dreaming.png")
    return path


def last_sleep(report: dict, method: str) -> dict | None:
    entry = report["results"].get(method)
    return entry["sleeps"][-1]["one_hop"] if entry else None


def retention_delta(report: dict, method: str, metric: str = "f1") -> list[float]:
    """Per earlier group: (score after the last sleep) - (score right after its own sleep), in points."""
    return _retention(report["results"][method], metric)


def _retention(run: dict, metric: str) -> list[float]:
    return [100.0 * (later["one_hop"][metric] - run["sleeps"][later["group"]]["one_hop"][metric])
            for later in run.get("retention", [])]


def check_targets(report: dict) -> list[dict]:
    """Each target: its value, the threshold, and ``met`` (None when the baseline makes it meaningless,
    e.g. a ceiling EM of 0)."""
    checks = []
    for name, metric, method, baseline, factor in RATIO_TARGETS:
        ours, theirs = last_sleep(report, method), last_sleep(report, baseline)
        if ours is None or theirs is None:
            continue
        ratio = ours[metric] / theirs[metric] if theirs[metric] > 0 else None
        checks.append({"target": name, "value": ours[metric], "baseline": theirs[metric], "ratio": ratio,
                       "met": None if ratio is None else ratio >= factor})
    for name, method, metric, minimum in THRESHOLD_TARGETS:
        ours = last_sleep(report, method)
        if ours is not None and metric in ours:
            checks.append({"target": name, "value": ours[metric],
                           "met": None if ours[metric] is None else ours[metric] >= minimum})
    if "ks" in report["results"] and report["results"]["ks"].get("retention"):
        for metric in ("contains", "em", "f1"):
            worst = min(retention_delta(report, "ks", metric))
            checks.append({"target": f"ks retention within {RETENTION_POINTS:g} points ({metric})", "value": worst,
                           "met": worst >= -RETENTION_POINTS})
    if "ks" in report["results"] and "sft" in report["results"]:
        ks, sft = report["results"]["ks"]["drift_kl"], report["results"]["sft"]["drift_kl"]
        checks.append({"target": "ks drift KL <= sft drift KL", "value": ks, "baseline": sft, "met": ks <= sft})
    return checks + dreaming_targets(report)  # issue 12


def runs_of(entry: dict) -> list[dict]:
    """A row's runs, one per budget multiplier (an untrained row, or a report without ``runs``: itself)."""
    return entry.get("runs") or [entry]


def _cell(value, spec: str, width: int) -> str:
    return (format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-").rjust(width)


#: The table's columns after method, budget and sleep: (header, width, value of a sleep's scores).
COLUMNS = (("people", 7, lambda s: (s.get("people"), "d")),
           ("contains", 9, lambda s: (s["one_hop"]["contains"], ".3f")),
           ("EM", 7, lambda s: (s["one_hop"]["em"], ".3f")),
           ("F1", 7, lambda s: (s["one_hop"]["f1"], ".3f")),
           ("uniq", 7, lambda s: (s["one_hop"].get("unique_contains"), ".3f")),
           ("MC", 7, lambda s: (s["one_hop"].get("choice_accuracy"), ".3f")),
           ("MC-s", 7, lambda s: (s["one_hop"].get("sentence_choice_accuracy"), ".3f")),
           ("2hop", 7, lambda s: (s["two_hop"]["contains"], ".3f")),
           ("logp/tok", 9, lambda s: (s["one_hop"].get("logp_token"), ".3f")),
           ("logp/ans", 9, lambda s: (s["one_hop"].get("logp_answer"), ".2f")),
           ("teach", 7, lambda s: ((s["one_hop"].get("teachable") or {}).get("contains"), ".3f")),
           ("(n)", 5, lambda s: ((s["one_hop"].get("teachable") or {}).get("count"), "d")),
           ("gap", 7, lambda s: (s["one_hop"].get("gap_closure"), ".3f")),
           ("tokens", 9, lambda s: (s.get("tokens"), "d")),
           ("fwd tok", 9, lambda s: (s.get("forward_tokens"), "d")),
           ("seconds", 9, lambda s: (s.get("train_seconds"), ".1f")))


def prior_lines(report: dict) -> list[str]:
    """Per sleep group, what needs no binding: the frequency prior's contains and multiple-choice
    chance (the same for every row; read from the first row that has them)."""
    for entry in report["results"].values():
        sleeps = runs_of(entry)[0]["sleeps"]
        if all("prior_contains" in sleep["one_hop"] for sleep in sleeps):
            return [f"sleep {index} without binding: each attribute's most common answer scores contains "
                    f"{sleep['one_hop']['prior_contains']:.3f}; multiple-choice chance "
                    f"{sleep['one_hop']['choice_chance']:.3f}" for index, sleep in enumerate(sleeps)]
    return []


def format_table(report: dict) -> str:
    """One line per row, budget multiplier and sleep: closed-book contains (primary), EM, F1,
    contains on the answers a person owns alone and multiple-choice accuracy, bare and in a
    sentence (binding), 2-hop contains, gold log-prob per token and per answer, contains on the
    teachable subset (and its size), gap closure, trained and forward-only tokens, seconds; on a run's last line its retention
    (worst earlier group, contains points), drift and ``general_kept`` (the base model's right answers
    to common-knowledge questions still right: :mod:`~sleepcore.tasks.general_knowledge`). Then the
    targets (on the largest budget)."""
    groups = ", ".join(f"sleep {index} ({people} people)" for index, people in enumerate(report["groups"]))
    header = f"{'method':<18}{'budget':>7}{'sleep':>6}" + "".join(name.rjust(width) for name, width, _ in COLUMNS)
    lines = [f"closed-book 1-hop scores after {groups}; uniq: contains on answers no other person shares, MC: "
             "gold answer ranked first by log-prob among the people's answers (MC-s: said in a sentence); "
             "teach: contains on the facts in-context answers (n), gap: (row - base) / (in-context - base)",
             header + f"{'ret dcont':>10}{'drift KL':>10}{'general':>9}"]
    for method, entry in report["results"].items():
        for run in runs_of(entry):
            budget = f"x{run['budget']:g}" if "budget" in run else "-"
            for index, sleep in enumerate(run["sleeps"]):
                cells = "".join(_cell(*value(sleep), width) for _, width, value in COLUMNS)
                last = index == len(run["sleeps"]) - 1
                deltas = _retention(run, "contains") if last else []
                tail = _cell(min(deltas) if deltas else None, "+.1f", 10) + _cell(
                    run.get("drift_kl") if last else None, ".4f", 10) + _cell(
                    run.get("general_kept") if last else None, ".3f", 9)
                lines.append(f"{method:<18}{budget:>7}{index:>6}{cells}{tail}")
    lines += prior_lines(report)
    lines += reward_lines(report)
    for check in check_targets(report):
        verdict = {True: "met", False: "NOT met", None: "undefined"}[check["met"]]
        ratio = f", ratio {check['ratio']:.2f}" if check.get("ratio") is not None else ""
        value = "-" if check["value"] is None else f"{check['value']:.4g}"
        lines.append(f"target {check['target']}: {value}{ratio} -> {verdict}")
    return "\n".join(lines)
