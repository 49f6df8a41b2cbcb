"""One rank of the 2-rank gloo DDP check (``torchrun --standalone --nproc-per-node 2 <this> <dir>``).

Each rank takes a step of sleepcore's GKD and GRPO losses through the DDP-wrapped model on its own
batch. The gradient must be the mean of the single-process gradients of every rank's batch (DDP
all-reduced it), and calling the loss on the unwrapped module instead must leave each rank with
its own gradient (the bug this guards against: the loss run outside the wrapper's forward).
Exits non-zero, with the failing rank's traceback, on a mismatch.
"""

import copy
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[1])]

import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from sleepcore.distributed import world  # noqa: E402

from _tolerance import assert_close_fp32  # noqa: E402
from _trl_setup import gkd_inputs, gkd_trainers, gradients, grpo_inputs, grpo_trainers, models  # noqa: E402


def step(loss_of, model, inputs):
    model.zero_grad(set_to_none=True)
    loss_of(model, inputs).backward()


def check_all_reduced(trainer, batches, loss_of):
    """DDP step on this rank's batch vs the mean of single-process steps on every batch."""
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    single = copy.deepcopy(trainer.model)
    expected = {}
    for batch in batches:
        step(loss_of, single, batch)
        for name, grad in gradients(single).items():
            expected[name] = expected.get(name, 0) + grad / world
    wrapped = trainer.accelerator.prepare_model(trainer.model)
    assert isinstance(wrapped, DistributedDataParallel), type(wrapped)
    step(loss_of, wrapped, batches[rank])
    for name, grad in gradients(trainer.model).items():
        assert_close_fp32(grad, expected[name], f"rank {rank} DDP grad {name}", accumulated=True)
    step(loss_of, wrapped.module, batches[rank])  # outside the wrapper: nothing is all-reduced
    local = gradients(trainer.model)
    assert any(not torch.allclose(local[name], expected[name], atol=1e-6) for name in local), \
        "the unwrapped step matched the all-reduced gradient: the check cannot tell the two apart"


def main(out_dir):
    student, teacher, tokenizer = models()
    _, gkd = gkd_trainers(student, teacher, tokenizer, out_dir, beta=0.5)
    world = gkd.accelerator.num_processes
    assert world == 2, f"expected 2 ranks, got {world}"
    check_all_reduced(gkd, [gkd_inputs(student.config.vocab_size, seed=10 + r) for r in range(world)],
                      lambda model, batch: gkd.compute_loss(model, dict(batch)))

    reference, grpo = grpo_trainers(student, tokenizer, out_dir, loss_type="dapo")
    grpo.model.train()
    grpo.current_gradient_accumulation_steps = 1
    batches = [grpo_inputs(reference, seed=20 + r) for r in range(world)]
    total = sum(batch["completion_mask"].sum() for batch in batches)  # TRL gathers the count over ranks
    for batch in batches:
        batch["num_items_in_batch"] = total
    check_all_reduced(grpo, batches, lambda model, batch: grpo._compute_loss(model, dict(batch)))
    print(f"rank {gkd.accelerator.process_index}: gradients all-reduced (GKD, GRPO dapo)")


if __name__ == "__main__":
    with world.process_group():  # a barrier, then the group destroyed: no rank tears gloo down early
        main(sys.argv[1])
