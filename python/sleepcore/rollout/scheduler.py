"""Continuous batching under a token budget, with preemption by recompute.

Each step the scheduler fills one forward pass of at most ``max_batch_tokens`` tokens:

1. running sequences first, in admission order: a decoding sequence feeds back its last sampled
   token (one token; ``append_token`` gives its KV slot, copying on write if the block is
   shared); a sequence still prefilling gets its next chunk of prompt;
2. then waiting sequences (preempted ones at the front), each admitted when the pool has blocks
   for its tokens plus one per sample it will fork, and prefilled in chunks that fit the budget.

When a decoding sequence cannot get a block, the most recently admitted running sequence is
preempted: its blocks are freed and it goes back to the front of the queue. It resumes by
re-allocating its prompt plus its tokens so far, which usually hits its own still-cached blocks,
and recomputing the rest. Nothing it sampled is lost, and since each sample's random stream is
indexed by (seed, step), it draws the same tokens it would have drawn without the preemption.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sleepcore import validation
from sleepcore.rollout.block_manager import BlockManager
from sleepcore.rollout.sequence import Sequence, Status


@dataclass
class ScheduledChunk:
    """``num_tokens`` tokens of ``sequence`` from position ``start``, written to ``slots``; the
    chunk ends the sequence's prefill (or is a decode step) when ``samples`` is True."""

    sequence: Sequence
    start: int
    num_tokens: int
    slots: list[int]
    samples: bool


class Scheduler:
    """Owns the waiting queue and the running list; see the module docstring for the policy.

    Args:
        block_manager: the pool the sequences' KV lives in.
        max_batch_tokens: tokens per forward pass (>= 1).
        max_num_seqs: sequences per forward pass (>= 1).
    """

    def __init__(self, block_manager: BlockManager, max_batch_tokens: int, max_num_seqs: int):
        self.block_manager = validation.instance("block_manager", block_manager, BlockManager)
        self.max_batch_tokens = validation.integer("max_batch_tokens", max_batch_tokens, minimum=1)
        self.max_num_seqs = validation.integer("max_num_seqs", max_num_seqs, minimum=1)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, sequence: Sequence) -> None:
        """Queues a new sequence; ValueError if even alone it could not fit in the cache."""
        longest = len(sequence.token_ids) + sequence.max_tokens - 1  # the last token's KV is never written
        blocks = -(-longest // self.block_manager.block_size)
        if blocks > self.block_manager.num_blocks:
            raise ValueError(f"a prompt of {len(sequence.prompt_ids)} tokens plus max_tokens={sequence.max_tokens} "
                             f"needs {blocks} KV blocks but the cache holds {self.block_manager.num_blocks}: raise "
                             "kv_memory_bytes or lower max_tokens")
        self.waiting.append(sequence)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[ScheduledChunk]:
        """The chunks of the next forward pass (never empty while there is work)."""
        budget = self.max_batch_tokens
        chunks: list[ScheduledChunk] = []
        preemptions = self.num_preemptions
        for sequence in list(self.running):
            if budget == 0 or sequence.status is not Status.RUNNING:
                continue
            chunk = self._prefill_chunk(sequence, budget) if sequence.prefilling else self._decode_chunk(sequence)
            if chunk is not None:
                chunks.append(chunk)
                budget -= chunk.num_tokens
        admitting = self.num_preemptions == preemptions  # no admission in a step that had to preempt
        while admitting and budget > 0 and self.waiting and self._admit(self.waiting[0]):
            chunk = self._prefill_chunk(self.waiting.popleft(), budget)
            chunks.append(chunk)
            budget -= chunk.num_tokens
        if not chunks and self.has_work():
            raise RuntimeError("internal error: no sequence could be scheduled although each fits in the KV cache")
        return chunks

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """``child`` shares ``parent``'s blocks and computed KV (right after its prefill)."""
        self.block_manager.fork(parent.seq_id, child.seq_id)
        child.num_cached_ids = child.num_computed = parent.num_computed
        child.status = Status.RUNNING
        self.running.append(child)

    def finish(self, sequence: Sequence) -> None:
        self.block_manager.free(sequence.seq_id)
        self.running.remove(sequence)
        sequence.status = Status.FINISHED

    # ------------------------------------------------------------------ internals
    def _admit(self, sequence: Sequence) -> bool:
        running = len(self.running)
        if running and running + 1 + sequence.forks > self.max_num_seqs:
            return False
        tokens = sequence.token_ids
        reserve = (1 + sequence.forks) * self.block_manager.block_size  # the first append of each sample
        if not self.block_manager.can_allocate(len(tokens) + reserve if running else len(tokens)):
            return False
        sequence.num_computed = self.block_manager.allocate(sequence.seq_id, tokens)
        sequence.num_cached_ids = len(tokens)
        sequence.status = Status.RUNNING
        self.running.append(sequence)
        return True

    def _prefill_chunk(self, sequence: Sequence, budget: int) -> ScheduledChunk:
        start = sequence.num_computed
        count = min(sequence.num_cached_ids - start, budget)
        slots = self.block_manager.slot_mapping(sequence.seq_id, start, start + count)
        return ScheduledChunk(sequence, start, count, slots, start + count == sequence.num_cached_ids)

    def _decode_chunk(self, sequence: Sequence) -> ScheduledChunk | None:
        while not self.block_manager.can_append(sequence.seq_id):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is sequence:
                return None
        slot = self.block_manager.append_token(sequence.seq_id, sequence.output_ids[-1])
        sequence.num_cached_ids += 1
        return ScheduledChunk(sequence, sequence.num_computed, 1, [slot], True)

    def _preempt(self, sequence: Sequence) -> None:
        self.block_manager.free(sequence.seq_id)
        self.running.remove(sequence)
        sequence.status = Status.WAITING
        sequence.num_cached_ids = sequence.num_computed = 0
        self.waiting.appendleft(sequence)
        self.num_preemptions += 1

    def take_copies(self) -> list[tuple[int, int]]:
        return self.block_manager.take_copies()
