"""``LocalRuntime``: forwards, backwards and optimiser steps of one process.

Master weights: parameters in bf16/fp16 get fp32 master copies; AdamW updates the masters (from
the fp32-cast gradients) and the result is copied back, so small updates are not lost to rounding.
fp32 parameters are their own masters.

Schedule at step ``s`` (0-based) of ``total_steps``: linear warm-up ``lr * (s + 1) / warmup`` for
``s < warmup``, then ``lr`` (constant) or ``lr * (m + (1 - m) * (1 + cos(pi * p)) / 2)`` (cosine)
with ``m = min_learning_rate_ratio`` and the progress ``p`` the larger of
``(s - warmup) / max(1, total_steps - warmup)`` and, when the stage has a ``token_budget``, the
fraction of it trained so far (a budget usually ends a sleep long before its step cap, so a cosine
over the cap alone would hardly decay).

Precision: with ``OptimizerConfig.compute_dtype`` bf16 (or ``"auto"`` on hardware with native bf16)
the forwards of an fp32 model run under bf16 autocast and return fp32 hidden states; the experts
compute in fp32 inside it (:class:`~sleepcore.memory.layer.MemoryMLP`), so only the frozen base's
matmuls and attention round to bf16.

Loss normalisation: a stage sums its per-token (or per-sequence) losses and divides by
:meth:`token_count` of its local count, which here is the count itself and in a distributed
runtime the all-reduced count over ranks, so the summed gradient equals the single-process one.

Data: a stage runs :meth:`local_batch` of each step's batch (here all of it; a rank's block in
:class:`~sleepcore.distributed.DistributedRuntime`), :meth:`gather`-s what it needs whole (e.g.
rewards for their statistics) and returns :meth:`reduce_metrics` of its metrics.
"""

from __future__ import annotations

import math

import torch

from sleepcore.lm import (TreeBatch, attention_implementation, final_hidden, response_hidden, tree_attention_mask,
                          tree_batch)
from sleepcore.train.config import OptimizerConfig
from sleepcore.train.precision import autocast, autocast_dtype
from sleepcore.validation import integer

#: Batches are padded to a width that is a multiple of this (token trees, and the padded batches of
#: :meth:`LocalRuntime.forward`, sliced back after the forward). Under bf16 autocast on CPU
#: every new matmul shape costs memory that is never given back (oneDNN; fp32 stays flat): with a
#: width of its own per step, a 50-person Knowledge Seeding sleep grew by about 15 MB per step and
#: slowed from 1.25 to 1.55 s/step over 1,200 steps (0.9 -> 1.16 s over 200 steps in a fresh
#: process). Rounded up to 32 (3% padding), a run meets a few dozen shapes: 0.82 s/step, flat.
WIDTH_MULTIPLE = 32


