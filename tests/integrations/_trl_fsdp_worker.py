"""One rank of the 2-rank gloo FSDP2 check (``torchrun --standalone --nproc-per-node 2 <this> <dir>``).

Each rank shards a copy of a tiny Llama with FSDP2 (``fully_shard`` on each decoder layer, then
on the root; in one layout ``lm_head`` gets a group of its own), runs sleepcore's GKD loss
(``SleepcoreGKDMixin.compute_loss``, the teacher sharded too) and GRPO loss
(``SleepcoreGRPOMixin._compute_loss``, dapo, with and without old log-probs; and the mixin's
no-grad log-prob helper) on its half of a global batch, and backpropagates. Each rank's loss is
its share of the global-batch loss times the world size, so FSDP's averaging reduce-scatter gives
the gradient of the single-process loss on the global batch: GRPO dapo by TRL's own division of
the gathered token count by ``num_processes``; GKD by ``num_items_in_batch`` = the global count
over the world size (what the ``loss *= num_processes`` of transformers' ``Trainer.compute_loss``
amounts to; ``GKDTrainer.compute_loss`` replaces that method without it, so TRL's loop, with
either loss, gives 1/world of that gradient). Checked on every rank, in fp32:

* the rank-averaged loss and the gathered (``full_tensor``) gradients equal a single-process run
  on the global batch, for every parameter (``lm_head`` trainable, tied or untied);
* each rank's gradient is not what its own batch alone gives (the reduction happened: the bug a
  TRL release shipped, a fused loss whose gradients were never all-reduced);
* the policy loss called outside the root's forward, where ``lm_head.weight`` is still a
  ``Shard(0)`` DTensor (which the ops would take as a vocabulary-parallel shard), raises a
  RuntimeError naming the fix rather than computing anything;
* ``ops.fused_linear_jsd`` given a weight DTensor placed ``(Replicate(),)`` either gives the plain
  weight's loss or raises a ValueError naming the argument (today the latter).

Prints one ``ok: ...`` line per check; exits non-zero, with the failing rank's traceback, on a mismatch.
"""

import copy
import sys
from pathlib import Path
from unittest.mock import PropertyMock, patch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402
from torch.distributed.tensor import DTensor, Replicate, distribute_tensor  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from _tolerance import assert_close_fp32  # noqa: E402
from _trl_setup import gkd_inputs, gkd_trainers, grpo_inputs, grpo_trainers, models  # noqa: E402
from sleepcore import ops  # noqa: E402
from sleepcore.distributed import world  # noqa: E402


def untied(model):
    """A model like ``model`` with its own ``lm_head`` weight."""
    torch.manual_seed(2)
    config = LlamaConfig(**{**model.config.to_dict(), "tie_word_embeddings": False})
    return LlamaForCausalLM(config).eval()


