"""Speed of one Knowledge Seeding step (issue 11, "Speed of a sleep"): tokens/s, seconds/step, where a
step's time goes, and the fraction of the matmul roofline, for the step's variants in one process.

Setup: SmolLM2-135M-Instruct wrapped with one memory level (rank 16), the knowledge suite's seeding
settings (batch 8, 40 new tokens, one teacher sample per prompt; since issue 11's defaults
``alpha = 1``: distillation only, no LTI completions), a replay set
drawn once (fp32) from ``--people`` biographies with their wake questions. Variants (paired: every
repetition restores the same expert weights and the stage's RNG, so all variants train on the same
batch with the same samples and completions, interleaved in time):

* ``before``: fp32, every sequence in a row of its own with its whole prompt (every LTI
  completion with its whole prefix);
* ``shared``: fp32, the batch as one token tree: the prompts' common head (system turn, question
  prefix) computed once, the completions inside their prefix's branch (one student forward);
* ``bf16``: bf16 autocast of the frozen base, unshared;
* ``eager``: bf16 autocast and shared, the student's training forward through transformers' eager
  attention instead of the model's own (``OptimizerConfig.train_attention = "eager"``, off by default);
* ``after``: bf16 autocast and shared (the defaults on hardware with native bf16).

All variants draw the on-policy samples and LTI completions in one engine call and reuse the loss as
the KL at ``beta = 0`` (sleepcore before this benchmark made two calls and a second KL pass, so its
steps were a little slower than ``before``).

Before the timed repetitions the expert trains ``--warmup`` steps (``shared``, fp32) so the losses
compared are not those of an untrained expert. Per variant it prints tokens/s (tokens that receive a
gradient), seconds/step (median, p20-p80), each phase's share (sampling, teacher forward, student
forward, losses, backward, optimizer, other), the difference of loss / KL / LTI to ``before`` on
the same batch and the cosine of the expert's gradient to ``before``'s, and the roofline fraction:
the step's matmul FLOPs (linear layers of body and head, as issued, padding included; attention
scores left out; backward counts dX of the frozen base and the heads) timed at this machine's
measured fp32 / bf16 matmul rate of the model's shapes, over the measured step time. Rows go to
``bench/results/sleep-step-<device>.csv`` with the threads and the load average (other processes
on a 2-core machine slow every variant; compare rows of one run only).

Usage: ``python bench/bench_sleep_step.py [--reps 3] [--warmup 2] [--threads N] [--people 1]``
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from sleepcore.benchmarks import harness
from sleepcore.memory import ContinuumMemory, LevelConfig, MemoryConfig
from sleepcore.models import load_model
from sleepcore.rollout import Engine
from sleepcore.sleep.buffer import WakeBuffer
from sleepcore.sleep.knowledge_seeding import KnowledgeSeeding
from sleepcore.sleep.stage import StageContext
from sleepcore.tasks.biographies import BiographyConfig, generate_biographies
from sleepcore.tasks.knowledge_suite import KnowledgeSuiteConfig, documents_of, wake_questions_of

MODEL = "smollm2-135m-instruct"
VARIANTS = {"before": ("float32", False, "model"), "shared": ("float32", True, "model"),
            "bf16": ("bfloat16", False, "model"), "eager": ("bfloat16", True, "eager"),
            "after": ("bfloat16", True, "model")}
PHASES = ("sampling", "teacher_forward", "student_forward", "losses", "backward", "optimizer", "other")


def matmul_rates(model, tokens: int = 512, reps: int = 5) -> dict[str, float]:
    """FLOP/s of the model's linear shapes (one decoder layer's and the head) at ``tokens`` rows, per dtype."""
    shapes = {tuple(m.weight.shape) for m in model.base_model.layers[0].modules() if isinstance(m, nn.Linear)}
    shapes.add(tuple(model.get_output_embeddings().weight.shape))
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        pairs = [(torch.randn(tokens, k, dtype=dtype), torch.randn(n, k, dtype=dtype)) for n, k in shapes]
        flops = sum(2 * tokens * w.numel() for _, w in pairs)
        times = harness.timed_runs(lambda _: [torch.nn.functional.linear(x, w) for x, w in pairs], "cpu", 2, reps)
        rates[str(dtype).removeprefix("torch.")] = flops / harness.quantiles(times)["median_s"]
    return rates


class PhaseClock:
    """Seconds and matmul FLOPs per phase of a stage's steps, by wrapping its engine and runtime. The
    engine is shared by the variants' stages: a clock counts only while ``active``."""

    def __init__(self, stage: KnowledgeSeeding, body_flops: int, head_flops: int):
        self.seconds, self.flops, self.active = defaultdict(float), defaultdict(float), False
        self.body, self.head, self.grads = body_flops, head_flops, None
        runtime, engine = stage.runtime, stage.engine
        self._wrap(engine, "generate", lambda *_: "sampling", self._sampled)
        self._wrap(runtime, "hidden_states", lambda *_: "student_forward" if torch.is_grad_enabled()
                   else "teacher_forward", self._forward)
        self._wrap(stage, "_distillation_term", lambda *_: "losses", lambda *a: self._head(2, *a))
        self._wrap(stage, "_imitation_term", lambda *_: "losses", lambda *a: self._head(1, *a))
        self._wrap(runtime, "backward", lambda *_: "backward")
        self._wrap(runtime, "step", lambda *_: "optimizer", before=self._keep_grads)

    def _wrap(self, owner, name, phase, account=None, before=None):
        real = getattr(owner, name)

        def timed(*args, **kwargs):
            if not self.active:
                return real(*args, **kwargs)
            if before:
                before(owner)
            started = time.perf_counter()
            result = real(*args, **kwargs)
            label = phase(*args)
            self.seconds[label] += time.perf_counter() - started
            if account:
                account(label, owner, args, result)
            return result
        setattr(owner, name, timed)

    def _sampled(self, label, engine, args, result):
        stats = engine.stats
        self.flops["sampling"] += (stats["prompt_tokens_computed"] + stats["generated_tokens"]) * self.body
        self.flops["sampling"] += stats["generated_tokens"] * self.head

    def _forward(self, label, runtime, args, result):
        self.flops[label] += args[0].numel() * self.body
        if label == "student_forward":
            self.flops["backward"] += args[0].numel() * self.body  # dX through the frozen base

    def _head(self, sides, label, stage, args, result):
        """A loss term's head FLOPs: logits of ``sides`` models (JSD: student and teacher), student dX."""
        tokens = result[2]
        self.flops["losses"] += sides * tokens * self.head
        self.flops["backward"] += tokens * self.head

    def _keep_grads(self, runtime):
        self.grads = torch.cat([p.grad.flatten() for p in runtime.parameters if p.grad is not None])


