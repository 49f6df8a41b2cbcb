"""Paged-KV block manager: a thin, validating front end of the compiled ``_C.BlockManager``.

The KV cache is ``num_blocks`` blocks of ``block_size`` token slots; slot ``s`` is token offset
``s % block_size`` of block ``s // block_size`` (the flat ``slot_mapping`` layout of vLLM's
``reshape_and_cache`` and of a ``[num_blocks, block_size, H_kv, D]`` cache). A sequence owns a
block table (block ids, in order) and a token count; blocks are ref-counted and shared between
sequences by prefix caching and by :meth:`BlockManager.fork`.

Rules (the fixes for the bugs users found in nano-vllm's manager):

* **Only computed blocks are cached.** A block enters the prefix cache when it is full *and*
  :meth:`BlockManager.mark_computed` says its KV has been written. Two identical prompts allocated
  in the same batch therefore never hit each other's unwritten blocks.
* **A prefix hit always leaves a token to compute.** :meth:`BlockManager.allocate` looks up only
  the first ``(n - 1) // block_size`` full blocks, so ``cached <= n - 1``. When the prompt length is
  a multiple of ``block_size`` and every block is cached, the last block is *not* reused: it gets a
  fresh block and is recomputed (at most ``block_size`` extra prefill tokens, no copy needed).
* **Preemption is just** :meth:`free`: resuming calls :meth:`allocate` again with the prompt plus
  the tokens generated so far; the table is rebuilt from scratch.

Free-list order: a freed block holding a cached block goes to the tail and keeps its hash (a later
hit revives it); a freed uncached block goes to the head. Allocation pops the head, so empty
blocks are used first, then cached blocks least-recently-freed first (each such reuse counts as an
eviction). A sequence's blocks are released last-to-first, so a prompt's tail is evicted before its
head.

Copy-on-write: appending into a shared, partly filled block (after :meth:`fork`) moves the writer
to a fresh block and records a ``(src, dst)`` copy; the runner must apply :meth:`take_copies` in
order before the next forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable

from sleepcore import validation
from sleepcore._core import _C

__all__ = ["BlockManager"]


def _token_list(name: str, token_ids) -> list[int]:
    if hasattr(token_ids, "tolist"):  # torch tensor / numpy array
        token_ids = token_ids.tolist()
    if isinstance(token_ids, (str, bytes)) or not isinstance(token_ids, Iterable):
        raise TypeError(f"{name} must be a sequence of ints, got {type(token_ids).__name__}")
    tokens = list(token_ids)
    validation.non_empty(name, tokens)
    if not all(type(t) is int for t in tokens):  # the common case stays one pass
        tokens = [validation.integer(f"{name}[{i}]", t) for i, t in enumerate(tokens)]
    return tokens


class BlockManager:
    """Ref-counted KV blocks with an LRU free list, prefix caching and copy-on-write.

    Args:
        num_blocks: blocks in the KV cache (>= 1).
        block_size: token slots per block (>= 1; vLLM's default is 16, FA2's paged kernel needs a
            multiple of 256).
        enable_prefix_caching: share full, computed blocks between sequences with equal prefixes
            (hash-chained over the token ids, collisions ruled out by comparing the tokens).

    Sequence ids are any Python ints fitting in int64. A non-int argument raises ``TypeError``;
    unknown or duplicate ids and out-of-range positions raise ``ValueError``, both naming the
    argument; running out of blocks raises ``RuntimeError`` and changes nothing (check
    :meth:`can_allocate` / :meth:`can_append` first).
    """

    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True):
        num_blocks = validation.integer("num_blocks", num_blocks, minimum=1)
        block_size = validation.integer("block_size", block_size, minimum=1)
        self._core = _C.BlockManager(num_blocks, block_size,
                                     validation.boolean("enable_prefix_caching", enable_prefix_caching))

    # ---------------------------------------------------------------- allocation
    def can_allocate(self, num_tokens: int) -> bool:
        """Whether ``ceil(num_tokens / block_size)`` blocks are free (conservative: ignores hits)."""
        return self._core.can_allocate(validation.integer("num_tokens", num_tokens, minimum=0))

    def allocate(self, seq_id: int, token_ids) -> int:
        """Builds the block table of a new or resumed sequence holding ``token_ids`` (non-empty).

        Returns ``num_cached_tokens``: how many leading tokens already have KV through prefix hits
        (a multiple of ``block_size``, at most ``len(token_ids) - 1``). They count as computed; the
        caller computes positions ``[num_cached_tokens, len(token_ids))`` into
        ``slot_mapping(seq_id, num_cached_tokens, len(token_ids))``.
        """
        seq_id = validation.integer("seq_id", seq_id)
        return self._core.allocate(seq_id, _token_list("token_ids", token_ids))

    def can_append(self, seq_id: int) -> bool:
        """Whether :meth:`append_token` can get the (at most one) block it may need."""
        return self._core.can_append(validation.integer("seq_id", seq_id))

    def append_token(self, seq_id: int, token_id: int) -> int:
        """Appends one token; returns the slot its KV goes to (``block * block_size + offset``).

        Takes a new block when the last one is full; copies-on-write when the block to write is
        shared (a ``(src, dst)`` copy then waits in :meth:`take_copies`).
        """
        return self._core.append_token(validation.integer("seq_id", seq_id), validation.integer("token_id", token_id))

    def fork(self, parent_seq_id: int, child_seq_id: int) -> None:
        """The child shares all the parent's blocks, tokens and computed count (``n`` samples of a
        prompt). Fork after the parent's prefill so the child reuses its KV."""
        self._core.fork(validation.integer("parent_seq_id", parent_seq_id),
                        validation.integer("child_seq_id", child_seq_id))

    def free(self, seq_id: int) -> None:
        """Releases the sequence's blocks and forgets it (finished or preempted)."""
        self._core.free(validation.integer("seq_id", seq_id))

    def mark_computed(self, seq_id: int, num_tokens: int) -> None:
        """The first ``num_tokens`` tokens now have KV (monotone, ``<= num_tokens(seq_id)``);
        newly full blocks become prefix-cache entries."""
        self._core.mark_computed(validation.integer("seq_id", seq_id), validation.integer("num_tokens", num_tokens))

    def take_copies(self) -> list[tuple[int, int]]:
        """Pending copy-on-write ``(src_block, dst_block)`` copies, in order; clears them."""
        return self._core.take_copies()

    # ---------------------------------------------------------------- queries
    def __contains__(self, seq_id: int) -> bool:
        return self._core.has_sequence(validation.integer("seq_id", seq_id))

    def block_table(self, seq_id: int) -> list[int]:
        """Block ids of the sequence, ``ceil(num_tokens / block_size)`` of them."""
        return self._core.block_table(validation.integer("seq_id", seq_id))

    def token_ids(self, seq_id: int) -> list[int]:
        return self._core.token_ids(validation.integer("seq_id", seq_id))

    def num_tokens(self, seq_id: int) -> int:
        return self._core.num_tokens(validation.integer("seq_id", seq_id))

    def num_computed_tokens(self, seq_id: int) -> int:
        return self._core.num_computed_tokens(validation.integer("seq_id", seq_id))

    def slot_mapping(self, seq_id: int, start: int = 0, stop: int | None = None) -> list[int]:
        """KV slots of token positions ``[start, stop)`` (``stop`` defaults to the length)."""
        seq_id = validation.integer("seq_id", seq_id)
        stop = self._core.num_tokens(seq_id) if stop is None else validation.integer("stop", stop)
        return self._core.slot_mapping(seq_id, validation.integer("start", start), stop)

    def check_invariants(self) -> None:
        """Raises ``RuntimeError`` naming the first broken invariant (ref counts, free list, tables,
        hash table contents)."""
        self._core.check_invariants()

    @property
    def num_blocks(self) -> int:
        return self._core.num_blocks

    @property
    def block_size(self) -> int:
        return self._core.block_size

    @property
    def num_free_blocks(self) -> int:
        return self._core.num_free_blocks

    @property
    def stats(self) -> dict:
        """Block usage and counters: ``prefix_hits`` / ``prefix_queries`` count blocks (queries are
        the full blocks eligible for a hit), ``copies`` copy-on-write copies, ``evictions`` cached
        blocks reused for other data."""
        core = self._core
        queries = core.prefix_queries
        return {
            "num_blocks": core.num_blocks,
            "block_size": core.block_size,
            "num_free_blocks": core.num_free_blocks,
            "num_used_blocks": core.num_blocks - core.num_free_blocks,
            "num_cached_blocks": core.num_cached_blocks,
            "num_sequences": core.num_sequences,
            "prefix_hits": core.prefix_hits,
            "prefix_queries": queries,
            "prefix_hit_rate": core.prefix_hits / queries if queries else 0.0,
            "copies": core.copies,
            "evictions": core.evictions,
        }

    def __repr__(self) -> str:
        s = self.stats
        return (f"BlockManager(num_blocks={s['num_blocks']}, block_size={s['block_size']}, "
                f"free={s['num_free_blocks']}, sequences={s['num_sequences']})")
