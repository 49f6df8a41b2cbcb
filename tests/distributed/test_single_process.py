"""``sleepcore.distributed`` in a single process: the stages get a LocalRuntime, the object
collectives are identities, blocks of a list concatenate back to it on any world size, and the
checkpoint reader reads both layouts and refuses anything else by name."""

from __future__ import annotations

import pytest
import torch

from sleepcore.distributed import DistributedRuntime, training_runtime, world
from sleepcore.distributed.checkpoint import load_checkpoint, save_checkpoint
from sleepcore.train import LocalRuntime


def test_a_single_process_trains_with_a_local_runtime():
    weight = torch.nn.Parameter(torch.zeros(3))
    runtime = training_runtime(None, [weight])
    assert type(runtime) is LocalRuntime
    assert runtime.local_batch([1, 2, 3]) == [1, 2, 3] and runtime.gather([4]) == [4] and runtime.token_count(7) == 7


def test_the_distributed_runtime_needs_a_process_group():
    with pytest.raises(RuntimeError, match="torchrun"):
        DistributedRuntime(None, [torch.nn.Parameter(torch.zeros(3))])


def test_collectives_are_identities_in_one_process():
    assert not world.active() and world.rank() == 0 and world.world_size() == 1 and world.is_main()
    assert world.block([1, 2, 3]) == [1, 2, 3] and world.gather([1, 2]) == [1, 2]
    assert world.all_sum([1, 2.5]) == [1.0, 2.5] and world.all_gather_objects("x") == ["x"]


@pytest.mark.parametrize("ranks", [2, 3, 8])
@pytest.mark.parametrize("size", [0, 1, 5, 16])
def test_blocks_are_contiguous_and_concatenate_to_the_list(monkeypatch, ranks, size):
    items, blocks = list(range(size)), []
    monkeypatch.setattr(world, "world_size", lambda: ranks)
    for rank in range(ranks):
        monkeypatch.setattr(world, "rank", lambda: rank)
        blocks.append(world.block(items))
    assert [item for block in blocks for item in block] == items
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_a_local_checkpoint_loads_through_the_distributed_reader(tmp_path):
    directory = save_checkpoint(tmp_path, 3, tensors={"a": torch.arange(4.0)}, state={"x": 1})
    tensors, state = load_checkpoint(directory)
    assert torch.equal(tensors["a"], torch.arange(4.0)) and state == {"step": 3, "x": 1}


def test_a_folder_that_is_no_checkpoint_is_refused(tmp_path):
    (tmp_path / "state.json").write_text("{}")
    with pytest.raises(ValueError, match="tensors"):
        load_checkpoint(tmp_path)
