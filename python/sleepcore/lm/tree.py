"""Token trees: several continuations of shared prefixes in one forward pass, each prefix computed once.

A tree is a list of :class:`Branch` es. Branch ``b`` continues its ``parent`` after the parent's
first ``fork`` tokens; the root has no parent. A branch's *context* is what its first token sees:

    context(root) = nothing,    context(b) = context(parent) + parent.tokens[:fork].

Token ``t`` of ``b`` attends to ``context(b)`` and to ``b.tokens[:t + 1]``, at position id
``len(context(b)) + t``. So every token sees exactly the tokens, at exactly the positions, of a
plain causal forward over its own path (root to branch), and its final hidden state is that
forward's (up to floating-point rounding: the attention sums over a different set of masked keys).
Knowledge Seeding uses this to run the distillation sequences and the LTI completions of their
prefixes as one student forward instead of one full sequence per completion.

Trees go one per row, right-padded; a padded position attends to itself only (never to nothing,
which would give NaN). The mask is ``[B, 1, L, L]`` (True: may attend), passed to the model as a
prepared 4D mask: boolean for SDPA, additive float otherwise; models with sliding-window layers
get ``{"full_attention": ..., "sliding_attention": ...}`` with the window applied on positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sleepcore.validation import integer


@dataclass(frozen=True)
class Branch:
    """Tokens that continue branch ``parent`` (an earlier index of the same tree; None: the root)
    after its first ``fork`` tokens (None: all of them)."""

    tokens: list[int]
    parent: int | None = None
    fork: int | None = None


@dataclass
class TreeBatch:
    """Trees laid out one per row. ``input_ids`` and ``position_ids`` ``[B, L]`` int64, ``allowed``
    ``[B, 1, L, L]`` bool; ``starts[r][b]`` is where branch ``b`` of tree ``r`` begins in its row."""

    trees: list[list[Branch]]
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    allowed: torch.Tensor
    starts: list[list[int]]

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]

    @property
    def tokens(self) -> int:
        """Tokens in the trees (padding excluded)."""
        return sum(len(branch.tokens) for tree in self.trees for branch in tree)

    def rows(self, tree: int, branch: int) -> list[int]:
        """Flat indices into ``[B * L]`` of the positions whose hidden states predict the tokens of
        ``branch`` (one per token, in order): the last token of its context for the first, then its
        own tokens. ValueError for a non-empty branch with an empty context (nothing predicts it)."""
        branches, offset = self.trees[tree], tree * self.width
        count = len(branches[branch].tokens)
        if count == 0:
            return []
        last = _last_context_token(branches, self.starts[tree], branch)
        if last is None:
            raise ValueError(f"branch {branch} of tree {tree} has an empty context: nothing predicts its first token")
        start = offset + self.starts[tree][branch]
        return [offset + last] + list(range(start, start + count - 1))


def _fork(branches: list[Branch], index: int) -> int:
    branch = branches[index]
    return len(branches[branch.parent].tokens) if branch.fork is None else branch.fork


def _last_context_token(branches: list[Branch], starts: list[int], index: int) -> int | None:
    """Row position of the last token of ``context(branches[index])``, or None when it is empty."""
    while branches[index].parent is not None:
        parent, fork = branches[index].parent, _fork(branches, index)
        if fork:
            return starts[parent] + fork - 1
        index = parent
    return None


def _check(tree: list[Branch], name: str) -> None:
    if not tree:
        raise ValueError(f"{name} must hold at least one branch")
    for index, branch in enumerate(tree):
        if branch.parent is None:
            continue
        integer(f"{name}[{index}].parent", branch.parent, minimum=0, maximum=index - 1)
        integer(f"{name}[{index}].fork", _fork(tree, index), minimum=0, maximum=len(tree[branch.parent].tokens))


def tree_batch(trees: list[list[Branch]], pad_id: int, device, *, width_multiple: int = 1) -> TreeBatch:
    """Lays out ``trees`` (each a list of branches, parents before children) as one padded batch,
    its width rounded up to a multiple of ``width_multiple`` (so that a training loop meets few
    distinct shapes). ValueError/TypeError for a parent that is not an earlier branch or a fork out
    of range."""
    for index, tree in enumerate(trees):
        _check(tree, f"trees[{index}]")
    starts = []
    for tree in trees:
        offsets = [0]
        for branch in tree:
            offsets.append(offsets[-1] + len(branch.tokens))
        starts.append(offsets)
    integer("width_multiple", width_multiple, minimum=1)
    width = -(-max(1, max(offsets[-1] for offsets in starts)) // width_multiple) * width_multiple
    ids = torch.full((len(trees), width), pad_id, dtype=torch.long)
    positions = torch.zeros(len(trees), width, dtype=torch.long)
    allowed = torch.zeros(len(trees), width, width, dtype=torch.bool)
    for row, (tree, offsets) in enumerate(zip(trees, starts)):
        contexts: list[list[tuple[int, int]]] = []  # per branch: (row start, length) spans it sees
        for index, branch in enumerate(tree):
            if branch.parent is None:
                spans = []
            else:
                spans = contexts[branch.parent] + [(offsets[branch.parent], _fork(tree, index))]
            contexts.append(spans)
            start, count = offsets[index], len(branch.tokens)
            if count == 0:
                continue
            ids[row, start:start + count] = torch.tensor(branch.tokens)
            positions[row, start:start + count] = torch.arange(count) + sum(length for _, length in spans)
            for span_start, length in spans:
                allowed[row, start:start + count, span_start:span_start + length] = True
            allowed[row, start:start + count, start:start + count] = torch.ones(count, count, dtype=torch.bool).tril()
        padding = torch.arange(offsets[-1], width)
        allowed[row, padding, padding] = True
    return TreeBatch(trees, ids.to(device), positions.to(device), allowed[:, None].to(device), [s[:-1] for s in starts])


def tree_attention_mask(model, batch: TreeBatch):
    """``batch.allowed`` in the form ``model``'s body takes as a prepared mask (see module doc)."""
    config = model.config

    def prepared(allowed: torch.Tensor) -> torch.Tensor:
        if config._attn_implementation == "sdpa":
            return allowed
        bias = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
        return bias.masked_fill_(~allowed, torch.finfo(torch.float32).min)

    full = prepared(batch.allowed)
    if "sliding_attention" not in (getattr(config, "layer_types", None) or ()):
        return full
    distance = batch.position_ids[:, None, :, None] - batch.position_ids[:, None, None, :]  # query - key
    window = batch.allowed & (distance < config.sliding_window)
    return {"full_attention": full, "sliding_attention": prepared(window)}
