"""The knowledge suite's plots (matplotlib, Agg): ``knowledge.png`` (scores, retention, drift at
the largest budget) and ``knowledge_budgets.png`` (the budget curves). Every score is closed-book
1-hop "contains", the suite's primary metric."""

from __future__ import annotations

ORACLE_STYLE = {"linestyle": "--", "marker": "s"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _contains(scores: dict) -> float:
    return scores["one_hop"]["contains"]


def plot_report(report: dict, path) -> None:
    """Three panels: closed-book contains per row and sleep; contains of the earlier groups right
    after their sleep and after the last one; drift KL per trained row."""
    plt = _pyplot()
    results = report["results"]
    methods = list(results)
    figure, (scores, retention, drift) = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / len(report["groups"])
    for index, people in enumerate(report["groups"]):
        values = [_contains(results[m]["sleeps"][index]) for m in methods]
        scores.bar([x + index * width for x in range(len(methods))], values, width, label=f"sleep {index}: {people}")
    scores.set_xticks([x + width * (len(report["groups"]) - 1) / 2 for x in range(len(methods))], methods,
                      rotation=20, fontsize=8)
    scores.set_ylabel("closed-book contains")
    scores.set_title("knowledge after each sleep (largest budget)")
    scores.legend(fontsize=8)
    trained = [m for m in methods if results[m].get("retention")]
    for offset, (label, pick) in enumerate((("after its sleep", lambda m, r: results[m]["sleeps"][r["group"]]),
                                            ("after the last sleep", lambda m, r: r))):
        values = [sum(_contains(pick(m, r)) for r in results[m]["retention"]) / len(results[m]["retention"])
                  for m in trained]
        retention.bar([x + offset * 0.4 for x in range(len(trained))], values, 0.4, label=label)
    retention.set_xticks([x + 0.2 for x in range(len(trained))], trained, rotation=20, fontsize=8)
    retention.set_title("retention: earlier sleeps' facts (contains)")
    retention.legend(fontsize=8)
    drifting = [m for m in methods if "drift_kl" in results[m]]
    drift.bar(drifting, [results[m]["drift_kl"] for m in drifting])
    drift.tick_params(axis="x", labelrotation=20, labelsize=8)
    drift.set_title("drift: KL(original || updated), generic prompts")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_budgets(report: dict, path) -> None:
    """One row of two panels per sleep: closed-book contains against the sleep's trained tokens and
    against its wall-clock seconds, one line per trained row over its budget multipliers (the
    oracle ceilings dashed), ``base`` and ``in-context`` as horizontal lines."""
    plt = _pyplot()
    results, groups = report["results"], report["groups"]
    figure, axes = plt.subplots(len(groups), 2, figsize=(11, 3.8 * len(groups)), squeeze=False)
    for index, people in enumerate(groups):
        for axis, key, label in ((axes[index][0], "tokens", "trained tokens"),
                                 (axes[index][1], "train_seconds", "wall-clock seconds")):
            for method, entry in results.items():
                if "runs" not in entry:
                    continue
                points = sorted((run["sleeps"][index][key], _contains(run["sleeps"][index])) for run in entry["runs"])
                style = ORACLE_STYLE if "oracle" in method else {"marker": "o"}
                axis.plot([x for x, _ in points], [y for _, y in points], label=method, **style)
            for method, line in (("base", ":"), ("in-context", "-.")):
                if method in results:
                    axis.axhline(_contains(results[method]["sleeps"][index]), color="gray", linestyle=line,
                                 label=method)
            axis.set_xscale("log")
            axis.set_ylim(-0.01, max(0.05, axis.get_ylim()[1]))
            axis.set_xlabel(label)
            axis.set_ylabel("closed-book contains")
            axis.set_title(f"sleep {index} ({people} people)")
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
