"""TRL GKD benchmark: TRL 1.16's GKD loss against sleepcore's drop-in (``sleepcore.integrations.trl``).

Providers, each on the same seeded inputs in its own process (:mod:`sleepcore.benchmarks.driver`):

* ``trl``: the loss part of ``GKDTrainer.compute_loss``: the student's and the teacher's
  ``lm_head`` on final hidden states ``[B, T, H]`` (whole ``[B, T, V]`` logits), then TRL's own
  ``generalized_jsd_loss``; ``backward`` reaches the hidden states and the head;
* ``sleepcore``: the same by :func:`sleepcore.integrations.trl.generalized_jsd_from_hidden`
  (``fused_linear_jsd`` on the labelled rows only), as ``SleepcoreGKDTrainer`` runs it;
* ``trl_step`` / ``sleepcore_step``: the whole ``compute_loss`` of ``GKDTrainer`` /
  ``SleepcoreGKDTrainer`` (student body, teacher body, heads, loss) with the case's model as
  student and teacher (the teacher's head scaled so the loss is not 0); ``full`` is one training
  step without the optimiser.

tokens/s counts all ``B x T`` tokens (prompts included) for every provider. After the driver's
table, a summary gives tokens/s and peak memory against ``trl`` (and ``trl_step``); the CSV rows
(``bench/results/trl-<device>.csv``) carry ``tokens`` and ``median_s``.

Run ``python bench/bench_trl.py --case cpu`` for the loss part, then
``python bench/bench_trl.py --case cpu --providers trl_step,sleepcore_step --modes full``.
"""

from __future__ import annotations

import os
import tempfile

import torch

from sleepcore.benchmarks import driver
from sleepcore.benchmarks.driver import Benchmark, Run
from sleepcore.benchmarks.shapes import GKD_CASES, HEADS

PROVIDERS = ("trl", "sleepcore", "trl_step", "sleepcore_step")
_BASELINES = {"sleepcore": "trl", "sleepcore_step": "trl_step"}


def build_inputs(case, seed: int = 0) -> dict:
    """Seeded hidden states ``[B, T, H]`` and heads (the loss part) and token ids (the whole step)."""
    head = HEADS[case.head]
    dtype = getattr(torch, case.dtype)
    generator = torch.Generator().manual_seed(seed)
    make = lambda *shape, scale=1.0: (torch.randn(*shape, generator=generator) * scale).to(dtype)  # noqa: E731
    shape = (case.sequences, case.seq_len)
    input_ids = torch.randint(0, head.vocab, (case.sequences, case.seq_len + 1), generator=generator)
    labels = input_ids.clone()
    labels[:, :case.prompt_len + 1] = -100  # the collator's labels: -100 on the prompt
    return dict(student_hidden=make(*shape, head.hidden).requires_grad_(),
                student_weight=make(head.vocab, head.hidden, scale=head.hidden ** -0.5).requires_grad_(),
                teacher_hidden=make(*shape, head.hidden),
                teacher_weight=make(head.vocab, head.hidden, scale=2 * head.hidden ** -0.5),
                labels=labels[:, 1:].contiguous(),
                step_inputs=dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels))


def make_run(provider: str, case, inputs: dict, options) -> Run:
    if provider.endswith("_step"):
        return _step_run(provider, case, inputs["step_inputs"], options.beta)
    from trl.experimental.gkd import GKDTrainer

    from sleepcore.integrations.trl import generalized_jsd_from_hidden

    hidden, weight, teacher_hidden, teacher_weight, labels = (
        inputs[key] for key in ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight", "labels"))

    def trl_loss():
        with torch.no_grad():
            teacher_logits = torch.nn.functional.linear(teacher_hidden, teacher_weight)
        return GKDTrainer.generalized_jsd_loss(torch.nn.functional.linear(hidden, weight), teacher_logits, labels,
                                               beta=options.beta)

    def sleepcore_loss():
        return generalized_jsd_from_hidden(hidden, weight, teacher_hidden, teacher_weight, labels, beta=options.beta)

    return Run(trl_loss if provider == "trl" else sleepcore_loss, leaves=(hidden, weight), weight=weight)


def _step_run(provider: str, case, inputs: dict, beta: float) -> Run:
    """``compute_loss`` of a GKD trainer with ``case.model`` as student and (a changed copy as) teacher."""
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from sleepcore.integrations.trl import SleepcoreGKDTrainer
    from sleepcore.models import load_model

    student, tokenizer = load_model(case.model, dtype=getattr(torch, case.dtype))
    teacher, _ = load_model(case.model, dtype=getattr(torch, case.dtype))
    with torch.no_grad():
        teacher.get_output_embeddings().weight.mul_(1.5)
    args = GKDConfig(output_dir=tempfile.mkdtemp(prefix="bench-trl-"), report_to=[], use_cpu=True, bf16=False,
                     lmbda=0.0, beta=beta, save_strategy="no", per_device_train_batch_size=case.sequences)
    trainer = (GKDTrainer if provider == "trl_step" else SleepcoreGKDTrainer)(
        model=student, teacher_model=teacher, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"messages": [[{"role": "user", "content": "hi"}]]}))
    trainer.model.train()
    return Run(lambda: trainer.compute_loss(trainer.model, dict(inputs)), leaves=tuple(trainer.model.parameters()),
               weight=trainer.model.get_output_embeddings().weight)


def summary(rows: list[dict], tokens: int) -> None:
    """tokens/s and peak memory of each sleepcore provider against its TRL counterpart, per mode."""
    ok = {(r["provider"], r["mode"]): r for r in rows if "error" not in r}
    print(f"\n{'provider':<16}{'mode':<10}{'tokens/s':>10}{'x TRL':>8}{'peak GB':>9}{'x TRL':>8}")
    for (provider, mode), row in ok.items():
        base = ok.get((_BASELINES.get(provider, provider), mode))
        rate = tokens / row["median_s"]
        speed = base["median_s"] / row["median_s"] if base else float("nan")
        memory = row["peak_bytes"] / base["peak_bytes"] if base else float("nan")
        print(f"{provider:<16}{mode:<10}{rate:>10.0f}{speed:>8.2f}{row['peak_bytes'] / 1e9:>9.3f}{memory:>8.2f}")


def _describe(case) -> str:
    head = HEADS[case.head]
    return (f"TRL GKD: {case.sequences}x{case.seq_len} tokens ({case.prompt_len} prompt), H={head.hidden} "
            f"V={head.vocab} ({head.model}) {case.dtype}")


def _case_fields(case, options) -> dict:
    head = HEADS[case.head]
    return {"tokens": case.tokens, "sequences": case.sequences, "seq_len": case.seq_len,
            "prompt_len": case.prompt_len, "hidden": head.hidden, "vocab": head.vocab, "dtype": case.dtype,
            "beta": options.beta, "threads_env": os.environ.get("OMP_NUM_THREADS", "")}


def _options(parser) -> None:
    parser.add_argument("--beta", type=float, default=0.5, help="GKD's beta (TRL's default 0.5)")


BENCHMARK = Benchmark("trl", "sleepcore.benchmarks.trl_gkd", GKD_CASES, PROVIDERS, build_inputs, make_run,
                      _describe, _case_fields, reference=("trl", "trl_step"),
                      default_providers=lambda case: ("trl", "sleepcore"), add_options=_options)


def main(argv: list[str] | None = None) -> list[dict]:
    rows = driver.main(BENCHMARK, argv, __doc__.split("\n\n")[0])
    if rows:
        summary(rows, rows[0]["tokens"])
    return rows


if __name__ == "__main__":
    main()
