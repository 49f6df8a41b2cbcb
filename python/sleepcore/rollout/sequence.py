"""One completion being generated: its tokens, its log-probs and where it stands in the cache."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sleepcore.rollout.params import SamplingParams

_MASK64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    """splitmix64's finaliser."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def request_seed(seed: int, prompt_ids: list[int]) -> int:
    """The request's stream key: the user's seed mixed with the prompt's tokens, so one
    ``SamplingParams(seed=s)`` shared by many prompts still gives each prompt independent draws,
    while a given (prompt, seed) reproduces whatever else is in the batch."""
    z = _mix64((seed * 0x9E3779B97F4A7C15) & _MASK64)
    for token in prompt_ids:
        z = _mix64((z + token + 0x9E3779B97F4A7C15) & _MASK64)
    return z


def sample_seed(request_key: int, sample_index: int) -> int:
    """A 63-bit seed for sample ``sample_index`` of a request, so the samples of one request
    draw from unrelated streams."""
    return _mix64((request_key * 0x9E3779B97F4A7C15 + sample_index + 1) & _MASK64) >> 1


class Status(enum.Enum):
    WAITING = "waiting"      # not in the block manager: new, or preempted
    RUNNING = "running"      # holds blocks; prefilling (num_computed < num_cached_ids) or decoding
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """A prompt plus the tokens sampled so far.

    The block manager holds ``prompt_ids + output_ids[:-1]`` while decoding: the last sampled
    token gets its KV slot when the scheduler feeds it back (``append_token``). After a
    preemption the whole ``token_ids`` is re-allocated and recomputed (its last token's logits
    give the next sample). ``forks`` is how many sibling samples to fork off when this sequence's
    prefill completes (``n - 1`` for a request's first sample, else 0).
    """

    seq_id: int
    request_index: int
    sample_index: int
    prompt_ids: list[int]
    params: SamplingParams
    request_seed: int  # see request_seed()
    stop_ids: frozenset[int]
    max_tokens: int
    forks: int = 0
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    truncated_logprobs: list[float] = field(default_factory=list)
    hidden: list = field(default_factory=list)  # one [H] row per output token (return_hidden only)
    status: Status = Status.WAITING
    finish_reason: str | None = None
    num_cached_ids: int = 0  # tokens the block manager holds for this sequence
    num_computed: int = 0    # of those, tokens whose KV is written

    @property
    def seed(self) -> int:
        """The sampler's seed for this sample: ``sample_seed(request_seed, sample_index)``."""
        return sample_seed(self.request_seed, self.sample_index)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def prefilling(self) -> bool:
        return self.num_computed < self.num_cached_ids

    def record(self, token_id: int, logprob: float, truncated_logprob: float) -> None:
        """Appends a sampled token and finishes the sequence on a stop id or at ``max_tokens``."""
        self.output_ids.append(token_id)
        self.logprobs.append(logprob)
        self.truncated_logprobs.append(truncated_logprob)
        if token_id in self.stop_ids:
            self.finish_reason = "stop"
        elif len(self.output_ids) >= self.max_tokens:
            self.finish_reason = "length"
