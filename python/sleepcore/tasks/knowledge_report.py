"""The knowledge suite's report: a table on screen, ``knowledge.json`` and ``knowledge.png``, and
the issue's targets checked against one report (see :mod:`sleepcore.tasks.knowledge_suite`)."""

from __future__ import annotations

import json
from pathlib import Path

#: issue 5's targets, on the last (largest) sleep: (name, metric, method, baseline, factor).
RATIO_TARGETS = (("ks >= 0.7x in-context (EM)", "em", "ks", "in-context", 0.7),
                 ("ks >= 2x sft (EM)", "em", "ks", "sft", 2.0))
RETENTION_POINTS = 5.0


def write_report(report: dict, output_dir) -> Path:
    """Writes ``knowledge.json`` (atomically) and ``knowledge.png``; returns the JSON's path."""
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    path = output / "knowledge.json"
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2))
    temporary.replace(path)
    plot_report(report, output / "knowledge.png")
    return path


def last_sleep(report: dict, method: str) -> dict | None:
    entry = report["results"].get(method)
    return entry["sleeps"][-1]["one_hop"] if entry else None


def retention_delta(report: dict, method: str, metric: str = "f1") -> list[float]:
    """Per earlier group: (score after the last sleep) - (score right after its own sleep), in points."""
    entry = report["results"][method]
    return [100.0 * (later["one_hop"][metric] - entry["sleeps"][later["group"]]["one_hop"][metric])
            for later in entry.get("retention", [])]


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
    if "ks" in report["results"] and report["results"]["ks"].get("retention"):
        for metric in ("em", "f1"):
            worst = min(retention_delta(report, "ks", metric))
            checks.append({"target": f"ks retention within {RETENTION_POINTS:g} points ({metric})", "value": worst,
                           "met": worst >= -RETENTION_POINTS})
    if "ks" in report["results"] and "sft" in report["results"]:
        ks, sft = report["results"]["ks"]["drift_kl"], report["results"]["sft"]["drift_kl"]
        checks.append({"target": "ks drift KL <= sft drift KL", "value": ks, "baseline": sft, "met": ks <= sft})
    return checks


def format_table(report: dict) -> str:
    """One row per method: per sleep EM / F1 / contains / 2-hop contains and tokens; retention
    (F1 points) and drift for the trained methods; then the targets."""
    groups = report["groups"]
    header = f"{'method':<12}" + "".join(f"{f'sleep {i} ({n} people): EM/F1/cont/2hop  tokens':>46}"
                                         for i, n in enumerate(groups))
    lines = [header + f"{'retention dF1':>15}{'drift KL':>10}"]
    for method, entry in report["results"].items():
        cells = []
        for sleep in entry["sleeps"]:
            one, two = sleep["one_hop"], sleep["two_hop"]
            cells.append(f"{one['em']:.3f}/{one['f1']:.3f}/{one['contains']:.3f}/{two['contains']:.3f}"
                         f"{sleep.get('tokens', '-'):>9}".rjust(46))
        deltas = retention_delta(report, method) if "retention" in entry else []
        retention = f"{min(deltas):+.1f}" if deltas else "-"
        drift = f"{entry['drift_kl']:.4f}" if "drift_kl" in entry else "-"
        lines.append(f"{method:<12}" + "".join(cells) + f"{retention:>15}{drift:>10}")
    for check in check_targets(report):
        verdict = {True: "met", False: "NOT met", None: "undefined"}[check["met"]]
        ratio = f", ratio {check['ratio']:.2f}" if check.get("ratio") is not None else ""
        lines.append(f"target {check['target']}: {check['value']:.4g}{ratio} -> {verdict}")
    return "\n".join(lines)


def plot_report(report: dict, path) -> None:
    """Three panels: closed-book F1 per method and sleep; F1 of the earlier groups right after their
    sleep and after the last one; drift KL per trained method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(report["results"])
    figure, (scores, retention, drift) = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / len(report["groups"])
    for index, people in enumerate(report["groups"]):
        values = [report["results"][m]["sleeps"][index]["one_hop"]["f1"] for m in methods]
        scores.bar([x + index * width for x in range(len(methods))], values, width, label=f"sleep {index}: {people}")
    scores.set_xticks([x + width * (len(report["groups"]) - 1) / 2 for x in range(len(methods))], methods)
    scores.set_ylabel("closed-book token F1")
    scores.set_title("knowledge after each sleep")
    scores.legend(fontsize=8)
    trained = [m for m in methods if report["results"][m].get("retention")]
    for offset, (label, pick) in enumerate((("after its sleep", lambda m, r: report["results"][m]["sleeps"][r["group"]]),
                                            ("after the last sleep", lambda m, r: r))):
        values = [sum(pick(m, r)["one_hop"]["f1"] for r in report["results"][m]["retention"])
                  / len(report["results"][m]["retention"]) for m in trained]
        retention.bar([x + offset * 0.4 for x in range(len(trained))], values, 0.4, label=label)
    retention.set_xticks([x + 0.2 for x in range(len(trained))], trained)
    retention.set_title("retention: earlier sleeps' facts (F1)")
    retention.legend(fontsize=8)
    drifting = [m for m in methods if "drift_kl" in report["results"][m]]
    drift.bar(drifting, [report["results"][m]["drift_kl"] for m in drifting])
    drift.set_title("drift: KL(original || updated), generic prompts")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
