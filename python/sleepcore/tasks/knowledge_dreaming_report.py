"""The knowledge report's Dreaming parts (issue 12): the ReST-EM reward lines of the table, issue
12's targets checked on the last sleep's 1-hop "contains", and ``knowledge_dreaming.png`` (each
generator's reward and inner-loop score per round). They read the report dict that
:mod:`sleepcore.tasks.knowledge_report` writes; rows missing from it are left out."""

from __future__ import annotations

from pathlib import Path

from sleepcore.tasks.knowledge_dreaming import DREAMING_METHODS


def reward_lines(report: dict) -> list[str]:
    """The table's ReST-EM lines: each generator's reward per round (round R: after the last update)."""
    entry = report.get("dreaming")
    if not entry:
        return []
    lines = [f"ReST-EM reward (fraction of kept dreams rewarded; {entry['training_people']} training people; "
             f"round R: the generator after R updates)"]
    for name, generator in entry["generators"].items():
        rewards = ", ".join(f"round {index} {value:.3f}" for index, value in enumerate(generator["reward_per_round"]))
        lines.append(f"  {name} generator: {rewards}")
    return lines


def _one_hop(report: dict, method: str) -> dict | None:
    entry = report["results"].get(method)
    return entry["sleeps"][-1]["one_hop"] if entry else None


def _compare(name: str, ours, theirs, *, strict: bool = False, factor: float = 1.0) -> dict:
    if ours is None or theirs is None:
        return {"target": name, "value": ours, "baseline": theirs, "met": None}
    return {"target": name, "value": ours, "baseline": theirs,
            "met": ours > factor * theirs if strict else ours >= factor * theirs}


def dreaming_targets(report: dict, minimum_gap: float = 0.5) -> list[dict]:
    """Issue 12's targets on the last sleep's 1-hop contains: Sleep's gap closure >= ``minimum_gap``
    and >= 2x Knowledge Seeding's; the ordering sleep >= seal > ks >= base; Sleep's retention within
    5 points and drift KL against SFT's; each generator's ReST-EM reward higher after the last round
    than at round 0. Targets whose rows are missing are left out."""
    checks, results = [], report["results"]
    sleep = _one_hop(report, "sleep")
    if sleep is not None and "gap_closure" in sleep:
        checks.append(_compare(f"sleep gap closure >= {minimum_gap:g} (contains)", sleep["gap_closure"], minimum_gap))
        ks = _one_hop(report, "ks")
        if ks is not None and "gap_closure" in ks:
            check = _compare("sleep gap closure >= 2x ks (contains)", sleep["gap_closure"], ks["gap_closure"],
                             factor=2.0)
            if check["baseline"] is not None and check["baseline"] <= 0 and check["value"] is not None:
                check["met"] = None if check["value"] <= 0 else True  # no ks gain: any positive gain is >= 2x
            checks.append(check)
    ordering = (("sleep", "seal", False), ("seal", "ks", True), ("ks", "base", False))
    for ours, theirs, strict in ordering if any(method in results for method in DREAMING_METHODS) else ():
        if ours in results and theirs in results:
            sign = ">" if strict else ">="
            checks.append(_compare(f"{ours} {sign} {theirs} (contains)", _one_hop(report, ours)["contains"],
                                   _one_hop(report, theirs)["contains"], strict=strict))
    if "sleep" in results and results["sleep"].get("retention"):
        run = results["sleep"]
        worst = min(100.0 * (later["one_hop"]["contains"] - run["sleeps"][later["group"]]["one_hop"]["contains"])
                    for later in run["retention"])
        checks.append({"target": "sleep retention within 5 points (contains)", "value": worst, "met": worst >= -5.0})
    if "sleep" in results and "sft" in results:
        ours, theirs = results["sleep"]["drift_kl"], results["sft"]["drift_kl"]
        checks.append({"target": "sleep drift KL <= sft drift KL", "value": ours, "baseline": theirs,
                       "met": ours <= theirs})
    for name, generator in (report.get("dreaming") or {}).get("generators", {}).items():
        rewards = generator["reward_per_round"]
        checks.append({"target": f"{name} generator ReST-EM reward rises (round 0 -> {len(rewards) - 1})",
                       "value": rewards[-1], "baseline": rewards[0], "met": rewards[-1] > rewards[0]})
    return checks


def plot_rewards(report: dict, path) -> bool:
    """``knowledge_dreaming.png``: each generator's ReST-EM reward per round, and its inner-loop
    adapted score against the reward's baseline, labelled by the suite's ``reward_score`` and
    ``reward_baseline``. Returns False (and writes nothing) without generators."""
    generators = (report.get("dreaming") or {}).get("generators")
    if not generators:
        return False
    from sleepcore.tasks.knowledge_plots import _pyplot

    plt = _pyplot()
    figure, (rewards, scores) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, generator in generators.items():
        values = generator["reward_per_round"]
        rewards.plot(range(len(values)), values, marker="o", label=name)
        measured = generator["rounds"] + ([generator["final"]] if generator["final"] else [])
        scores.plot(range(len(measured)), [m["adapted_score"] for m in measured], marker="o", label=f"{name} adapted")
        scores.plot(range(len(measured)), [m["best_score"] for m in measured], marker="^", linestyle=":",
                    label=f"{name} best of m")
    first = next(iter(generators.values()))["rounds"][0]
    dreaming = report.get("config", {}).get("dreaming", {})
    baseline = {"document": "adapter on the document alone"}.get(dreaming.get("reward_baseline"), "base (unadapted)")
    score = {"gold_log_prob": "gold log-prob per token"}.get(dreaming.get("reward_score"), "contains")
    scores.axhline(first["base_score"], color="gray", linestyle="--", label=baseline)
    for axis, title in ((rewards, "ReST-EM reward (fraction of kept dreams rewarded)"),
                        (scores, f"inner-loop closed-book {score}")):
        axis.set_xlabel("round (R: after R generator updates)")
        axis.set_title(title, fontsize=9)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(Path(path), dpi=110)
    plt.close(figure)
    return True