def linear_flops_per_token(model) -> tuple[int, int]:
    """``(body, head)``: 2 x the linear weights a token meets in the body (experts included), and 2 x V x H."""
    head = model.get_output_embeddings().weight
    body = sum(m.weight.numel() for m in model.base_model.modules() if isinstance(m, nn.Linear))
    body += sum(p.numel() for name, p in model.named_parameters() if name.endswith((".levels.0.A.0", ".levels.0.B.0")))
    return 2 * body, 2 * head.numel()


def build(people: int, seed: int):
    model, tokenizer = load_model(MODEL)
    memory = ContinuumMemory.wrap(model, MemoryConfig(levels=(LevelConfig(rank=16, slots=2),)))
    engine = Engine(model, tokenizer, kv_memory_bytes=1 << 30)
    group = generate_biographies(BiographyConfig(num_people=people, seed=seed))
    buffer = WakeBuffer()
    buffer.add(documents_of(group), wake_questions_of(group))
    return model, tokenizer, memory, engine, buffer


def run(args) -> list[dict]:
    torch.manual_seed(args.seed)
    model, tokenizer, memory, engine, buffer = build(args.people, args.seed)
    seeding = KnowledgeSuiteConfig().seeding
    slot = memory.new_expert(0)
    context = StageContext(model, tokenizer, memory, engine, 0, slot, seed=args.seed)

    def stage(name):
        dtype, share, attention = VARIANTS[name]
        optimizer = dataclasses.replace(seeding.optimizer, compute_dtype=dtype, train_attention=attention)
        config = dataclasses.replace(seeding, optimizer=optimizer)
        return KnowledgeSeeding(context, config, share_prefixes=share)

    reference = stage("shared")
    began = time.perf_counter()
    reference.prepare(buffer, progress=False)
    prepare_seconds = time.perf_counter() - began
    items, rng = reference.items, random.Random(args.seed)
    for _ in range(args.warmup):
        reference.step(rng.sample(items, min(len(items), seeding.batch_size)))
    expert = memory.trainable(0, slot)
    weights = [p.detach().clone() for p in expert]
    body, head = linear_flops_per_token(model)
    stages, clocks, metrics = {}, {}, defaultdict(list)
    for name in VARIANTS:
        stages[name] = stage(name)
        stages[name].items = items
        clocks[name] = PhaseClock(stages[name], body, head)
    loads = [os.getloadavg()[0]]
    for rep in range(args.reps):
        batch = rng.sample(items, min(len(items), seeding.batch_size))
        for name in (list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]):
            with torch.no_grad():
                for parameter, value in zip(expert, weights):
                    parameter.copy_(value)
            stages[name].rng = random.Random(f"{args.seed}/{rep}")
            clocks[name].active = True
            step = stages[name].step(batch)
            clocks[name].active = False
            step["grads"] = clocks[name].grads.double()
            metrics[name].append(step)
        loads.append(os.getloadavg()[0])
    rates = matmul_rates(model)
    print(f"prepare: {prepare_seconds:.1f} s, {reference.prepare_forward_tokens} forward tokens, "
          f"{len(items)} replay samples; threads {torch.get_num_threads()}, load average {loads}")
    print("matmul rates: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items()))
    return report(metrics, clocks, rates, args, sum(loads) / len(loads))


def report(metrics, clocks, rates, args, load) -> list[dict]:
    rows, base = [], metrics["before"]
    print(f"{'variant':8} {'tok/s':>7} {'s/step':>15} {'roofline':>8} {'dloss':>9} {'dKL':>9} {'dLTI':>9} {'cos':>7}  "
          + " ".join(f"{p[:9]:>9}" for p in PHASES))
    for name, steps in metrics.items():
        seconds = [m["seconds"] for m in steps]
        total = sum(seconds)
        clock = clocks[name]
        clock.seconds["other"] = total - sum(clock.seconds[p] for p in PHASES if p != "other")
        dtype = VARIANTS[name][0]
        ideal = sum(clock.flops[p] / rates["float32" if p == "sampling" else dtype] for p in PHASES)
        q = harness.quantiles(seconds)
        diff = {key: max(abs(m[key] - b[key]) for m, b in zip(steps, base)) for key in ("loss", "kl_teacher", "lti")}
        cosine = min(float(torch.nn.functional.cosine_similarity(m["grads"], b["grads"], dim=0))
                     for m, b in zip(steps, base))
        row = {"bench": "sleep-step", "case": "smollm2-135m-b8-n40-c4", "model": MODEL, "provider": name,
               "compute_dtype": dtype, "share_prefixes": VARIANTS[name][1], "train_attention": VARIANTS[name][2],
               "threads": torch.get_num_threads(),
               "load_average": round(load, 2), "reps": len(steps),
               "tokens": sum(m["tokens"] for m in steps) / len(steps),
               "forward_tokens": sum(m["forward_tokens"] for m in steps) / len(steps),
               "tokens_per_s": sum(m["tokens"] for m in steps) / total, **q, "roofline_fraction": ideal / total,
               **{f"share_{p}": clock.seconds[p] / total for p in PHASES},
               "loss_diff": diff["loss"], "kl_diff": diff["kl_teacher"], "lti_diff": diff["lti"], "grad_cosine": cosine,
               "loss": steps[0]["loss"], "kl_teacher": steps[0]["kl_teacher"]}
        rows.append(row)
        print(f"{name:8} {row['tokens_per_s']:7.1f} {q['median_s']:6.2f} ({q['p20_s']:.1f}-{q['p80_s']:.1f}) "
              f"{row['roofline_fraction']:8.3f} {diff['loss']:9.2e} {diff['kl_teacher']:9.2e} {diff['lti']:9.2e} "
              f"{cosine:7.4f}  " + " ".join(f"{row['share_' + p]:9.2f}" for p in PHASES))
    speedup = rows[-1]["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(f"after / before: {speedup:.2f}x tokens/s at batch {KnowledgeSuiteConfig().seeding.batch_size}")
    by_name = {row["provider"]: row for row in rows}
    print(f"eager / after (the training attention alone): "
          f"{by_name['eager']['tokens_per_s'] / by_name['after']['tokens_per_s']:.2f}x tokens/s")
    rows += [{"bench": "sleep-step", "case": "matmul", "model": MODEL, "provider": dtype,
              "threads": torch.get_num_threads(), "load_average": round(load, 2), "gflops": rate / 1e9}
             for dtype, rate in rates.items()]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--people", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)
    path = args.csv or harness.results_path("sleep-step", Path(__file__).parent / "results")
    harness.append_csv(path, rows)
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