def sharded(model, mesh, head_apart=False):
    """A copy of ``model`` with ``fully_shard`` on each decoder layer (and ``lm_head`` alone), then the root."""
    model = copy.deepcopy(model)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    if head_apart:
        fully_shard(model.lm_head, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def full_gradients(model):
    """Every parameter's gradient as a plain tensor (FSDP's ``Shard(0)`` DTensors gathered)."""
    return {name: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad.clone()
            for name, p in model.named_parameters() if p.grad is not None}


def step(loss_of, model, batch, **options):
    model.zero_grad(set_to_none=True)
    model.train()
    loss = loss_of(model, batch, **options)
    loss.backward()
    return loss.detach(), full_gradients(model)


def concatenated(batches):
    return {key: torch.cat([b[key] for b in batches]) if batches[0][key].dim() else batches[0][key]
            for key in batches[0]}


def check(label, loss_of, model, distributed_model, batches, **global_options):
    """FSDP step on this rank's batch vs one process on all of them (and vs this rank's batch alone)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    with patch.object(Accelerator, "num_processes", new_callable=PropertyMock, return_value=1):
        expected_loss, expected = step(loss_of, copy.deepcopy(model), concatenated(batches), **global_options)
    _, alone = step(loss_of, copy.deepcopy(model), batches[rank])
    loss, actual = step(loss_of, distributed_model, batches[rank])
    dist.all_reduce(loss)
    assert_close_fp32(loss / world, expected_loss, f"rank {rank} {label}: loss")
    assert actual.keys() == expected.keys(), (label, actual.keys() ^ expected.keys())
    for name in expected:
        assert_close_fp32(actual[name], expected[name], f"rank {rank} {label}: grad {name}", accumulated=True)
    assert any(not torch.allclose(actual[name], alone[name], atol=1e-6) for name in actual), \
        f"{label}: the FSDP gradient is this rank's own: nothing was reduced"
    print(f"ok: rank {rank} {label}: loss and gathered gradients equal one process on the global batch")


def check_gkd(gkd, student, teacher, mesh, label, head_apart):
    world = dist.get_world_size()
    vocab = student.config.vocab_size
    batches = [gkd_inputs(vocab, seed=10 + r) for r in range(world)]
    tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)

    def loss_of(model, batch, tokens=tokens / world):
        return gkd.compute_loss(model, dict(batch), num_items_in_batch=tokens)

    gkd.teacher_model = sharded(teacher, mesh)
    check(f"GKD {label}", loss_of, student, sharded(student, mesh, head_apart), batches, tokens=tokens)
    gkd.teacher_model = teacher


def check_grpo(grpo, reference, policy, mesh, label, head_apart, old):
    world = dist.get_world_size()
    batches = [grpo_inputs(reference, seed=20 + r, old=old) for r in range(world)]
    total = sum(batch["completion_mask"].sum() for batch in batches)  # TRL gathers the count over ranks
    for batch in batches:
        batch["num_items_in_batch"] = total
    check(f"GRPO dapo {label}{'' if old else ' without old log-probs'}",
          lambda model, batch: grpo._compute_loss(model, dict(batch)), policy, sharded(policy, mesh, head_apart),
          batches)


def check_logprobs(grpo, reference, policy, mesh, head_apart):
    """The mixin's no-grad log-prob helper (old and reference log-probs) on a sharded model."""
    inputs = grpo_inputs(reference, seed=30 + dist.get_rank(), old=False)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        expected = grpo._get_per_token_logps_and_entropies(policy, ids, mask, 7, compute_entropy=True)
        actual = grpo._get_per_token_logps_and_entropies(sharded(policy, mesh, head_apart), ids, mask, 7,
                                                         compute_entropy=True)
    assert_close_fp32(actual[0], expected[0], "logps")
    assert_close_fp32(actual[1], expected[1], "entropies")


def check_sharded_weight_fails(grpo, policy, mesh):
    """The op called outside every FSDP forward sees a Shard(0) DTensor: a clear error, not a wrong answer."""
    model = sharded(policy, mesh)
    inputs = grpo_inputs(grpo, seed=40, old=True)
    try:
        grpo._sleepcore_policy_loss(model, inputs, inputs["completion_mask"].bool())
    except RuntimeError as error:
        assert "fully_shard" in str(error), error
        print(f"ok: rank {dist.get_rank()} sharded lm_head outside the FSDP forward: {error}")
    else:
        raise AssertionError("the policy loss ran on a sharded lm_head weight outside the FSDP forward")


def check_replicated_weight(mesh):
    """``ops.fused_linear_jsd`` on a weight DTensor placed (Replicate(),): it must work or fail clearly."""
    generator = torch.Generator().manual_seed(50)
    student_hidden, teacher_hidden = torch.randn(5, 8, generator=generator), torch.randn(5, 6, generator=generator)
    student_weight, teacher_weight = torch.randn(11, 8, generator=generator), torch.randn(11, 6, generator=generator)
    replicated = distribute_tensor(student_weight, mesh, [Replicate()])
    try:
        loss = ops.fused_linear_jsd(student_hidden, replicated, teacher_hidden, teacher_weight, beta=0.5)
    except ValueError as error:
        assert "student_weight" in str(error), error
        print(f"ok: rank {dist.get_rank()} Replicate() weight: {error}")
    else:
        expected = ops.fused_linear_jsd(student_hidden, student_weight, teacher_hidden, teacher_weight, beta=0.5)
        assert_close_fp32(loss, expected, "Replicate() weight: loss")
        print(f"ok: rank {dist.get_rank()} Replicate() weight: the loss of the plain weight")


def main(out_dir):
    student, teacher, tokenizer = models()
    _, gkd = gkd_trainers(student, teacher, tokenizer, out_dir, beta=0.5)
    reference, grpo = grpo_trainers(student, tokenizer, out_dir, loss_type="dapo")
    grpo.current_gradient_accumulation_steps = 1
    world = gkd.accelerator.num_processes
    assert world == 2, f"expected 2 ranks, got {world}"
    mesh = init_device_mesh("cpu", (world,))
    for label, policy, head_apart in [("tied", student, False), ("untied", untied(student), False),
                                      ("lm_head sharded apart", untied(student), True)]:
        check_gkd(gkd, policy, teacher, mesh, label, head_apart)
        for old in (True, False):
            check_grpo(grpo, reference, policy, mesh, label, head_apart, old)
        check_logprobs(grpo, reference, policy, mesh, head_apart)
    check_sharded_weight_fails(grpo, untied(student), mesh)
    check_replicated_weight(mesh)


if __name__ == "__main__":
    with world.process_group():  # a barrier, then the group destroyed: no rank tears gloo down early
        main(sys.argv[1])
