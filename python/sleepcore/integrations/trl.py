"""Drop-in sleepcore losses for TRL 1.16's trainers (``pip install "sleepcore[trl]"``).

``SleepcoreGKDTrainer`` and ``SleepcoreGRPOTrainer`` are TRL's ``GKDTrainer`` and ``GRPOTrainer``
with the loss computed by sleepcore's fused ops straight from the final hidden states and the
``lm_head`` weight, so the ``[B, T, V]`` logits are never materialised:

* GKD: :func:`sleepcore.ops.fused_linear_jsd` on the completion tokens, TRL's
  ``generalized_jsd_loss`` semantics (``beta``; ``num_items_in_batch``). As in TRL's
  ``GKDTrainer.compute_loss``, the loss uses temperature 1: ``temperature`` and ``lmbda`` drive
  generation, which stays TRL's own (``training_step``);
* GRPO: :func:`sleepcore.ops.fused_linear_policy_loss` (or, when TRL skips the old log-probs,
  :func:`sleepcore.ops.fused_linear_logprobs` and :func:`sleepcore.ops.policy_loss`) with TRL's
  ``loss_type`` (``grpo``, ``dr_grpo``, ``dapo``, ``bnpo``, ``cispo``), ``epsilon``,
  ``epsilon_high``, ``importance_sampling_level="sequence"`` (GSPO), ``beta`` (k3 KL), the vLLM
  importance-sampling ratio and TRL's normalisers. The old and reference log-probs come from
  ``fused_linear_logprobs`` too, so both sides of the ratio use one kernel.

They plug in at TRL's documented points (``GKDTrainer.compute_loss``, ``GRPOTrainer._compute_loss``
and its log-prob helper), and the mixins can be combined with a user's own subclass. The loss runs
inside the wrapped model's forward (TRL's ``_ForwardRedirection``), so the wrapper's hooks fire:

* DDP: ``prepare_for_backward``, then the gradient all-reduce (tested: 2 gloo ranks);
* FSDP2 (``fully_shard`` on the decoder layers, then the root; ``lm_head`` tied or not, in the
  root's group or sharded in a group of its own; the teacher sharded too): the root's forward
  all-gathers ``lm_head.weight``, so the fused op sees the whole weight, and its gradient is
  reduce-scattered back (tested: 2 gloo ranks, against one process on the global batch). An
  ``lm_head`` sharded apart is all-gathered by running the op inside its own forward (the effect
  of ``register_fsdp_forward_method``). Reaching the op elsewhere with the weight still an FSDP
  shard is an error naming the fix, never a wrong gradient. FSDP's ``MixedPrecisionPolicy``, and
  ``lm_head`` in a group with other modules (``fully_shard([norm, lm_head])``), are not tested;
* DeepSpeed: not tested.

The backbone runs under the accelerator's autocast; the fused op runs with autocast off, in the
``lm_head`` weight's dtype (fp32 master weights: an fp32 head, where TRL's kernels run under bf16
autocast), so under ``bf16=True`` the two agree only to bf16 precision.

Not supported, with an error at construction naming the option: GRPO ``loss_type`` sapo, luspo,
vespo; cispo with ``importance_sampling_level="sequence"`` or ``epsilon_high < 1``; ``delta``;
``beta != 0`` with ``use_bias_correction_kl=True`` (TRL's default: set it False for the plain k3
KL); ``top_entropy_quantile < 1``; ``off_policy_mask_threshold``; the entropy bonus; MoE
auxiliary losses; models that scale or soft-cap their logits. Vision inputs fall back to TRL's
own log-prob path for old/reference log-probs; the training loss needs text-only inputs.
"""

from __future__ import annotations

import torch
from trl import GRPOTrainer
from trl.experimental.gkd import GKDTrainer

from sleepcore import ops
from sleepcore.integrations.trl_heads import (autocast_off, causal_lm, check_logits_unscaled, gathered, lm_head_of,
                                              project, redirect)
from sleepcore.lm import final_hidden

