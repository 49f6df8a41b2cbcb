"""Knowledge Seeding: upward self-distillation into a new low-rank expert (METHOD.md §3).

Loss form of the objective (minimised):

    L = alpha * JSD_beta(teacher || student) + (1 - alpha) * L_LTI

* The distillation term is GKD: a fraction ``on_policy`` of the replay sequences are re-sampled
  from the student, the rest are the teacher's samples; per-token generalized JSD on the response
  tokens through ``ops.fused_linear_jsd`` on both selves' final hidden states (shared lm_head).
* The LTI term: each teacher sample is cut at a random point; the student completes the prefix
  ``completions`` times (rollout engine); each completion is rewarded against the teacher's own
  continuation (``imitation_reward``); group-normalised advantages go through
  ``losses.FusedLinearPolicyLoss`` (GRPO clipping, importance ratio against the rollout policy,
  which is the student at sampling time).

The teacher is the current model (new expert off): with the wake document in its context (the
in-context teacher), or with the fast level's experts on (``teacher_experts``, the memory teacher).
The student is the same model with the new expert on, the teacher experts off and no document.
Only the new expert trains. The teacher never changes during a sleep, so its final hidden states on
its own samples are computed once, when the replay set is drawn, and reused by every step.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from sleepcore.losses import FusedLinearPolicyLoss
from sleepcore.ops import fused_linear_jsd, group_advantages
from sleepcore.rollout import Engine, SamplingParams
from sleepcore.sleep.config import KnowledgeSeedingConfig
from sleepcore.sleep.hidden_states import response_hidden
from sleepcore.sleep.judge import ModelJudge
from sleepcore.sleep.prompts import ReplayPrompt
from sleepcore.sleep.rewards import imitation_reward

_TEACHER_BATCH = 16  # replay samples per teacher forward when caching its hidden states


@dataclass
class ReplaySample:
    """A teacher sample: token ids of both prompts and of the response (teacher-sampled), and the
    teacher's final hidden states ``[len(response), H]`` (fp32, CPU) predicting the response."""

    student_prompt: list[int]
    teacher_prompt: list[int]
    response: list[int]
    teacher_hidden: torch.Tensor | None = None