class LocalRuntime:
    """The training runtime of one process.

    Args:
        model: the (wrapped) Hugging Face causal LM whose body gives the hidden states.
        parameters: the tensors to train (those with ``requires_grad``; at least one).
        config: :class:`OptimizerConfig`.
        total_steps: the stage's step count (the cosine schedule's length); None: no decay by steps.
        token_budget: the stage's trained-token budget (the cosine's length in tokens, counted from
            :meth:`step`'s ``tokens``); None: no decay by tokens.

    Raises ``ValueError`` when no parameter requires a gradient.
    """

    def __init__(self, model, parameters, config: OptimizerConfig | None = None, *, total_steps: int | None = None,
                 token_budget: int | None = None):
        self.model, self.config = model, config or OptimizerConfig()
        self.parameters = [p for p in parameters if p.requires_grad]
        if not self.parameters:
            raise ValueError("parameters must hold at least one tensor that requires a gradient")
        self.total_steps = integer("total_steps", total_steps, minimum=1, optional=True)
        self.token_budget = integer("token_budget", token_budget, minimum=1, optional=True)
        self.trained_tokens = 0
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().clone().requires_grad_()
                        for p in self.parameters]
        c = self.config
        self.optimizer = torch.optim.AdamW(self.masters, lr=c.learning_rate, betas=(c.beta1, c.beta2),
                                           weight_decay=c.weight_decay)
        self.steps = 0
        self.zero_grad()  # a gradient left by an earlier backward (e.g. a scoring pass) is not this runtime's
        self.device = self.parameters[0].device  # an expert's: the base model's dtype and device
        self.autocast_dtype = autocast_dtype(c.compute_dtype, self.parameters[0])

    # ------------------------------------------------------------------ forwards
    def hidden_states(self, input_ids: torch.Tensor, attention_mask, position_ids: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """The model body's final hidden states ``[B, T, H]`` (fp32 under autocast). ``attention_mask``
        is a ``[B, T]`` padding mask or a prepared 4D mask with its ``position_ids``."""
        with self.attention(), autocast(self.autocast_dtype, self.device):
            hidden = final_hidden(self.model, input_ids, attention_mask, position_ids)
        return hidden if self.autocast_dtype is None else hidden.float()

    def attention(self):
        """The context the forwards run in: ``OptimizerConfig.train_attention``'s implementation
        while gradients are enabled, the model's own otherwise (and for ``"model"``)."""
        choice = self.config.train_attention
        return attention_implementation(self.model, None if choice == "model" or not torch.is_grad_enabled()
                                        else choice)

    def tree_hidden(self, trees, pad_id: int) -> tuple[torch.Tensor, TreeBatch]:
        """Final hidden states ``[B * L, H]`` of token trees (:mod:`sleepcore.lm.tree`) and their
        layout; ``batch.rows(tree, branch)`` index the rows that predict a branch's tokens."""
        batch = tree_batch(trees, pad_id, self.device, width_multiple=WIDTH_MULTIPLE)
        with self.attention():  # the prepared mask's form follows the implementation
            hidden = self.hidden_states(batch.input_ids, tree_attention_mask(self.model, batch), batch.position_ids)
        return hidden.reshape(-1, hidden.shape[-1]), batch

    def forward(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """:meth:`hidden_states` in the ``forward(model, ids, mask)`` form the :mod:`sleepcore.lm`
        helpers take (``model`` is the runtime's own): ``[B, T, H]`` for right-padded ``[B, T]``
        ids and 2D mask, computed at a width rounded up to :data:`WIDTH_MULTIPLE` (masked columns
        on the right, which no real token attends to) and cut back to ``T``."""
        width = input_ids.shape[1]
        extra = -width % WIDTH_MULTIPLE
        if extra:
            input_ids = torch.nn.functional.pad(input_ids, (0, extra))
            attention_mask = torch.nn.functional.pad(attention_mask, (0, extra))
        return self.hidden_states(input_ids, attention_mask)[:, :width]

    def response_hidden(self, prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> torch.Tensor:
        """Final hidden states ``[N, H]`` predicting the response tokens (see :func:`sleepcore.lm.response_hidden`)."""
        return response_hidden(self.model, prompts, responses, pad_id, forward=self.forward)

    def local_batch(self, batch: list) -> list:
        """This process's part of a step's ``batch`` (here: all of it)."""
        return batch

    def gather(self, items: list) -> list:
        """The items every process computed for this step, in batch order (here: ``items``)."""
        return list(items)

    def token_count(self, local: int) -> int:
        """The normaliser for a loss summed over ``local`` tokens (or sequences): the global count
        (here: ``local``)."""
        return local

    def reduce_metrics(self, metrics: dict) -> dict:
        """Metrics as every rank sees them (here: unchanged)."""
        return metrics

    # ------------------------------------------------------------------ updates
    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def learning_rate(self, step: int | None = None) -> float:
        """The scheduled learning rate at ``step`` (default: the next step; the token progress is
        always the tokens trained so far)."""
        c, step = self.config, self.steps if step is None else step
        if step < c.warmup_steps:
            return c.learning_rate * (step + 1) / c.warmup_steps
        progresses = ([(step - c.warmup_steps) / max(1, self.total_steps - c.warmup_steps)]
                      if self.total_steps is not None else [])
        progresses += [self.trained_tokens / self.token_budget] if self.token_budget is not None else []
        if c.schedule == "constant" or not progresses:
            return c.learning_rate
        progress = min(1.0, max(progresses))
        m = c.min_learning_rate_ratio
        return c.learning_rate * (m + (1 - m) * (1 + math.cos(math.pi * progress)) / 2)

    def step(self, tokens: int = 0) -> dict:
        """Clips, steps the optimiser at the scheduled rate, copies masters back and clears the
        gradients; ``tokens``: this rank's trained tokens of the step (their global count advances
        the schedule when there is a ``token_budget``). Returns ``{"lr", "grad_norm"}`` (the norm
        before clipping)."""
        learning_rate = self.learning_rate()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        for parameter, master in zip(self.parameters, self.masters):
            if master is not parameter:
                master.grad = None if parameter.grad is None else parameter.grad.float()
        max_norm = self.config.max_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.masters, max_norm if max_norm is not None else math.inf)
        self.optimizer.step()
        with torch.no_grad():
            for parameter, master in zip(self.parameters, self.masters):
                if master is not parameter:
                    parameter.copy_(master)
                    master.grad = None
        self.zero_grad()
        self.steps += 1
        if self.token_budget is not None:
            self.trained_tokens += self.token_count(tokens)
        return {"lr": learning_rate, "grad_norm": float(grad_norm)}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """``(tensors, json_state)``: optimiser moments and fp32 masters, and the step and groups."""
        state = self.optimizer.state_dict()
        tensors = {f"optimizer.{index}.{name}": value for index, moments in state["state"].items()
                   for name, value in moments.items()}
        tensors.update({f"master.{index}": master for index, (parameter, master)
                        in enumerate(zip(self.parameters, self.masters)) if master is not parameter})
        groups = [{key: list(value) if isinstance(value, tuple) else value for key, value in group.items()}
                  for group in state["param_groups"]]
        return tensors, {"steps": self.steps, "trained_tokens": self.trained_tokens, "param_groups": groups,
                         "moments": sorted(state["state"])}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        moments = {}
        for index in state["moments"]:
            prefix = f"optimizer.{index}."
            moments[int(index)] = {name[len(prefix):]: value for name, value in tensors.items()
                                   if name.startswith(prefix)}
        groups = [{key: tuple(value) if key == "betas" else value for key, value in group.items()}
                  for group in state["param_groups"]]
        self.optimizer.load_state_dict({"state": moments, "param_groups": groups})
        with torch.no_grad():
            for index, (parameter, master) in enumerate(zip(self.parameters, self.masters)):
                if master is not parameter:
                    master.copy_(tensors[f"master.{index}"])
        self.steps, self.trained_tokens = int(state["steps"]), int(state.get("trained_tokens", 0))