GRPO_LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo")
def generalized_jsd_from_hidden(student_hidden, student_weight, teacher_hidden, teacher_weight, labels, *, beta,
                                num_items_in_batch=None, student_bias=None, teacher_bias=None):
    """TRL's ``generalized_jsd_loss(student_logits, teacher_logits, labels, beta=beta,
    num_items_in_batch=num_items_in_batch)`` without the logits: GKD's loss from hidden states.

    Args:
        student_hidden: ``[B, T, Hs]`` fp32/bf16/fp16, already shifted (row ``t`` predicts
            ``labels[:, t]``); gets a gradient. student_weight: ``[V, Hs]``, its dtype; student_bias: ``[V]``.
        teacher_hidden, teacher_weight, teacher_bias: ``[B, T, Ht]``, ``[V, Ht]``, ``[V]``; no gradient,
            cast to the student weight's dtype.
        labels: int ``[B, T]``; only tokens with ``labels != -100`` are projected (a host sync).
        beta: in [0, 1]; temperature 1, as in TRL's ``GKDTrainer.compute_loss``.
        num_items_in_batch: None (divide by the kept-token count), a number or a 1-element tensor.

    Returns:
        A float32 scalar: :func:`sleepcore.ops.fused_linear_jsd` run with autocast off.
    """
    keep = labels != -100
    dtype = student_weight.dtype
    teacher_bias = None if teacher_bias is None else teacher_bias.detach().to(dtype)
    with autocast_off(student_hidden):
        return ops.fused_linear_jsd(student_hidden[keep].to(dtype), student_weight,
                                    teacher_hidden.detach()[keep].to(dtype), teacher_weight.detach().to(dtype),
                                    beta=beta, num_items_in_batch=num_items_in_batch, student_bias=student_bias,
                                    teacher_bias=teacher_bias)


class _FusedHeadMixin:
    def _completion_hidden(self, model, input_ids, attention_mask, completion_length: int, dtype: torch.dtype):
        """Final hidden states ``[B, completion_length, H]`` predicting the last ``completion_length`` tokens."""
        with self.accelerator.autocast():
            hidden = final_hidden(causal_lm(model), input_ids, attention_mask)
        return hidden[:, -completion_length - 1:-1].to(dtype)


