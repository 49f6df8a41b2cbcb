"""One Knowledge Seeding step's samples and its student token trees (:mod:`sleepcore.sleep.knowledge_seeding`).

:func:`draw_rollouts` draws the step's random choices for the whole batch (which items the
student re-samples, the LTI cuts, the sampling seeds), then samples this rank's block of the batch
in one engine call; :func:`rollout_trees` lays the batch out as token trees
(:mod:`sleepcore.lm.tree`, one per :data:`TREE_TOKENS`): the prompts' common head once per tree,
then each item's prompt, response and completions, so one student forward feeds both loss terms.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sleepcore.lm import Branch
from sleepcore.rollout import SamplingParams
from sleepcore.sleep.config import KnowledgeSeedingConfig
from sleepcore.sleep.replay import ReplaySample


@dataclass
class Rollouts:
    """One step's samples: each item's distillation response (the student's for ``on_policy``
    items), LTI cut and completions (none at ``alpha = 1``); the engine's prefill + sampled tokens."""

    responses: list[list[int]]
    on_policy: list[int]
    cuts: list[int] = field(default_factory=list)
    completions: list[list] = field(default_factory=list)
    forward_tokens: int = 0


def engine_tokens(engine) -> int:
    """Tokens the engine's last ``generate`` ran (prefill + sampled; 0 after ``stats`` was cleared)."""
    stats = engine.stats
    return stats.get("prompt_tokens_computed", 0) + stats.get("generated_tokens", 0)


def draw_rollouts(batch: list[ReplaySample], config: KnowledgeSeedingConfig, rng, runtime, engine
                  ) -> tuple[list[ReplaySample], Rollouts]:
    """This rank's block of ``batch`` (``runtime.local_batch``) with its on-policy samples and LTI
    completions, in one engine call. The random choices are drawn from ``rng`` for the whole batch
    first, in the same order on every rank as in a single process, so the ranks' blocks together
    are the single-process step (sampling seeds are per prompt: an item's samples do not depend on
    the other items of the engine call)."""
    c = config
    on_policy = [rng.random() < c.on_policy for _ in batch]
    policy_seed = rng.randrange(1 << 62) if any(on_policy) else None
    cuts = [rng.randint(1, len(sample.response) - 1) for sample in batch] if c.alpha < 1 else []
    seeds = [rng.randrange(1 << 62) for _ in batch] if c.alpha < 1 else []
    mine = runtime.local_batch(list(range(len(batch))))
    batch = [batch[i] for i in mine]
    rollouts = Rollouts([sample.response for sample in batch], [j for j, i in enumerate(mine) if on_policy[i]],
                        [cuts[i] for i in mine] if cuts else [])
    prompts, params = [], []
    if rollouts.on_policy:
        sampling = SamplingParams(temperature=c.sample_temperature, max_tokens=c.max_new_tokens, seed=policy_seed)
        prompts += [batch[j].student_prompt for j in rollouts.on_policy]
        params += [sampling] * len(rollouts.on_policy)
    if c.alpha < 1:
        prompts += [sample.student_prompt + sample.response[:cut] for sample, cut in zip(batch, rollouts.cuts)]
        params += [SamplingParams(n=c.completions, temperature=c.sample_temperature,
                                  max_tokens=len(sample.response) - cut, seed=seeds[i])
                   for sample, cut, i in zip(batch, rollouts.cuts, mine)]
    if not prompts:
        return batch, rollouts
    outputs = engine.generate(prompts, params, progress=False)
    rollouts.forward_tokens = engine_tokens(engine)
    for j, output in zip(rollouts.on_policy, outputs):
        if output.completions[0].token_ids:
            rollouts.responses[j] = list(output.completions[0].token_ids)
    rollouts.completions = [output.completions for output in outputs[len(rollouts.on_policy):]]
    return batch, rollouts


#: The most tokens (counted without sharing) one student token tree takes: its attention is
#: ``[heads, L, L]`` per layer, kept for the backward.
TREE_TOKENS = 2048


