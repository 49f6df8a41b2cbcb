"""Where :mod:`sleepcore.integrations.trl` finds the ``lm_head`` weight a fused loss takes: inside
TRL's wrapped model (PEFT adapters stay injected), whole under FSDP2 (the loss runs inside the
forward of the ``fully_shard`` group that holds the weight, by TRL's forward redirection), with
autocast off, and only for models whose logits are the plain ``lm_head`` projection.
"""

from __future__ import annotations

import torch
from accelerate.utils import is_peft_model
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from trl.models.utils import _ForwardRedirection

LOGIT_SCALING = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier",
                 "logits_scaling")
redirect = _ForwardRedirection()


def causal_lm(model):
    """The Hugging Face ``*ForCausalLM`` inside ``model`` (PEFT adapters stay injected)."""
    return model.get_base_model() if is_peft_model(model) else model


def lm_head_of(model):
    """The ``lm_head`` module of ``model``, whose weight a fused op can take where the loss runs.

    Under FSDP2 the weight is a ``Shard(0)`` DTensor outside the forward of its ``fully_shard``
    group, and sleepcore's ops would take such a weight as a vocabulary-parallel shard of the same
    tokens on every rank: a wrong answer for data parallelism. Inside the root's forward (where
    the mixins run the loss) it is whole, unless ``lm_head`` is sharded apart (see :func:`project`).
    Raises RuntimeError when it is a shard of an ancestor's group: the loss runs outside its forward.
    """
    head = causal_lm(model).get_output_embeddings()
    if isinstance(head.weight, DTensor) and not isinstance(head, FSDPModule) and any(
            isinstance(module, FSDPModule) for module in model.modules()):
        raise RuntimeError("lm_head.weight is an FSDP2 shard here: the fused loss must run inside the forward of the "
                           "fully_shard module that holds it (the root: call it through the wrapped model, as the "
                           "sleepcore TRL mixins do by forward redirection), or fully_shard lm_head on its own")
    return head


def project(head, hidden, loss):
    """``loss(hidden, weight, bias)`` with the whole ``lm_head`` weight and autocast off. A ``head``
    sharded by a ``fully_shard`` of its own is all-gathered only in its own forward, so ``loss``
    runs there (forward redirection, the effect of ``register_fsdp_forward_method``); FSDP
    reduce-scatters the weight's gradient once ``hidden``'s gradient is computed."""
    def run(hidden):
        with autocast_off(hidden):
            return loss(hidden, head.weight, head.bias)

    return redirect(head, head, run, hidden) if isinstance(head, FSDPModule) else run(hidden)


def gathered(tensor):
    """A plain tensor for a frozen side: a DTensor (an FSDP2 shard outside its forward) is gathered."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def autocast_off(tensor):
    """A context that turns autocast off: the fused ops take inputs already cast to one dtype."""
    return torch.autocast(tensor.device.type, enabled=False)


def check_logits_unscaled(model) -> None:
    config = causal_lm(model).config.get_text_config()
    for name in LOGIT_SCALING:
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise NotImplementedError(f"the model's config sets {name}={getattr(config, name)!r}: sleepcore's fused "
                                      "losses take plain lm_head logits; use TRL's own trainer for this model")
