"""Block manager: invariants, copy-on-write, prefix hits on computed blocks only, the full-hit rule,
preemption, LRU eviction, counters and argument checks.

A simulated KV store checks correctness end to end: slot ``s`` holds the *prefix* the KV at that
slot was computed from (KV at position p depends on tokens[:p+1]), so a wrong prefix hit, a stale
block or a corrupted shared block reads back as the wrong prefix.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from sleepcore import _C
from sleepcore.rollout import BlockManager


class Simulation:
    """Drives a BlockManager like a model runner would, against a dict-backed KV store."""

    def __init__(self, manager: BlockManager):
        self.bm = manager
        self.bs = manager.block_size
        self.kv: dict[int, tuple] = {}
        self.tokens: dict[int, list[int]] = {}

    def allocate(self, seq_id, tokens):
        cached = self.bm.allocate(seq_id, tokens)
        self.tokens[seq_id] = list(tokens)
        assert cached % self.bs == 0 and 0 <= cached <= len(tokens) - 1
        assert self.bm.num_computed_tokens(seq_id) == cached
        self.verify_sequence(seq_id)  # cached positions must already hold this prefix's KV
        return cached

    def compute(self, seq_id, stop=None):
        """The forward pass: writes KV for positions [computed, stop) and marks them computed."""
        tokens = self.tokens[seq_id]
        stop = len(tokens) if stop is None else stop
        start = self.bm.num_computed_tokens(seq_id)
        for position, slot in zip(range(start, stop), self.bm.slot_mapping(seq_id, start, stop)):
            self.kv[slot] = tuple(tokens[: position + 1])
        self.bm.mark_computed(seq_id, stop)

    def append(self, seq_id, token):
        slot = self.bm.append_token(seq_id, token)
        self.apply_copies()
        self.tokens[seq_id].append(token)
        assert self.bm.slot_mapping(seq_id, len(self.tokens[seq_id]) - 1) == [slot]
        return slot

    def apply_copies(self):
        for src, dst in self.bm.take_copies():
            for offset in range(self.bs):
                s, d = src * self.bs + offset, dst * self.bs + offset
                if s in self.kv:
                    self.kv[d] = self.kv[s]
                else:
                    self.kv.pop(d, None)

    def fork(self, parent, child):
        self.bm.fork(parent, child)
        self.tokens[child] = list(self.tokens[parent])

    def free(self, seq_id):
        self.bm.free(seq_id)
        del self.tokens[seq_id]

    def verify_sequence(self, seq_id):
        tokens = self.tokens[seq_id]
        assert self.bm.token_ids(seq_id) == tokens
        computed = self.bm.num_computed_tokens(seq_id)
        for position, slot in enumerate(self.bm.slot_mapping(seq_id, 0, computed)):
            assert self.kv.get(slot) == tuple(tokens[: position + 1]), (seq_id, position, slot)

    def verify(self):
        self.bm.check_invariants()
        for seq_id in self.tokens:
            self.verify_sequence(seq_id)
        stats = self.bm.stats
        assert stats["num_free_blocks"] + stats["num_used_blocks"] == stats["num_blocks"]
        assert stats["num_sequences"] == len(self.tokens)


# ------------------------------------------------------------------ random operation sequences
@pytest.mark.parametrize("block_size", [1, 2, 4])
@pytest.mark.parametrize("seed", range(4))
def test_random_operations_keep_invariants(block_size, seed):
    rng = random.Random(seed * 131 + block_size)
    sim = Simulation(BlockManager(num_blocks=40 // block_size + 8, block_size=block_size))
    bases = [[rng.randrange(5) for _ in range(12)] for _ in range(3)]
    next_id = 0
    for _ in range(500):
        live = list(sim.tokens)
        op = rng.choice(["new", "new", "append", "append", "append", "fork", "free", "preempt", "compute"])
        if op == "new" or not live:
            prompt = rng.choice(bases)[: rng.randrange(1, 13)] + [rng.randrange(5) for _ in range(rng.randrange(3))]
            free_before = sim.bm.num_free_blocks
            try:
                sim.allocate(next_id, prompt)
            except RuntimeError:
                assert not sim.bm.can_allocate(len(prompt))
                assert sim.bm.num_free_blocks == free_before and next_id not in sim.bm
            next_id += 1
        elif op == "append":
            seq_id = rng.choice(live)
            if sim.bm.can_append(seq_id):
                sim.append(seq_id, rng.randrange(5))
            else:
                with pytest.raises(RuntimeError):
                    sim.bm.append_token(seq_id, 0)
        elif op == "fork":
            sim.fork(rng.choice(live), next_id)
            next_id += 1
        elif op == "free":
            sim.free(rng.choice(live))
        elif op == "preempt":  # free, then resume with prompt + generated tokens
            seq_id = rng.choice(live)
            tokens = sim.tokens[seq_id]
            sim.free(seq_id)
            if sim.bm.can_allocate(len(tokens)):
                sim.allocate(seq_id, tokens)
        else:
            seq_id = rng.choice(live)
            start, total = sim.bm.num_computed_tokens(seq_id), len(sim.tokens[seq_id])
            sim.compute(seq_id, rng.randint(start, total))
        sim.verify()
    stats = sim.bm.stats
    assert stats["prefix_hits"] > 0  # the loop did exercise sharing
    assert stats["copies"] > 0 or block_size == 1  # one-token blocks are always full: never copied
    for seq_id in list(sim.tokens):
        sim.free(seq_id)
    sim.verify()
    assert sim.bm.num_free_blocks == sim.bm.num_blocks


# ------------------------------------------------------------------ copy-on-write
def test_copy_on_write_never_alters_a_shared_block():
    sim = Simulation(BlockManager(32, block_size=4))
    sim.allocate(1, [7, 8, 9, 10, 11, 12])
    sim.compute(1)
    for child in (2, 3):
        sim.fork(1, child)
    assert sim.bm.block_table(2) == sim.bm.block_table(1) == sim.bm.block_table(3)
    shared_last = sim.bm.block_table(1)[1]
    sim.append(1, 100)  # ref 3 -> copy
    sim.append(2, 200)  # ref 2 -> copy
    sim.append(3, 300)  # ref 1 -> written in place
    assert sim.bm.stats["copies"] == 2
    assert sim.bm.block_table(3)[1] == shared_last
    assert len({sim.bm.block_table(s)[1] for s in (1, 2, 3)}) == 3
    assert len({sim.bm.block_table(s)[0] for s in (1, 2, 3)}) == 1  # full block still shared
    for step in range(7):  # grow across block boundaries; compute between steps
        for seq_id in (1, 2, 3):
            sim.compute(seq_id)
            sim.append(seq_id, seq_id * 1000 + step)
        sim.verify()
    sim.free(1)
    sim.verify()


def test_fork_of_a_forked_child_chains_copies_in_order():
    sim = Simulation(BlockManager(16, block_size=4))
    sim.allocate(1, [1, 2])
    sim.compute(1)
    shared = sim.bm.block_table(1)[0]
    sim.fork(1, 2)
    sim.bm.append_token(2, 5)  # 2 moves to a copy of the shared partial block (pending)
    sim.tokens[2].append(5)
    first_copy = sim.bm.block_table(2)[0]
    sim.fork(2, 3)
    sim.bm.append_token(3, 6)  # copies 2's copy, which is itself still pending
    sim.tokens[3].append(6)
    second_copy = sim.bm.block_table(3)[0]
    pending = sim.bm.take_copies()
    assert pending == [(shared, first_copy), (first_copy, second_copy)]
    assert sim.bm.take_copies() == []
    for src, dst in pending:  # applied in order, as the runner does
        for offset in range(4):
            if src * 4 + offset in sim.kv:
                sim.kv[dst * 4 + offset] = sim.kv[src * 4 + offset]
    sim.verify()
    for seq_id in (1, 2, 3):
        sim.compute(seq_id)
    sim.verify()


# ------------------------------------------------------------------ prefix hits only on computed blocks
def test_identical_prompts_in_one_batch_do_not_hit_unwritten_blocks():
    sim = Simulation(BlockManager(16, block_size=4))
    prompt = list(range(10))
    assert sim.allocate(1, prompt) == 0
    assert sim.allocate(2, prompt) == 0  # seq 1's blocks have no KV yet
    assert not set(sim.bm.block_table(1)) & set(sim.bm.block_table(2))
    sim.compute(1, 5)  # only block 0 is full and computed
    assert sim.bm.stats["num_cached_blocks"] == 1
    assert sim.allocate(3, prompt) == 4
    sim.compute(1)
    sim.compute(2)  # same content as seq 1: registered once only
    sim.compute(3)
    assert sim.bm.stats["num_cached_blocks"] == 2
    assert sim.allocate(4, prompt) == 8
    assert sim.bm.block_table(4)[:2] == sim.bm.block_table(1)[:2]
    sim.verify()


def test_partial_block_is_never_a_hit():
    sim = Simulation(BlockManager(8, block_size=4))
    sim.allocate(1, [1, 2, 3])
    sim.compute(1)
    assert sim.bm.stats["num_cached_blocks"] == 0
    assert sim.allocate(2, [1, 2, 3, 4, 5]) == 0


# ------------------------------------------------------------------ full-prefix hit
@pytest.mark.parametrize("block_size", [1, 4])
def test_full_prefix_hit_still_computes_the_last_token(block_size):
    sim = Simulation(BlockManager(32, block_size=block_size))
    prompt = list(range(2 * 4))  # a multiple of every block size used
    sim.allocate(1, prompt)
    sim.compute(1)
    cached = sim.allocate(2, prompt)
    assert cached == len(prompt) - block_size  # last block recomputed into a fresh block
    assert cached <= len(prompt) - 1
    last = len(prompt) // block_size - 1
    assert sim.bm.block_table(2)[:last] == sim.bm.block_table(1)[:last]
    assert sim.bm.block_table(2)[last] != sim.bm.block_table(1)[last]
    assert not set(sim.bm.slot_mapping(2, cached, len(prompt))) & set(sim.bm.slot_mapping(1, 0, len(prompt)))
    sim.compute(2)
    sim.verify()
    assert sim.allocate(3, prompt + [99]) == len(prompt)  # one more token: every full block hits
    assert sim.allocate(4, prompt[:1]) == 0


# ------------------------------------------------------------------ preemption, LRU, counters
def test_preemption_then_resume_with_prefix_hits():
    sim = Simulation(BlockManager(8, block_size=4))
    sim.allocate(1, list(range(10)))
    sim.compute(1)
    for token in (50, 51, 52, 53):
        sim.append(1, token)
        sim.compute(1)
    tokens = list(sim.tokens[1])  # 14 tokens: 3 full computed blocks
    sim.free(1)  # preempted
    assert sim.bm.num_free_blocks == 8 and sim.bm.stats["num_cached_blocks"] == 3
    assert sim.allocate(1, tokens) == 12
    assert sim.bm.num_free_blocks == 4
    sim.compute(1)
    sim.append(1, 54)
    sim.verify()
    # Resume after part of the chain was evicted: hits stop at the first miss.
    sim.free(1)
    sim.allocate(2, [9] * 24)  # 6 blocks: 1 uncached empty, then the least recently freed cached
    sim.free(2)
    resumed = sim.allocate(1, tokens)
    assert resumed < 12 and resumed % 4 == 0
    sim.compute(1)
    sim.verify()


def test_lru_eviction_order_and_counters():
    bm = BlockManager(5, block_size=2)
    sim = Simulation(bm)
    sim.allocate(1, [1, 2, 3])  # blocks 0 (full), 1
    sim.allocate(2, [5, 6, 7])  # blocks 2 (full), 3
    sim.compute(1)
    sim.compute(2)
    sim.free(1)  # uncached block 1 -> head; cached block 0 -> tail
    sim.free(2)  # block 3 -> head; block 2 -> tail (most recently freed)
    assert bm.stats["evictions"] == 0 and bm.stats["num_cached_blocks"] == 2
    sim.allocate(3, [9, 9, 9, 9, 9, 9, 9, 9])  # 4 blocks: 3, 1, 4 are empty, then evicts 0 (LRU)
    assert sorted(bm.block_table(3)) == [0, 1, 3, 4]
    assert bm.stats["evictions"] == 1 and bm.stats["num_cached_blocks"] == 1
    sim.free(3)  # never computed: its blocks return uncached
    queries, hits = bm.stats["prefix_queries"], bm.stats["prefix_hits"]
    assert sim.allocate(4, [5, 6, 7]) == 2 and bm.block_table(4)[0] == 2  # revived from the free list
    assert sim.allocate(5, [1, 2, 3]) == 0  # evicted
    assert bm.stats["prefix_queries"] == queries + 2 and bm.stats["prefix_hits"] == hits + 1
    assert bm.stats["prefix_hit_rate"] == bm.stats["prefix_hits"] / bm.stats["prefix_queries"]
    sim.verify()


def test_a_sequences_tail_is_evicted_before_its_head():
    sim = Simulation(BlockManager(4, block_size=2))
    sim.allocate(1, [1, 2, 3, 4, 5, 6, 7])  # blocks 0, 1, 2 full, 3 partial
    sim.compute(1)
    sim.free(1)
    sim.allocate(2, [8, 8, 8])  # block 3 (empty), then evicts block 2, the prompt's tail
    sim.free(2)
    assert sim.allocate(3, [1, 2, 3, 4, 5, 6, 7]) == 4
    sim.verify()


def test_out_of_blocks_changes_nothing():
    sim = Simulation(BlockManager(3, block_size=2))
    sim.allocate(1, [1, 2, 3, 4, 5])
    assert not sim.bm.can_allocate(3) and sim.bm.can_allocate(0)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        sim.bm.allocate(2, [1, 2, 3])
    assert 2 not in sim.bm and sim.bm.num_free_blocks == 0
    sim.append(1, 6)  # fills the partial block: no new block needed
    assert not sim.bm.can_append(1)
    with pytest.raises(RuntimeError):
        sim.bm.append_token(1, 7)
    assert sim.bm.num_tokens(1) == 6
    sim.verify()


def test_prefix_caching_disabled_never_hits():
    sim = Simulation(BlockManager(16, block_size=2, enable_prefix_caching=False))
    sim.allocate(1, [1, 2, 3, 4, 5])
    sim.compute(1)
    assert sim.allocate(2, [1, 2, 3, 4, 5]) == 0
    assert sim.bm.stats["num_cached_blocks"] == 0 and sim.bm.stats["prefix_queries"] == 0
    sim.verify()


def test_tensor_tokens_and_hash_chaining():
    bm = BlockManager(8, block_size=2)
    assert bm.allocate(1, torch.tensor([3, 4, 5])) == 0
    assert bm.token_ids(1) == [3, 4, 5]
    h0 = _C.BlockManager.block_hash(_C.BlockManager.root_hash, [3, 4])
    assert h0 != _C.BlockManager.block_hash(_C.BlockManager.root_hash, [4, 3])
    assert _C.BlockManager.block_hash(h0, [5, 6]) != _C.BlockManager.block_hash(h0 + 1, [5, 6])


# ------------------------------------------------------------------ argument checks
def test_bad_arguments_raise_naming_the_argument():
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(0)
    with pytest.raises(ValueError, match="block_size"):
        BlockManager(4, block_size=0)
    with pytest.raises(ValueError, match="block_size"):
        BlockManager(4, block_size=-3)
    with pytest.raises(ValueError, match="block_size"):
        _C.BlockManager(4, 0)
    with pytest.raises(TypeError, match="enable_prefix_caching"):
        BlockManager(4, enable_prefix_caching="yes")
    with pytest.raises(TypeError, match="num_blocks"):
        BlockManager(4.0)
    bm = BlockManager(8, block_size=2)
    bm.allocate(1, [1, 2, 3])
    cases = [
        ("seq_id", lambda: bm.allocate(1, [1])),  # duplicate
        ("token_ids", lambda: bm.allocate(2, [])),
        ("seq_id", lambda: bm.free(99)),
        ("seq_id", lambda: bm.append_token(99, 1)),
        ("seq_id", lambda: bm.can_append(99)),
        ("seq_id", lambda: bm.block_table(99)),
        ("seq_id", lambda: bm.mark_computed(99, 0)),
        ("parent_seq_id", lambda: bm.fork(99, 5)),
        ("child_seq_id", lambda: bm.fork(1, 1)),
        ("num_tokens", lambda: bm.mark_computed(1, 4)),
        ("num_tokens", lambda: bm.can_allocate(-1)),
        ("start", lambda: bm.slot_mapping(1, 2, 1)),
        ("stop", lambda: bm.slot_mapping(1, 0, 4)),
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=name):
            call()
    wrong_types = [
        ("token_ids", lambda: bm.allocate(2, "abc")),
        ("token_ids", lambda: bm.allocate(2, 7)),
        (r"token_ids\[1\]", lambda: bm.allocate(2, [1, 2.5])),
        ("seq_id", lambda: bm.allocate(1.0, [1])),
        ("seq_id", lambda: bm.allocate(True, [1])),
        ("token_id", lambda: bm.append_token(1, None)),
        ("num_tokens", lambda: bm.can_allocate(1.5)),
    ]
    for name, call in wrong_types:
        with pytest.raises(TypeError, match=f"^{name}"):
            call()
    assert bm.allocate(2, [np.int64(4), np.int64(5)]) == 0 and bm.token_ids(2) == [4, 5]
    bm.free(2)
    bm.mark_computed(1, 2)
    with pytest.raises(ValueError, match="num_tokens"):
        bm.mark_computed(1, 1)  # computed counts only grow
    bm.check_invariants()
    assert 1 in bm and 2 not in bm and "free=" in repr(bm)