class SleepcoreGKDMixin(_FusedHeadMixin):
    """``GKDTrainer.compute_loss`` by :func:`sleepcore.ops.fused_linear_jsd` (put it before ``GKDTrainer``).

    The loss equals TRL's ``generalized_jsd_loss(student_logits, teacher_logits, labels,
    beta=self.beta, num_items_in_batch=num_items_in_batch)`` on the shifted logits: float32, the
    sum over tokens with ``labels != -100`` divided by their count or by ``num_items_in_batch``.
    Only those tokens are projected. Student and teacher may differ in width, not in vocabulary.
    ``return_outputs=True`` (evaluation with predictions) runs TRL's own loss: it needs the logits.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_logits_unscaled(self.model)
        check_logits_unscaled(self.accelerator.unwrap_model(self.teacher_model))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            return super().compute_loss(model, inputs, True, num_items_in_batch)
        student = self.accelerator.unwrap_model(model)
        return redirect(model, student, self._sleepcore_distillation_loss, student, inputs, num_items_in_batch)

    def _sleepcore_distillation_loss(self, student, inputs, num_items_in_batch):
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        width = input_ids.shape[1] - 1
        head = lm_head_of(student)
        student_hidden = self._completion_hidden(student, input_ids, attention_mask, width, head.weight.dtype)
        self.teacher_model.eval()
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        with torch.no_grad():
            teacher_hidden = redirect(self.teacher_model, teacher, self._completion_hidden, teacher, input_ids,
                                      attention_mask, width, head.weight.dtype)
            teacher_head = causal_lm(teacher).get_output_embeddings()
            teacher_weight = gathered(teacher_head.weight)
            teacher_bias = None if teacher_head.bias is None else gathered(teacher_head.bias)

        return project(head, student_hidden, lambda hidden, weight, bias: generalized_jsd_from_hidden(
            hidden, weight, teacher_hidden, teacher_weight, inputs["labels"][:, 1:], beta=self.beta,
            num_items_in_batch=num_items_in_batch, student_bias=bias, teacher_bias=teacher_bias))


class SleepcoreGRPOMixin(_FusedHeadMixin):
    """``GRPOTrainer._compute_loss`` by sleepcore's fused policy loss (put it before ``GRPOTrainer``).

    Per token ``rho = exp(logp - old_logp)`` (GSPO: the masked mean over the sequence), the
    clipped objective ``-min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A)`` (CISPO:
    ``-sg(min(rho, epsilon_high)) A logp``), times the vLLM importance-sampling ratio when TRL
    applies it, plus ``beta * k3(logp, ref_logp)``; aggregated as TRL's ``loss_type`` does
    (grpo: mean over sequences of the token mean; bnpo: token mean; dr_grpo: sum over
    ``B * max_completion_length``; dapo, cispo: sum over ``num_items_in_batch``), with TRL's
    gradient-accumulation and process-count scaling. Logs ``entropy`` and, for the clipped
    objectives, ``clip_ratio/region_mean`` (token means over all processes).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        args = self.args
        unsupported = [
            ("loss_type", self.loss_type not in GRPO_LOSS_TYPES),
            ("importance_sampling_level", args.importance_sampling_level == "sequence" and self.loss_type == "cispo"),
            ("delta", args.delta is not None),
            ("use_bias_correction_kl", args.beta != 0.0 and args.use_bias_correction_kl),
            ("top_entropy_quantile", args.top_entropy_quantile < 1.0),
            ("off_policy_mask_threshold", args.off_policy_mask_threshold is not None),
            ("entropy_coef", args.entropy_coef != 0.0),
            ("use_adaptive_entropy", args.use_adaptive_entropy),
            ("router_aux_loss_coef", self.aux_loss_enabled),
        ]
        for name, bad in unsupported:
            if bad:
                raise NotImplementedError(f"{name}={getattr(args, name)!r} is not supported by sleepcore's policy loss "
                                          f"(loss_type={self.loss_type!r}); see sleepcore.integrations.trl")
        if self.loss_type == "cispo" and self.epsilon_high < 1.0:
            raise ValueError(f"epsilon_high must be >= 1 with loss_type='cispo' (the ratio's upper bound, ScaleRL "
                             f"recommends 5.0), got {self.epsilon_high}")
        check_logits_unscaled(self.model)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **vision_inputs):
        """TRL's ``(logps [B, T], entropies [B, T] or None, None)`` by :func:`sleepcore.ops.fused_linear_logprobs`."""
        if compute_aux_loss or any(value is not None for value in vision_inputs.values()):
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size, compute_entropy, compute_aux_loss,
                                                              **vision_inputs)
        batch_size = batch_size or input_ids.shape[0]
        unwrapped = self.accelerator.unwrap_model(model)
        logps, entropies = [], []
        for start in range(0, input_ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            logp, entropy = redirect(model, unwrapped, self._sleepcore_logprobs, unwrapped, input_ids[rows],
                                     attention_mask[rows], logits_to_keep, compute_entropy)
            logps.append(logp)
            entropies.append(entropy)
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    def _sleepcore_logprobs(self, model, input_ids, attention_mask, logits_to_keep, with_entropy):
        head = lm_head_of(model)
        hidden = self._completion_hidden(model, input_ids, attention_mask, logits_to_keep, head.weight.dtype)
        completion = slice(input_ids.shape[1] - logits_to_keep, None)
        token_ids = input_ids[:, completion].masked_fill(attention_mask[:, completion] == 0, -100)
        return project(head, hidden, lambda hidden, weight, bias: ops.fused_linear_logprobs(
            hidden, weight, token_ids, temperature=self.temperature, bias=bias, return_entropy=with_entropy))

    def _compute_loss(self, model, inputs):
        mask = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            mask = mask & inputs["tool_mask"].bool()
        unwrapped = self.accelerator.unwrap_model(model)
        # inputs reach the loss by closure: a wrapper's forward casts float arguments (FSDP2's MixedPrecisionPolicy)
        loss, metrics = redirect(model, unwrapped, lambda: self._sleepcore_policy_loss(unwrapped, inputs, mask))
        mode = "train" if self.model.training else "eval"
        count = mask.sum().float()
        logged = {"entropy": "entropy", "clip_ratio/region_mean": "clip_frac"}
        if self.loss_type == "cispo":  # TRL's cispo_clip_ratio counts positive advantages only: not logged
            del logged["clip_ratio/region_mean"]
        for name, key in logged.items():
            totals = self.accelerator.reduce(torch.stack([metrics[key] * count, count]), reduction="sum")
            self._metrics[mode][name].append((totals[0] / totals[1].clamp(min=1.0)).item())
        return loss

    def _sleepcore_policy_loss(self, model, inputs, mask):
        completion_ids = inputs["completion_ids"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        head = lm_head_of(model)
        hidden = self._completion_hidden(model, input_ids, attention_mask, completion_ids.shape[1], head.weight.dtype)
        return project(head, hidden, lambda *head_inputs: self._sleepcore_head_loss(*head_inputs, inputs, mask))

    def _sleepcore_head_loss(self, hidden, weight, bias, inputs, mask):
        completion_ids = inputs["completion_ids"]
        old_logp, advantages = inputs.get("old_per_token_logps"), inputs["advantages"]
        if old_logp is None:  # TRL's old_logp = logp.detach(): the ratio is 1, its gradient is not
            logp, entropy = ops.fused_linear_logprobs(hidden, weight, completion_ids.masked_fill(~mask, -100),
                                                      temperature=self.temperature, bias=bias)
            return ops.policy_loss(logp, logp.detach(), advantages, mask, entropy=entropy.detach(),
                                   **self._sleepcore_policy_options(inputs, mask, logp.detach()))
        return ops.fused_linear_policy_loss(hidden, weight, completion_ids, old_logp, advantages, mask, bias=bias,
                                            temperature=self.temperature,
                                            **self._sleepcore_policy_options(inputs, mask, old_logp))

    def _sleepcore_policy_options(self, inputs, mask, old_logp):
        """The policy-loss options that reproduce TRL's ``_compute_loss`` for this batch."""
        options = dict(eps_low=self.epsilon_low, eps_high=self.epsilon_high, loss_type="grpo")
        if self.loss_type == "cispo":  # TRL clips the ratio at epsilon_high, sleepcore at 1 + eps_high
            options.update(loss_type="cispo", eps_high=self.epsilon_high - 1.0)
        elif self.importance_sampling_level == "sequence":
            options.update(loss_type="gspo")
        if self.beta != 0.0:
            options.update(kl_coef=self.beta, kl_estimator="k3", ref_logp=inputs["ref_per_token_logps"])
        if self.use_vllm and self.vllm_importance_sampling_correction:
            ratio = inputs["importance_sampling_ratio"].expand_as(old_logp)
            options.update(rollout_logp=old_logp - torch.log(ratio))  # weight exp(old - rollout) = ratio
        train = self.model.training
        accumulation = self.current_gradient_accumulation_steps if train else 1
        sequences = mask.shape[0] * accumulation
        if self.loss_type == "grpo":
            return dict(options, agg="seq-mean-token-mean", global_seqs=sequences)
        if self.loss_type == "bnpo":
            return dict(options, agg="token-mean", global_tokens=mask.sum().clamp(min=1).float() * accumulation)
        if self.loss_type == "dr_grpo":
            return dict(options, agg="seq-mean-token-sum-norm", global_seqs=sequences,
                        max_len=self.max_completion_length)
        tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
        if train:
            tokens = tokens * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        return dict(options, agg="token-mean", global_tokens=tokens)


class SleepcoreGKDTrainer(SleepcoreGKDMixin, GKDTrainer):
    """TRL's ``GKDTrainer`` with :class:`SleepcoreGKDMixin`'s fused loss; same arguments."""


class SleepcoreGRPOTrainer(SleepcoreGRPOMixin, GRPOTrainer):
    """TRL's ``GRPOTrainer`` with :class:`SleepcoreGRPOMixin`'s fused loss; same arguments."""
