"""Knowledge Seeding: upward self-distillation into a new low-rank expert (METHOD.md §3), as a stage.

Loss form of the objective (minimised):

    L = alpha * JSD_beta(teacher || student) + (1 - alpha) * L_LTI

* The distillation term is GKD: a fraction ``on_policy`` of the replay sequences are re-sampled
  from the student, the rest are the teacher's samples; per-token generalized JSD on the response
  tokens through ``ops.fused_linear_jsd`` on both selves' final hidden states (shared lm_head),
  summed and divided by the runtime's token count (exact under accumulation and data parallel).
* The LTI term: each teacher sample is cut at a random point; the student completes the prefix
  ``completions`` times (rollout engine); each completion is rewarded against the teacher's own
  continuation (``imitation_reward``); group-normalised advantages go through
  ``losses.FusedLinearPolicyLoss`` (GRPO clipping, importance ratio against the rollout policy,
  which is the student at sampling time).

The teacher is the current model (new expert off): with the wake document in its context (the
in-context teacher), or with the fast level's experts on (``teacher_experts``, the memory teacher).
The student is the same model with the new expert on, the teacher experts off and no document.
Only the new expert trains, through the stage's :class:`~sleepcore.train.LocalRuntime`.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager

import torch
from torch.nn.utils.rnn import pad_sequence

from sleepcore.lm import head_weight, pad_id
from sleepcore.losses import FusedLinearPolicyLoss
from sleepcore.ops import fused_linear_jsd, group_advantages
from sleepcore.rollout import SamplingParams
from sleepcore.sleep.config import KnowledgeSeedingConfig
from sleepcore.sleep.judge import ModelJudge
from sleepcore.sleep.replay import (TEACHER_BATCH, ReplaySample, replay_from_state, replay_prompts, replay_state,
                                    sample_replay)
from sleepcore.sleep.rewards import imitation_reward
from sleepcore.sleep.stage import StageContext
from sleepcore.train import LocalRuntime
from sleepcore.train.checkpoint import random_state, restore_random_state


class KnowledgeSeeding:
    """The consolidation stage: a replay set of teacher samples, then optimisation steps on the new
    expert ``(context.level, context.slot)``.

    Args:
        context: the model, tokenizer, memory, engine, the new expert, the seed, the teacher
            experts (on in the teacher only; switched off for the student here) and whether the
            teacher reads the documents.
        config: :class:`KnowledgeSeedingConfig`.
    """

    name = "seeding"

    def __init__(self, context: StageContext, config: KnowledgeSeedingConfig):
        self.context, self.config = context, config
        self.model, self.tokenizer, self.memory, self.engine = (context.model, context.tokenizer, context.memory,
                                                                context.engine)
        self.level, self.slot = context.level, context.slot
        self.teacher_experts = [tuple(expert) for expert in context.teacher_experts]
        if (self.level, self.slot) in self.teacher_experts:
            raise ValueError(f"teacher_experts must not contain the new expert {(self.level, self.slot)}")
        for expert in self.teacher_experts:
            self.memory.deactivate(*expert)
        self.rng = random.Random(context.seed)
        self.pad_id, self.head = pad_id(self.tokenizer), head_weight(self.model)
        self.policy_loss = FusedLinearPolicyLoss("grpo", temperature=config.sample_temperature,
                                                 eps_low=config.clip_eps, eps_high=config.clip_eps)
        self.runtime = LocalRuntime(self.model, self.memory.trainable(self.level, self.slot), config.optimizer,
                                    total_steps=config.steps)
        self.judge = ModelJudge(self.model, self.tokenizer, context=self.teacher) if config.judge == "model" else None
        self.items: list[ReplaySample] = []
        self.kl_before: float | None = None

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

    # ------------------------------------------------------------------ the stage protocol
    def prepare(self, buffer, *, progress: bool = True) -> None:
        """Draws the replay set from the buffer and measures the replay KL before training."""
        prompts = replay_prompts(buffer, self.config, self.tokenizer, self.engine, self.teacher,
                                 seed=self.context.seed, teacher_reads_documents=self.context.teacher_reads_documents)
        self.items = sample_replay(self.model, self.tokenizer, self.engine, prompts, self.config, self.teacher,
                                   self.rng, progress=progress)
        if not self.items:
            raise RuntimeError("the teacher produced no usable replay samples (all shorter than 2 tokens)")
        self.kl_before = self.replay_kl(self.items)

    def step(self, batch: list[ReplaySample]) -> dict:
        """One optimiser step on a batch of replay samples; returns the step's metrics."""
        c = self.config
        started = time.perf_counter()
        gkd, kl, gkd_tokens = self._distillation_term(batch)
        lti, reward, lti_tokens = self._imitation_term(batch) if c.alpha < 1 else (torch.zeros(()), None, 0)
        loss = c.alpha * gkd + (1 - c.alpha) * lti
        self.runtime.backward(loss)
        update = self.runtime.step()
        seconds = time.perf_counter() - started
        return {"loss": loss.item(), "gkd": gkd.item(), "lti": lti.item(), "reward": reward, "kl_teacher": kl,
                "tokens": gkd_tokens + lti_tokens, "tokens_per_s": (gkd_tokens + lti_tokens) / seconds,
                "seconds": seconds, **update}

    def summary(self) -> dict:
        return {"replay_samples": len(self.items), "kl_before": self.kl_before, "kl_after": self.replay_kl(self.items)}

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, replay = replay_state(self.items)
        runtime_tensors, runtime_state = self.runtime.state_dict()
        tensors.update({f"runtime.{name}": value for name, value in runtime_tensors.items()})
        return tensors, {"replay": replay, "runtime": runtime_state, "rng": random_state(self.rng),
                         "kl_before": self.kl_before}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self.items = replay_from_state(tensors, state["replay"])
        self.runtime.load_state_dict({k[len("runtime."):]: v for k, v in tensors.items() if k.startswith("runtime.")},
                                     state["runtime"])
        restore_random_state(state["rng"], self.rng)
        self.kl_before = state["kl_before"]

    # ------------------------------------------------------------------ measurements
    @torch.no_grad()
    def replay_kl(self, samples: list[ReplaySample]) -> float:
        """Mean per-token KL(teacher || student) on the teacher's own responses (the replay set)."""
        total, tokens = 0.0, 0
        for start in range(0, len(samples), TEACHER_BATCH):
            chunk = samples[start:start + TEACHER_BATCH]
            responses = [sample.response for sample in chunk]
            teacher = self._teacher_hidden(chunk, responses, [])
            student = self.runtime.response_hidden([s.student_prompt for s in chunk], responses, self.pad_id)
            total += float(fused_linear_jsd(student, self.head, teacher, self.head, beta=0.0,
                                            temperature=self.config.temperature, reduction="sum"))
            tokens += student.shape[0]
        return total / max(tokens, 1)

    # ------------------------------------------------------------------ the two terms
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
        student = self.runtime.response_hidden([s.student_prompt for s in batch], responses, self.pad_id)
        loss = fused_linear_jsd(student, self.head, teacher, self.head, beta=c.beta, temperature=c.temperature,
                                num_items_in_batch=self.runtime.token_count(student.shape[0]))
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
                fresh = self.runtime.response_hidden([batch[i].teacher_prompt for i in on_policy],
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
        hidden = self.runtime.response_hidden(prompts, completions, self.pad_id)
        device, lengths = hidden.device, [len(x) for x in completions]

        def padded(rows, value=0):  # [B, T] (or [B, T, H]) from one row per completion
            return pad_sequence(rows, batch_first=True, padding_value=value)

        token_ids = padded([torch.tensor(x, device=device) for x in completions])
        mask = padded([torch.ones(n, dtype=torch.bool, device=device) for n in lengths], False)
        old = padded([torch.tensor(x, device=device) for x in old_logp])
        loss = self.policy_loss(padded(hidden.split(lengths)), self.head, token_ids, old, advantages.to(device), mask)
        loss = loss[0] if isinstance(loss, tuple) else loss
        return loss, sum(rewards) / len(rewards), hidden.shape[0]