class KnowledgeSeeding:
    """One consolidation: teacher samples, then optimisation steps on the new expert.

    Args:
        model, tokenizer: the wrapped Hugging Face model and its tokenizer.
        memory: its :class:`~sleepcore.memory.ContinuumMemory`; ``level``/``slot`` is the new expert.
        engine: a :class:`~sleepcore.rollout.Engine` on ``model``.
        config: :class:`KnowledgeSeedingConfig`.
        teacher_experts: ``(level, slot)`` experts that are on in the teacher only (the memory
            teacher's fast level); they are switched off for the student on construction.
    """

    def __init__(self, model, tokenizer, memory, engine: Engine, config: KnowledgeSeedingConfig, *, level: int,
                 slot: int, seed: int = 0, teacher_experts: Sequence[tuple[int, int]] = ()):
        self.model, self.tokenizer, self.memory, self.engine, self.config = model, tokenizer, memory, engine, config
        self.level, self.slot = level, slot
        self.teacher_experts = [tuple(expert) for expert in teacher_experts]
        if (level, slot) in self.teacher_experts:
            raise ValueError(f"teacher_experts must not contain the new expert {(level, slot)}")
        for expert in self.teacher_experts:
            memory.deactivate(*expert)
        self.rng = random.Random(seed)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.head = model.get_output_embeddings().weight
        self.policy_loss = FusedLinearPolicyLoss("grpo", temperature=config.sample_temperature,
                                                 eps_low=config.clip_eps, eps_high=config.clip_eps)
        self.optimizer = torch.optim.AdamW(memory.trainable(level, slot), lr=config.learning_rate,
                                           weight_decay=config.weight_decay)
        self.judge = ModelJudge(model, tokenizer, context=self.teacher) if config.judge == "model" else None

    # ------------------------------------------------------------------ the two selves
    @contextmanager
    def teacher(self):
        """The smaller self: the new expert off, the teacher experts on."""
        self.memory.deactivate(self.level, self.slot)
        for expert in self.teacher_experts:
            self.memory.activate(*expert)
        try:
            yield
        finally:
            for expert in self.teacher_experts:
                self.memory.deactivate(*expert)
            self.memory.activate(self.level, self.slot)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    # ------------------------------------------------------------------ replay set
    def sample_replay(self, prompts: list[ReplayPrompt], *, progress: bool = True) -> list[ReplaySample]:
        """Teacher samples of every prompt (``samples_per_prompt`` each), with the teacher's hidden
        states on them."""
        c = self.config
        params = SamplingParams(n=c.samples_per_prompt, temperature=c.sample_temperature,
                                max_tokens=c.max_new_tokens, seed=self.rng.randrange(1 << 62))
        teacher_ids = [self._encode(p.teacher) for p in prompts]
        with self.teacher():
            outputs = self.engine.generate(teacher_ids, params, progress=progress)
        samples = []
        for prompt, ids, output in zip(prompts, teacher_ids, outputs):
            student_ids = self._encode(prompt.student)
            for completion in output.completions:
                if len(completion.token_ids) >= 2:
                    samples.append(ReplaySample(student_ids, ids, list(completion.token_ids)))
        # batches of similar length waste little on padding
        by_length = sorted(samples, key=lambda s: len(s.teacher_prompt) + len(s.response))
        starts = tqdm(range(0, len(samples), _TEACHER_BATCH), desc="teacher states", unit="batch",
                      disable=not progress)
        with torch.no_grad(), self.teacher():
            for start in starts:
                chunk = by_length[start:start + _TEACHER_BATCH]
                hidden = response_hidden(self.model, [s.teacher_prompt for s in chunk], [s.response for s in chunk],
                                         self.pad_id).float().cpu()
                for sample, rows in zip(chunk, hidden.split([len(s.response) for s in chunk])):
                    sample.teacher_hidden = rows.clone()
        return samples

    # ------------------------------------------------------------------ one step
    def step(self, batch: list[ReplaySample]) -> dict:
        """One AdamW step on a batch of replay samples; returns the step's metrics."""
        c = self.config
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        gkd, kl, gkd_tokens = self._distillation_term(batch)
        lti, reward, lti_tokens = self._imitation_term(batch) if c.alpha < 1 else (torch.zeros(()), None, 0)
        loss = c.alpha * gkd + (1 - c.alpha) * lti
        loss.backward()
        self.optimizer.step()
        seconds = time.perf_counter() - started
        return {"loss": loss.item(), "gkd": gkd.item(), "lti": lti.item(), "reward": reward, "kl_teacher": kl,
                "tokens": gkd_tokens + lti_tokens, "tokens_per_s": (gkd_tokens + lti_tokens) / seconds,
                "seconds": seconds}

    @torch.no_grad()
    def replay_kl(self, samples: list[ReplaySample]) -> float:
        """Mean per-token KL(teacher || student) on the teacher's own responses (the replay set)."""
        total, tokens = 0.0, 0
        for start in range(0, len(samples), _TEACHER_BATCH):
            chunk = samples[start:start + _TEACHER_BATCH]
            responses = [sample.response for sample in chunk]
            teacher = self._teacher_hidden(chunk, responses, [])
            student = response_hidden(self.model, [s.student_prompt for s in chunk], responses, self.pad_id)
            total += float(fused_linear_jsd(student, self.head, teacher, self.head, beta=0.0,
                                            temperature=self.config.temperature, reduction="sum"))
            tokens += student.shape[0]
        return total / max(tokens, 1)

    def _distillation_term(self, batch):
        c = self.config
        responses = [sample.response for sample in batch]
        on_policy = [i for i in range(len(batch)) if self.rng.random() < c.on_policy]
        if on_policy:
            params = SamplingParams(temperature=c.sample_temperature, max_tokens=c.max_new_tokens,
                                    seed=self.rng.randrange(1 << 62))
            outputs = self.engine.generate([batch[i].student_prompt for i in on_policy], params, progress=False)
            for i, output in zip(on_policy, outputs):
                if output.completions[0].token_ids:
                    responses[i] = list(output.completions[0].token_ids)
        teacher = self._teacher_hidden(batch, responses, on_policy)
        student = response_hidden(self.model, [s.student_prompt for s in batch], responses, self.pad_id)
        loss = fused_linear_jsd(student, self.head, teacher, self.head, beta=c.beta, temperature=c.temperature)
        with torch.no_grad():
            kl = fused_linear_jsd(student.detach(), self.head, teacher, self.head, beta=0.0,
                                  temperature=c.temperature)
        return loss, float(kl), student.shape[0]

    def _teacher_hidden(self, batch: list[ReplaySample], responses: list[list[int]], on_policy: list[int]):
        """Teacher hidden states ``[sum(len(responses)), H]``: cached for the teacher's own samples, a
        teacher forward for the student-sampled (on-policy) ones."""
        rows = [sample.teacher_hidden for sample in batch]
        if on_policy:
            with torch.no_grad(), self.teacher():
                fresh = response_hidden(self.model, [batch[i].teacher_prompt for i in on_policy],
                                        [responses[i] for i in on_policy], self.pad_id)
            for i, hidden in zip(on_policy, fresh.split([len(responses[i]) for i in on_policy])):
                rows[i] = hidden
        if any(row is None for row in rows):
            raise ValueError("replay samples need teacher_hidden (draw them with sample_replay)")
        return torch.cat([row.to(self.head.device, self.head.dtype) for row in rows])

    def _imitation_term(self, batch):
        c = self.config
        prefixes, targets = [], []
        for sample in batch:
            cut = self.rng.randint(1, len(sample.response) - 1)
            prefixes.append(sample.student_prompt + sample.response[:cut])
            targets.append(sample.response[cut:])
        params = [SamplingParams(n=c.completions, temperature=c.sample_temperature, max_tokens=len(target),
                                 seed=self.rng.randrange(1 << 62)) for target in targets]
        outputs = self.engine.generate(prefixes, params, progress=False)
        prompts, completions, old_logp, references = [], [], [], []
        for prefix, target, output in zip(prefixes, targets, outputs):
            for completion in output.completions:
                prompts.append(prefix)
                completions.append(list(completion.token_ids))
                old_logp.append(list(completion.logprobs))
                references.append(target)
        decode = self.tokenizer.decode
        rewards = imitation_reward(completions, references, gamma=c.gamma, z0=c.z0, judge=self.judge,
                                   completion_texts=[decode(x, skip_special_tokens=True) for x in completions],
                                   reference_texts=[decode(x, skip_special_tokens=True) for x in references])
        advantages = group_advantages(torch.tensor(rewards, dtype=torch.float32), c.completions)
        hidden = response_hidden(self.model, prompts, completions, self.pad_id)
        device, lengths = hidden.device, [len(x) for x in completions]

        def padded(rows, value=0):  # [B, T] (or [B, T, H]) from one row per completion
            return pad_sequence(rows, batch_first=True, padding_value=value)

        token_ids = padded([torch.tensor(x, device=device) for x in completions])
        mask = padded([torch.ones(n, dtype=torch.bool, device=device) for n in lengths], False)
        old = padded([torch.tensor(x, device=device) for x in old_logp])
        loss = self.policy_loss(padded(hidden.split(lengths)), self.head, token_ids, old, advantages.to(device), mask)
        loss = loss[0] if isinstance(loss, tuple) else loss
        return loss, sum(rewards) / len(rewards), hidden.shape[0]