def shared_head(prompts: list[list[int]]) -> int:
    """Length of the longest common prefix of ``prompts``, short of each prompt's last token (every
    prompt keeps a token of its own to predict its response from); 0 for fewer than two prompts."""
    if len(prompts) < 2:
        return 0
    return min(len(os.path.commonprefix(prompts)), min(len(prompt) for prompt in prompts) - 1)


def rollout_trees(batch: list[ReplaySample], rollouts: Rollouts, *, share_prefixes: bool = True):
    """The step's student token trees. With ``share_prefixes`` (default) consecutive items share a
    tree of at most :data:`TREE_TOKENS` tokens (attention is quadratic in a tree's width): the
    prompts' common head (:func:`shared_head`: the chat template's system turn and the question
    prefix, a third to a half of a replay sequence's tokens) computed once, each item's rest of its prompt
    after it, its distillation response after that, and its LTI completions continuing the
    response at the cut if it starts with the teacher's prefix, else a branch of that prefix beside
    it. Without it, one tree per item (prompt, response) and a row of its own per completion, after
    the items' trees. Returns ``(trees, responses, places)``: ``responses[i]`` is the ``(tree, branch)``
    of item ``i``'s distillation response, ``places[i]`` those of its completions."""
    if not share_prefixes:
        return _separate_trees(batch, rollouts)
    trees, responses, places = [], [], []
    for group in _tree_groups(batch, rollouts):
        head = shared_head([batch[i].student_prompt for i in group])
        tree, index = [Branch(batch[group[0]].student_prompt[:head])] if head else [], len(trees)
        for i in group:
            sample = batch[i]
            tree.append(Branch(sample.student_prompt[head:], 0) if head else Branch(sample.student_prompt))
            prompt = len(tree) - 1
            tree.append(Branch(rollouts.responses[i], prompt))
            responses.append((index, len(tree) - 1))
            if not rollouts.cuts:
                continue
            cut, done = rollouts.cuts[i], [list(completion.token_ids) for completion in rollouts.completions[i]]
            parent, fork = len(tree) - 1, cut
            if rollouts.responses[i][:cut] != sample.response[:cut]:
                tree.append(Branch(sample.response[:cut], prompt))
                parent, fork = len(tree) - 1, None
            places.append([(index, len(tree) + j) for j in range(len(done))])
            tree += [Branch(tokens, parent, fork) for tokens in done]
        trees.append(tree)
    return trees, responses, places


def _tree_groups(batch: list[ReplaySample], rollouts: Rollouts) -> list[list[int]]:
    """Consecutive items, at most :data:`TREE_TOKENS` tokens per group (counted unshared, plus the
    completions; an item longer than that is a group of its own)."""
    groups, width = [], 0
    for i, sample in enumerate(batch):
        tokens = len(sample.student_prompt) + len(rollouts.responses[i])
        if rollouts.cuts:
            tokens += rollouts.cuts[i] + sum(len(completion.token_ids) for completion in rollouts.completions[i])
        if not groups or width + tokens > TREE_TOKENS:
            groups.append([])
            width = 0
        groups[-1].append(i)
        width += tokens
    return groups


def _separate_trees(batch: list[ReplaySample], rollouts: Rollouts):
    """:func:`rollout_trees` without shared prefixes: every sequence computed whole."""
    trees, rows, places = [], [], []
    for i, sample in enumerate(batch):
        trees.append([Branch(sample.student_prompt), Branch(rollouts.responses[i], 0)])
        if not rollouts.cuts:
            continue
        prefix = sample.student_prompt + sample.response[:rollouts.cuts[i]]
        done = [list(completion.token_ids) for completion in rollouts.completions[i]]
        places.append([(len(batch) + len(rows) + j, 1) for j in range(len(done))])
        rows += [[Branch(prefix), Branch(tokens, 0)] for tokens in done]
    return trees + rows, [(i, 1) for i in range(len(batch))], places
