"""``Engine``: batched sampling from a Hugging Face causal LM over a paged KV cache.

One ``generate`` call runs the loop schedule -> copy-on-write copies -> step hooks -> forward ->
sample -> record until every completion has finished. A request's ``n`` samples share its prompt's
KV: the first sample prefills, then ``n - 1`` siblings are forked off its blocks. Prompts equal
in whole blocks share KV through the prefix cache. The prefix cache lives for one ``generate``
call, since the weights may change between calls (training); the KV memory is kept.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence as SequenceABC

import torch
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from sleepcore import validation
from sleepcore.ops.sampling import sample_tokens
from sleepcore.rollout.block_manager import BlockManager
from sleepcore.rollout.kv_cache import PagedKVCache, default_kv_memory_bytes
from sleepcore.rollout.model_runner import ForwardBatch, ModelRunner, model_geometry
from sleepcore.rollout.params import CompletionOutput, RequestOutput, SamplingParams
from sleepcore.rollout.prompts import eos_token_ids, prompt_token_ids, request_params
from sleepcore.rollout.scheduler import Scheduler
from sleepcore.rollout.sequence import Sequence, request_seed

__all__ = ["Engine"]


def _model_placement(model, dtype, device) -> tuple[torch.dtype, torch.device]:
    parameter = next((p for p in model.parameters() if p.is_floating_point()), None)
    if parameter is None:
        raise ValueError("model has no floating-point parameters")
    if dtype is not None and dtype != parameter.dtype:
        raise ValueError(f"dtype={dtype} differs from the model's {parameter.dtype}; the engine uses the weights in "
                         f"place, so cast the model first (model.to({dtype}))")
    wanted = torch.device(device) if device is not None else parameter.device
    if wanted.type != parameter.device.type or wanted.index not in (None, parameter.device.index):
        raise ValueError(f"device={device} differs from the model's {parameter.device}; move the model first")
    return parameter.dtype, parameter.device


class Engine:
    """Paged-KV sampling engine.

    Args:
        model: a loaded ``transformers`` causal LM of the Llama, Qwen2, Qwen3 or Gemma-3 (text)
            family. Its weights are used in place, its MLPs and hooks run as usual.
        tokenizer: needed for string prompts and to decode ``CompletionOutput.text``.
        block_size: tokens per KV block (default 16).
        kv_memory_bytes: KV cache budget; default half the free GPU memory, or on CPU
            ``min(4 GiB, 20% of RAM)`` (pages become resident only as blocks are used).
        max_batch_tokens: tokens per forward pass (prefill chunks and decodes together).
        max_num_seqs: sequences per forward pass.
        enable_prefix_caching: share KV between prompts that agree on whole blocks.
        dtype, device: must match the model's (checked; the engine never copies weights).

    Raises ``ValueError``/``TypeError`` naming the argument.
    """

    def __init__(self, model, tokenizer=None, *, block_size: int = 16, kv_memory_bytes: int | None = None,
                 max_batch_tokens: int = 4096, max_num_seqs: int = 256, enable_prefix_caching: bool = True,
                 dtype=None, device=None):
        for name, value in (("block_size", block_size), ("max_batch_tokens", max_batch_tokens),
                            ("max_num_seqs", max_num_seqs)):
            validation.integer(name, value, minimum=1)
        validation.integer("kv_memory_bytes", kv_memory_bytes, minimum=1, optional=True)
        validation.boolean("enable_prefix_caching", enable_prefix_caching)
        if not hasattr(model, "config") or not hasattr(model, "base_model"):
            raise TypeError(f"model must be a transformers causal LM, got {type(model).__name__}")
        num_layers, num_kv_heads, head_dim = model_geometry(model)
        self.dtype, self.device = _model_placement(model, dtype, device)
        self.model = model
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.max_batch_tokens = max_batch_tokens
        self.max_num_seqs = max_num_seqs
        self.enable_prefix_caching = enable_prefix_caching
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.max_model_len = getattr(model.config, "max_position_embeddings", None) or 1 << 62
        self.eos_token_ids = eos_token_ids(model, tokenizer)
        budget = kv_memory_bytes if kv_memory_bytes is not None else default_kv_memory_bytes(self.device)
        self.kv_cache = PagedKVCache(num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim,
                                     block_size=block_size, kv_memory_bytes=budget, dtype=self.dtype,
                                     device=self.device)
        self.runner = ModelRunner(model, self.kv_cache, block_size)
        self._step_hooks: OrderedDict[int, Callable] = OrderedDict()  # weakref-able, for RemovableHandle
        self.stats: dict = {}

    def add_step_hook(self, hook: Callable[["Engine", ForwardBatch], None]) -> RemovableHandle:
        """Calls ``hook(engine, batch)`` before every forward pass (e.g. to re-draw dreaming's
        random-expert noise); returns a handle whose ``remove()`` unregisters it."""
        validation.instance("hook", hook, Callable, what="callable")
        handle = RemovableHandle(self._step_hooks)
        self._step_hooks[handle.id] = hook
        return handle

    def generate(self, prompts, params: SamplingParams | SequenceABC[SamplingParams] | None = None,
                 progress: bool = True, return_hidden: bool = False) -> list[RequestOutput]:
        """Samples completions of every prompt.

        Args:
            prompts: a list of strings (needs the tokenizer) or of token-id lists.
            params: one :class:`SamplingParams` for all prompts, or one per prompt
                (default ``SamplingParams()``).
            progress: show a progress bar of finished completions.
            return_hidden: also give each completion the final hidden states its tokens were
                sampled from (``CompletionOutput.hidden``, fp32 on the CPU).

        Returns:
            one :class:`RequestOutput` per prompt, in order. Fills ``self.stats`` with the run's
            counters (tokens, steps, preemptions, prefix hits, copies, tokens/s).
        """
        prompt_ids = prompt_token_ids(prompts, self.tokenizer, self.vocab_size, self.max_model_len)
        per_request = request_params(params, len(prompt_ids))
        block_manager = BlockManager(self.kv_cache.num_blocks, self.block_size, self.enable_prefix_caching)
        scheduler = Scheduler(block_manager, self.max_batch_tokens, self.max_num_seqs)
        sequences = self._make_sequences(prompt_ids, per_request, scheduler)
        total = sum(p.n for p in per_request)
        counters = {"steps": 0, "prompt_tokens_computed": 0, "generated_tokens": 0}
        started = time.perf_counter()
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), tqdm(total=total, desc="rollout", unit="seq", disable=not progress) as bar:
                while scheduler.has_work():
                    finished = self._step(scheduler, sequences, counters, return_hidden)
                    bar.update(finished)
                    bar.set_postfix(tok_s=f"{counters['generated_tokens'] / (time.perf_counter() - started):.0f}",
                                    refresh=False)
        finally:
            self.model.train(training)
        self._record_stats(counters, block_manager, scheduler, time.perf_counter() - started, prompt_ids, per_request)
        return self._outputs(prompts, prompt_ids, per_request, sequences, return_hidden)

    # ------------------------------------------------------------------ the loop
    def _make_sequences(self, prompt_ids, per_request, scheduler) -> list[Sequence]:
        sequences = []
        for index, (ids, params) in enumerate(zip(prompt_ids, per_request)):
            seed = params.seed if params.seed is not None else int(torch.randint(0, 1 << 62, ()))
            first = self._new_sequence(len(sequences), index, 0, ids, params, request_seed(seed, ids))
            first.forks = params.n - 1
            sequences.append(first)
            scheduler.add(first)
        return sequences

    def _new_sequence(self, seq_id, request_index, sample_index, ids, params, stream_key) -> Sequence:
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_token_ids)
        return Sequence(seq_id=seq_id, request_index=request_index, sample_index=sample_index, prompt_ids=list(ids),
                        params=params, request_seed=stream_key, stop_ids=frozenset(stop_ids),
                        max_tokens=min(params.max_tokens, self.max_model_len - len(ids)))

    def _step(self, scheduler: Scheduler, sequences: list[Sequence], counters: dict, return_hidden: bool) -> int:
        """One forward pass and its samples; returns how many sequences finished."""
        chunks = scheduler.schedule()
        self.runner.copy_blocks(scheduler.take_copies())
        tables = [scheduler.block_manager.block_table(chunk.sequence.seq_id) for chunk in chunks]
        batch = self.runner.build_batch(chunks, tables)
        for hook in list(self._step_hooks.values()):
            hook(self, batch)
        logits, hidden = self.runner.forward(batch)
        counters["steps"] += 1
        samplers: list[Sequence] = []   # the sequences that sample, in order
        rows: list[int] = []            # ... and the row of `logits` each one samples from
        logits_row = 0
        for chunk in chunks:
            sequence = chunk.sequence
            if not sequence.output_ids:
                counters["prompt_tokens_computed"] += chunk.num_tokens
            sequence.num_computed = chunk.start + chunk.num_tokens
            scheduler.block_manager.mark_computed(sequence.seq_id, sequence.num_computed)
            if chunk.samples:
                family = [sequence] + self._fork(sequence, scheduler, sequences)
                samplers += family
                rows += [logits_row] * len(family)
                logits_row += 1
        if return_hidden:
            for sequence, row in zip(samplers, hidden.float().cpu()[rows]):
                sequence.hidden.append(row)
        return self._sample(logits, rows, samplers, scheduler, counters)

    def _fork(self, parent: Sequence, scheduler: Scheduler, sequences: list[Sequence]) -> list[Sequence]:
        """Creates and forks the ``n - 1`` siblings of a request's first sample after its prefill."""
        children = []
        for sample_index in range(1, parent.forks + 1):
            child = self._new_sequence(len(sequences), parent.request_index, sample_index, parent.prompt_ids,
                                       parent.params, parent.request_seed)
            sequences.append(child)
            scheduler.fork(parent, child)
            children.append(child)
        parent.forks = 0
        return children

    def _sample(self, logits, rows: list[int], samplers: list[Sequence], scheduler: Scheduler, counters) -> int:
        if len(rows) != logits.shape[0] or rows != list(range(len(rows))):
            logits = logits.index_select(0, torch.tensor(rows, device=logits.device))
        params = [s.params for s in samplers]
        device = logits.device

        def column(values, dtype):
            return torch.tensor(values, dtype=dtype).to(device)

        token_ids, logprobs, truncated = sample_tokens(
            logits, temperature=column([p.temperature for p in params], torch.float64),
            top_k=column([p.top_k for p in params], torch.int64), top_p=column([p.top_p for p in params], torch.float32),
            min_p=column([p.min_p for p in params], torch.float32), seeds=column([s.seed for s in samplers], torch.int64),
            steps=column([len(s.output_ids) for s in samplers], torch.int64))
        values = torch.stack([token_ids.double(), logprobs.double(), truncated.double()]).tolist()
        finished = 0
        for sequence, token, logprob, truncated_logprob in zip(samplers, *values):
            sequence.record(int(token), logprob, truncated_logprob)
            counters["generated_tokens"] += 1
            if sequence.finish_reason is not None:
                scheduler.finish(sequence)
                finished += 1
        return finished

    # ------------------------------------------------------------------ results
    def _record_stats(self, counters, block_manager, scheduler, seconds, prompt_ids, per_request) -> None:
        prompt_tokens = sum(len(ids) * p.n for ids, p in zip(prompt_ids, per_request))
        blocks = block_manager.stats
        self.stats = {
            **counters,
            "seconds": seconds,
            "generated_tokens_per_s": counters["generated_tokens"] / seconds if seconds > 0 else 0.0,
            "prompt_tokens": prompt_tokens,
            "prompt_token_reuse": 1.0 - counters["prompt_tokens_computed"] / prompt_tokens,
            "preemptions": scheduler.num_preemptions,
            **{key: blocks[key] for key in ("prefix_hits", "prefix_queries", "prefix_hit_rate", "copies",
                                            "evictions")},
            "kv_cache_blocks": self.kv_cache.num_blocks,
            "kv_cache_bytes": self.kv_cache.nbytes,
        }

    def _outputs(self, prompts, prompt_ids, per_request, sequences, return_hidden) -> list[RequestOutput]:
        outputs = [RequestOutput(index, ids, [None] * params.n, prompts[index] if isinstance(prompts[index], str)
                                 else None) for index, (ids, params) in enumerate(zip(prompt_ids, per_request))]
        for sequence in sequences:
            text = None
            if self.tokenizer is not None:
                text = self.tokenizer.decode(sequence.output_ids, skip_special_tokens=True)
            outputs[sequence.request_index].completions[sequence.sample_index] = CompletionOutput(
                sequence.sample_index, sequence.output_ids, sequence.logprobs, sequence.truncated_logprobs,
                sequence.finish_reason, text, torch.stack(sequence.hidden) if return_hidden else None)
        return outputs
