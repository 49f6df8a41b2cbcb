"""Instrument, not a method (issue 12, session 50): what a gated memory's routers learnt.

For a run made with ``[suite] router = "gate"`` (:class:`~sleepcore.memory.LevelConfig` ``router``),
this loads the Sleep row's memory as its last sleep saved it and prints, per wrapped layer, the
mean gate ``g_e(x) = 2 * sigmoid(w_e . x / sqrt(d) + b_e)`` of each active expert of the sleeps'
level at the last prompt token (where the first answer token is predicted), over two prompt sets
asked closed-book in the suite's short-answer format: the 36 common-knowledge questions
(:data:`~sleepcore.tasks.general_knowledge.GENERAL_QUESTIONS`) and the last sleep's people's
questions. A router that tells them apart has a lower gate on the first set.

    python bench/router_gates.py RUN_DIR [--row sleep] [--budget 16] [--out OUT.json]

Runs SmolLM2-135M-Instruct on the CPU (about a minute).
"""

import argparse
import json
from pathlib import Path

import torch

from generic_answers import last_checkpoint, memory_levels
from sleepcore.lm import encode, qa_prompt
from sleepcore.memory import ContinuumMemory, MemoryConfig
from sleepcore.models import load_model
from sleepcore.tasks.general_knowledge import GENERAL_QUESTIONS
from sleepcore.tasks.knowledge_suite import KnowledgeSuiteConfig, sleep_groups

SLEEPS_LEVEL = 1  # the suite's level of the sleeps' experts


def mean_gates(model, tokenizer, memory, questions: list[str]) -> dict[int, list[float]]:
    """``{layer: [mean gate of each active expert]}`` at the last token of each question's prompt."""
    seen: dict[int, list[torch.Tensor]] = {}

    def recorder(layer):
        def record(module, inputs, output):
            x, level = inputs[0][:, -1].float(), module.levels[SLEEPS_LEVEL]
            gates = [2 * torch.sigmoid(x @ level.gate_weight[slot].float() / x.shape[-1] ** 0.5
                                       + level.gate_bias[slot].float())
                     for slot, active in enumerate(level.active) if active]
            seen.setdefault(layer, []).append(torch.stack(gates, dim=-1))
        return record

    handles = [mlp.register_forward_hook(recorder(layer)) for layer, mlp in memory.layers.items()]
    try:
        for question in questions:
            model(torch.tensor([encode(tokenizer, qa_prompt(tokenizer, question))]))
    finally:
        for handle in handles:
            handle.remove()
    return {layer: torch.cat(values).mean(0).tolist() for layer, values in seen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--row", default="sleep")
    parser.add_argument("--budget", default="16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    checkpoint = last_checkpoint(args.run / args.row / f"x{args.budget}") / "memory.safetensors"
    levels = memory_levels(checkpoint)
    if levels[SLEEPS_LEVEL].router != "gate":
        raise SystemExit(f"{checkpoint}: the sleeps' level is not gated (router {levels[SLEEPS_LEVEL].router!r})")
    suite = json.loads((args.run / "suite.json").read_text())  # the run's suite config
    people = sleep_groups(KnowledgeSuiteConfig(sleeps=tuple(suite["sleeps"]), seed=suite["seed"]))[-1]
    model, tokenizer = load_model()[:2]
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=levels))
    memory.load(checkpoint)
    general = mean_gates(model, tokenizer, memory, [question for question, _ in GENERAL_QUESTIONS])
    slept = mean_gates(model, tokenizer, memory, [question.text for question in people.questions])
    print("layer  mean gate per expert (first sleep's, last sleep's): general questions | the slept people's")
    for layer in sorted(general):
        gates = [" ".join(f"{g:.2f}" for g in values[layer]) for values in (general, slept)]
        print(f"{layer:5d}  {gates[0]} | {gates[1]}")
    if args.out:
        args.out.write_text(json.dumps({"run": str(args.run), "checkpoint": str(checkpoint), "general": general,
                                        "people": slept}, indent=1) + "\n")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
