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

One step: one rollout-engine call draws the on-policy samples and the LTI completions; then one
student forward runs the batch as token trees (:mod:`sleepcore.lm.tree`, one per 2,048 tokens): the
prompts' common head (the chat template's system turn and question prefix) once, each prompt's rest and
response after it, and each completion attending to its prefix inside the distillation sequence
(or beside an on-policy sample) instead of recomputing it: the same hidden states up to rounding
at a fraction of the tokens (both in :mod:`sleepcore.sleep.seeding_rollouts`).

The teacher is the current model (new expert off): with the wake document in its context (the
in-context teacher), or with the fast level's experts on (``teacher_experts``, the memory teacher).
A teacher reading a document does so without the receiver level's earlier experts (what earlier
sleeps consolidated) unless ``teacher_reads_with_earlier_experts``; rehearsal prompts, which hold
no document, are answered with them.
The student is the same model with the new expert on, the teacher experts off and no document.
Only the new expert trains, through the stage's runtime (:func:`~sleepcore.distributed.training_runtime`).

Under torchrun each rank samples the replay set for its block of the prompts (gathered, so every
rank holds all of it), and runs its block of each step's batch; the step's random choices
(on-policy items, LTI cuts, sampling seeds) are drawn for the whole batch on every rank first, so
the ranks together compute exactly the single-process step. The KL metric is each rank's sum over
the global token count (summed by ``reduce_metrics``).
"""

from __future__ import annotations

import dataclasses
import random
import time
from contextlib import contextmanager
from functools import partial

import torch
from torch.nn.utils.rnn import pad_sequence

from sleepcore.distributed import training_runtime, world
from sleepcore.lm import head_weight, pad_id
from sleepcore.losses import FusedLinearPolicyLoss
from sleepcore.ops import fused_linear_jsd, fused_linear_logprobs, group_advantages
from sleepcore.sleep.config import KnowledgeSeedingConfig
from sleepcore.sleep.judge import ModelJudge
from sleepcore.sleep.prompts import replay_coverage
from sleepcore.sleep.replay import (ReplaySample, replay_from_state, replay_prompts, replay_state,
                                    sample_replay, scored_replay, select_tokens)
from sleepcore.sleep.rewards import imitation_reward, reward_metrics
from sleepcore.sleep.seeding_rollouts import Rollouts, draw_rollouts, engine_tokens, rollout_trees
from sleepcore.sleep.stage import StageContext
from sleepcore.train.checkpoint import random_state, restore_random_state

KL_BATCH = 16  # replay samples per student forward when measuring the replay KL


class KnowledgeSeeding:
    """The consolidation stage: a replay set of teacher samples, then optimisation steps on the new
    expert ``(context.level, context.slot)``.

    Args:
        context: the model, tokenizer, memory, engine, the new expert, the seed, the teacher
            experts (on in the teacher only; switched off for the student here) and whether the
            teacher reads the documents.
        config: :class:`KnowledgeSeedingConfig`.
        share_prefixes: the batch as token trees, the prompts' common head (per tree) and each LTI
            prefix computed once (default); False: every sequence in a row of its own with its whole
            prefix (same maths up to rounding, more tokens; tests and benchmarks).
    """

    name = "seeding"

    def __init__(self, context: StageContext, config: KnowledgeSeedingConfig, *, share_prefixes: bool = True):
        self.context, self.config, self.share_prefixes = context, config, share_prefixes
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
        self.runtime = training_runtime(self.model, self.memory.trainable(self.level, self.slot), config.optimizer,
                                        total_steps=config.steps, token_budget=config.token_budget)
        self.judge = ModelJudge(self.model, self.tokenizer, context=self.teacher) if config.judge == "model" else None
        self.items: list[ReplaySample] = []
        self.kl_before: float | None = None
        self.prepare_forward_tokens: int | None = None
        self.coverage: float | None = None
        self.student_prompts: list[str] = []

    @contextmanager
    def teacher(self, *, reading: bool = True):
        """The smaller self: the new expert off, the teacher experts on. While ``reading`` (its
        prompt holds a document the student's does not), also without the receiver level's
        earlier experts, unless ``config.teacher_reads_with_earlier_experts``: what earlier sleeps
        consolidated is about other documents, and it overrides the one in context."""
        keep = not reading or self.config.teacher_reads_with_earlier_experts
        earlier = [] if keep else [slot for slot in self.memory.active_slots(self.level) if slot != self.slot]
        for slot in [self.slot, *earlier]:
            self.memory.deactivate(self.level, slot)
        for expert in self.teacher_experts:
            self.memory.activate(*expert)
        try:
            yield
        finally:
            for expert in self.teacher_experts:
                self.memory.deactivate(*expert)
            for slot in [self.slot, *earlier]:
                self.memory.activate(self.level, slot)

    # ------------------------------------------------------------------ the stage protocol
    def prepare(self, buffer, *, progress: bool = True) -> None:
        """Draws the replay set from the buffer and measures the replay KL before training."""
        self.engine.stats = {}
        prompts = replay_prompts(buffer, self.config, self.tokenizer, self.engine, self.teacher,
                                 seed=self.context.seed, teacher_reads_documents=self.context.teacher_reads_documents)
        self.coverage = replay_coverage(buffer.documents, prompts)
        self.student_prompts = list(dict.fromkeys(prompt.student for prompt in prompts))
        sampled, self.engine.stats = engine_tokens(self.engine), {}
        block, share = world.block(prompts), []
        for reading in (True, False):  # the prompts that hold a document, then those that do not (rehearsal)
            own = [prompt for prompt in block if (prompt.teacher != prompt.student) == reading]
            share += sample_replay(self.tokenizer, self.engine, [p for p in own if p.response is None], self.config,
                                   partial(self.teacher, reading=reading), self.rng, progress=progress)
            share += scored_replay(self.model, self.tokenizer, [p for p in own if p.response is not None],
                                   partial(self.teacher, reading=reading), self.pad_id)
        self.items = world.gather(share)
        if not self.items:
            raise RuntimeError("the teacher produced no usable replay samples (all shorter than 2 tokens)")
        token_kl = self.token_kl(self.items)
        self.kl_before = float(torch.cat(token_kl).mean())
        if self.config.token_selection < 1:
            self.items = select_tokens(self.items, token_kl, self.config.token_selection)
        local = sampled + engine_tokens(self.engine) + sum(len(s.student_prompt) + len(s.response) for s in share)
        self.prepare_forward_tokens = int(world.all_sum([local])[0])

    def step(self, batch: list[ReplaySample]) -> dict:
        """One optimiser step on a batch of replay samples; returns the step's metrics: the loss and
        its terms, the reward's mean and std over the completions and the fraction of LTI groups with
        equal rewards (zero advantage: no signal), KL(teacher || student) on the distillation tokens,
        ``tokens`` (tokens that receive a gradient), ``forward_tokens`` (tokens run without one: the
        engine's prefill and samples, the teacher's forward over the on-policy samples; the model
        judge's forward is not counted), seconds, tokens/s, and the runtime's ``lr``, ``grad_norm``."""
        c = self.config
        started = time.perf_counter()
        batch, rollouts = draw_rollouts(batch, c, self.rng, self.runtime, self.engine)
        teacher = self._teacher_hidden(batch, rollouts.responses, rollouts.on_policy)
        teacher_tokens = sum(len(batch[i].teacher_prompt) + len(rollouts.responses[i]) for i in rollouts.on_policy)
        trees, responses, places = rollout_trees(batch, rollouts, share_prefixes=self.share_prefixes)
        hidden, layout = self.runtime.tree_hidden(trees, self.pad_id)
        gkd, kl, gkd_tokens = self._distillation_term(hidden, layout, responses, batch, rollouts, teacher)
        lti, rewards, lti_tokens = torch.zeros(()), [], 0
        if c.alpha < 1:
            lti, rewards, lti_tokens = self._imitation_term(hidden, layout, places, batch, rollouts)
        loss = c.alpha * gkd + (1 - c.alpha) * lti
        tokens = gkd_tokens + lti_tokens
        self.runtime.backward(loss)
        update = self.runtime.step(tokens)
        seconds = time.perf_counter() - started
        loss, gkd, lti = torch.stack([loss, gkd, lti]).detach().tolist()
        rewards = reward_metrics(self.runtime.gather(rewards), c.completions)
        return self.runtime.reduce_metrics({
            "loss": loss, "gkd": gkd, "lti": lti, **rewards, "kl_teacher": kl, "tokens": tokens,
            "forward_tokens": rollouts.forward_tokens + teacher_tokens, "tokens_per_s": tokens / seconds,
            "seconds": seconds, **update})

    def summary(self) -> dict:
        """Replay samples, the replay KL before and after, the documents' sentences the replay
        prompts reach (``coverage``, :func:`~sleepcore.sleep.prompts.replay_coverage`), and
        ``prepare_forward_tokens``: the tokens the preparation ran without a gradient (teacher
        sampling with its prefill, the teacher-state caching, the student forward of the replay-KL
        measurement; ``kl_after`` costs that again), and ``trained_fraction``: the fraction of the kept
        samples' response tokens that are trained (``token_selection``), and ``student_prompts``: the
        replay prompts' distinct student texts (what ``Sleeper`` keeps for later sleeps' rehearsal)."""
        tokens = sum(len(s.response) for s in self.items)
        trained = sum(len(s.response) if s.trained is None else int(s.trained.sum()) for s in self.items)
        return {"replay_samples": len(self.items), "kl_before": self.kl_before, "kl_after": self.replay_kl(self.items),
                "coverage": self.coverage, "prepare_forward_tokens": self.prepare_forward_tokens,
                "trained_fraction": trained / max(tokens, 1), "student_prompts": list(self.student_prompts)}

    def fixed_questions(self) -> list[list[list[int]]]:
        """``[student prompt ids, response ids]`` of the replay items whose response is fixed (the
        answers taken from the document: ``sentence_questions`` with ``sentence_answers``), which a
        later sleep's Dreaming can rehearse (``DreamingConfig.rehearse_earlier_seeding``)."""
        return [[list(sample.student_prompt), list(sample.response)] for sample in self.items if sample.fixed]

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, replay = replay_state(self.items)
        runtime_tensors, runtime_state = self.runtime.state_dict()
        tensors.update({f"runtime.{name}": value for name, value in runtime_tensors.items()})
        return tensors, {"replay": replay, "runtime": runtime_state, "rng": random_state(self.rng),
                         "kl_before": self.kl_before, "prepare_forward_tokens": self.prepare_forward_tokens,
                         "coverage": self.coverage, "student_prompts": self.student_prompts}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self.items = replay_from_state(tensors, state["replay"])
        self.runtime.load_state_dict({k[len("runtime."):]: v for k, v in tensors.items() if k.startswith("runtime.")},
                                     state["runtime"])
        restore_random_state(state["rng"], self.rng)
        self.kl_before = state["kl_before"]
        self.prepare_forward_tokens = state.get("prepare_forward_tokens")
        self.coverage = state.get("coverage")
        self.student_prompts = list(state.get("student_prompts", []))

    # ------------------------------------------------------------------ measurements
    def replay_kl(self, samples: list[ReplaySample]) -> float:
        """Mean per-token KL(teacher || student) on the teacher's own responses (the replay set),
        over every response token, trained or not."""
        return float(torch.cat(self.token_kl(samples)).mean())

    @torch.no_grad()
    def cache_teacher(self, samples: list[ReplaySample]) -> list[ReplaySample]:
        """``samples`` with ``teacher_hidden`` (``[len(response), H]``, CPU) from a teacher forward
        over their teacher prompts and responses: replay whose responses the teacher did not sample
        (dreams). Each rank computes its block, every rank gets all."""
        def cache(chunk: list[ReplaySample]) -> list[ReplaySample]:
            responses = [sample.response for sample in chunk]
            hidden = self._teacher_hidden(chunk, responses, list(range(len(chunk))))
            return [dataclasses.replace(sample, teacher_hidden=row.cpu())
                    for sample, row in zip(chunk, hidden.split([len(r) for r in responses]))]

        return _in_chunks(samples, cache)

    @torch.no_grad()
    def token_kl(self, samples: list[ReplaySample]) -> list[torch.Tensor]:
        """Per sample, KL(teacher || student) at each response token (fp32 ``[len(response)]``, CPU);
        each rank computes its block, every rank gets all."""
        def kl(chunk: list[ReplaySample]) -> list[torch.Tensor]:
            responses = [sample.response for sample in chunk]
            teacher = self._teacher_hidden(chunk, responses, [])
            student = self.runtime.response_hidden([s.student_prompt for s in chunk], responses, self.pad_id)
            per_token = fused_linear_jsd(student, self.head, teacher, self.head, beta=0.0,
                                         temperature=self.config.temperature, reduction="none")
            return list(per_token.float().cpu().split([len(r) for r in responses]))

        return _in_chunks(samples, kl)

    # ------------------------------------------------------------------ the two terms
    def _distillation_term(self, hidden, layout, responses, batch, rollouts: Rollouts, teacher):
        """The divergence on every response token, plus ``hard_label_weight`` times the student's
        cross-entropy on the teacher's own sampled tokens (off-policy items only: sequence-level
        KD, a target sharpened to the teacher's choices), both over the global token count."""
        c = self.config
        rows = [row for tree, branch in responses for row in layout.rows(tree, branch)]
        on_policy = set(rollouts.on_policy)
        trained = None  # every token (token_selection = 1): no mask, no copy of the teacher states
        if any(batch[i].trained is not None and i not in on_policy for i in range(len(batch))):
            trained = torch.cat([torch.ones(len(rollouts.responses[i]), dtype=torch.bool)
                                 if batch[i].trained is None or i in on_policy else batch[i].trained
                                 for i in range(len(batch))])
            rows = [row for row, keep in zip(rows, trained.tolist()) if keep]
            teacher = teacher[trained.to(teacher.device)]
        student = hidden.index_select(0, torch.tensor(rows, device=hidden.device))
        count = self.runtime.token_count(student.shape[0])
        loss = fused_linear_jsd(student, self.head, teacher, self.head, beta=c.beta, temperature=c.temperature,
                                num_items_in_batch=count)
        if c.beta == 0.0:  # the loss is the KL itself (this rank's sum over the global count)
            kl = float(loss.detach())
        else:
            with torch.no_grad():
                kl = float(fused_linear_jsd(student.detach(), self.head, teacher, self.head, beta=0.0,
                                            temperature=c.temperature, num_items_in_batch=count))
        if c.hard_label_weight > 0:
            loss = loss + c.hard_label_weight * self._teacher_token_loss(student, batch, rollouts, trained, count)
        return loss, kl, student.shape[0]

    def _teacher_token_loss(self, student, batch, rollouts: Rollouts, trained, count):
        """``-sum log q(response token)`` over the off-policy items' ``trained`` response tokens (None:
        all; with ``hard_label_items = "fixed"`` only the items of ``batch`` with a fixed response),
        over ``count``."""
        skipped = set(rollouts.on_policy)
        if self.config.hard_label_items == "fixed":
            skipped |= {i for i, sample in enumerate(batch) if not sample.fixed}
        targets = torch.tensor([-100 if i in skipped else token for i, response in enumerate(rollouts.responses)
                                for token in response])
        targets = (targets if trained is None else targets[trained]).to(student.device)
        logp, _ = fused_linear_logprobs(student, self.head, targets, temperature=self.config.temperature,
                                        return_entropy=False)
        return -logp.sum() / count

    def _teacher_hidden(self, batch: list[ReplaySample], responses: list[list[int]], on_policy: list[int]):
        """Teacher hidden states ``[sum(len(responses)), H]``: cached for the teacher's own samples, a
        teacher forward for the student-sampled (on-policy) ones."""
        rows = [sample.teacher_hidden for sample in batch]
        for reading in (True, False):
            chosen = [i for i in on_policy if (batch[i].teacher_prompt != batch[i].student_prompt) == reading]
            if not chosen:
                continue
            with torch.no_grad(), self.teacher(reading=reading):
                fresh = self.runtime.response_hidden([batch[i].teacher_prompt for i in chosen],
                                                     [responses[i] for i in chosen], self.pad_id)
            for i, hidden in zip(chosen, fresh.split([len(responses[i]) for i in chosen])):
                rows[i] = hidden
        if any(row is None for row in rows):
            raise ValueError("replay samples need teacher_hidden (draw them with sample_replay)")
        return torch.cat([row.to(self.head.device, self.head.dtype) for row in rows])

    def _imitation_term(self, hidden, layout, places, batch, rollouts: Rollouts):
        c = self.config
        completions, old_logp, references, rows = [], [], [], []
        for i, (sample, cut) in enumerate(zip(batch, rollouts.cuts)):
            for (tree, branch), completion in zip(places[i], rollouts.completions[i]):
                completions.append(list(completion.token_ids))
                old_logp.append(list(completion.logprobs))
                references.append(sample.response[cut:])
                rows += layout.rows(tree, branch)
        decode = self.tokenizer.decode
        rewards = imitation_reward(completions, references, gamma=c.gamma, z0=c.z0, judge=self.judge,
                                   completion_texts=[decode(x, skip_special_tokens=True) for x in completions],
                                   reference_texts=[decode(x, skip_special_tokens=True) for x in references])
        advantages = group_advantages(torch.tensor(rewards, dtype=torch.float32), c.completions)
        device, lengths = hidden.device, [len(x) for x in completions]
        selected = hidden.index_select(0, torch.tensor(rows, dtype=torch.long, device=device))

        def padded(rows, value=0):  # [B, T] (or [B, T, H]) from one row per completion
            return pad_sequence(rows, batch_first=True, padding_value=value)

        token_ids = padded([torch.tensor(x, dtype=torch.long, device=device) for x in completions])
        mask = padded([torch.ones(n, dtype=torch.bool, device=device) for n in lengths], False)
        old = padded([torch.tensor(x, dtype=torch.float32, device=device) for x in old_logp])
        loss = self.policy_loss(padded(selected.split(lengths)), self.head, token_ids, old, advantages.to(device), mask,
                                global_seqs=self.runtime.token_count(len(completions)))
        loss = loss[0] if isinstance(loss, tuple) else loss
        return loss, rewards, selected.shape[0]


def _in_chunks(samples: list, run) -> list:
    """``run`` over this rank's block of ``samples`` in chunks of ``KL_BATCH``; every rank gets all results."""
    mine = world.block(samples)
    return world.gather([result for start in range(0, len(mine), KL_BATCH)
                         for result in run(mine[start:start + KL_BATCH])])
