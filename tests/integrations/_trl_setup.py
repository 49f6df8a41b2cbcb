"""Tiny TRL trainers and hand-built trainer inputs, shared by the TRL tests and their DDP worker.

Running a whole TRL loop needs a dataset and generation, so the tests build each trainer's inputs
directly (what ``GKDTrainer``'s collator and ``GRPOTrainer._generate_and_score_completions``
would produce) and call one training step or ``_compute_loss`` on them.
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.experimental.gkd import GKDConfig, GKDTrainer  # noqa: E402

from sleepcore.integrations.trl import SleepcoreGKDTrainer, SleepcoreGRPOTrainer  # noqa: E402
from sleepcore.models import tiny_model  # noqa: E402

CORPUS = ["the cat sat on the mat", "a dog ran in the park", "hello world, said the fox"] * 4


def models():
    """``(student, teacher, tokenizer)``: a tied-embedding Llama (H=64) and a wider, untied teacher (H=96)."""
    student, tokenizer = tiny_model(CORPUS, vocab_size=300)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    torch.manual_seed(1)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=student.config.vocab_size, hidden_size=96,
                                           intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=2, tie_word_embeddings=False)).eval()
    return student, teacher, tokenizer


def _common(tmp_dir):
    # fp32 throughout: TRL 1.16 configs default to bf16 autocast, which TRL applies at different places
    return dict(output_dir=str(tmp_dir), report_to=[], use_cpu=True, bf16=False, save_strategy="no",
                logging_strategy="no")


def gkd_trainers(student, teacher, tokenizer, tmp_dir, **config):
    """TRL's ``GKDTrainer`` and ``SleepcoreGKDTrainer`` on two copies of ``student`` (lmbda=0: no generation)."""
    args = dict(_common(tmp_dir), per_device_train_batch_size=2, lmbda=0.0, **config)
    dataset = Dataset.from_dict({"messages": [[{"role": "user", "content": "hi"}]] * 2})
    made = [cls(model=copy.deepcopy(student), teacher_model=teacher, args=GKDConfig(**args), train_dataset=dataset,
                processing_class=tokenizer) for cls in (GKDTrainer, SleepcoreGKDTrainer)]
    for trainer in made:
        trainer.current_gradient_accumulation_steps = 1
    return made


def gkd_inputs(vocab, seed, batch=3, width=12):
    """Collator-style ``input_ids``, ``attention_mask`` (right padding) and ``labels`` (-100 on prompts and pads)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (batch, width), generator=generator)
    attention_mask = torch.ones(batch, width, dtype=torch.long)
    attention_mask[0, -3:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :4] = -100
    labels[1, :7] = -100
    return dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels)


def grpo_trainers(policy, tokenizer, tmp_dir, peft_config=None, **config):
    """TRL's ``GRPOTrainer`` and ``SleepcoreGRPOTrainer`` on two copies of ``policy`` (with a PEFT
    adapter when ``peft_config`` is given)."""
    args = GRPOConfig(**_common(tmp_dir), per_device_train_batch_size=4, num_generations=2, max_completion_length=9,
                      **config)
    dataset = Dataset.from_dict({"prompt": ["the cat", "a dog"] * 2})
    reward = lambda completions, **kwargs: [0.0] * len(completions)  # noqa: E731 - never called
    return [cls(model=copy.deepcopy(policy), reward_funcs=reward, args=args, train_dataset=dataset,
                processing_class=tokenizer, peft_config=peft_config) for cls in (GRPOTrainer, SleepcoreGRPOTrainer)]


def grpo_inputs(trainer, seed, *, batch=4, old=True, ref=False, sampling_ratio=None):
    """What ``_generate_and_score_completions`` hands ``_compute_loss``: left-padded prompts, right-padded
    completions, advantages, ``num_items_in_batch`` and (optionally) old / reference log-probs near the
    policy's own (TRL's kernel plus noise, so clipping happens) and a vLLM importance-sampling ratio."""
    generator = torch.Generator().manual_seed(seed)
    vocab = trainer.model.config.vocab_size
    prompt_ids = torch.randint(3, vocab, (batch, 5), generator=generator)
    prompt_mask = torch.ones(batch, 5, dtype=torch.long)
    prompt_mask[0, :2] = 0
    completion_ids = torch.randint(3, vocab, (batch, 7), generator=generator)
    completion_mask = torch.ones(batch, 7, dtype=torch.long)
    completion_mask[1, 4:] = 0
    completion_mask[2, 6:] = 0
    inputs = dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                  completion_mask=completion_mask, advantages=torch.randn(batch, generator=generator),
                  num_items_in_batch=completion_mask.sum())

    def near_policy(scale):
        with torch.no_grad():
            logp, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
                trainer, trainer.model, torch.cat([prompt_ids, completion_ids], 1),
                torch.cat([prompt_mask, completion_mask], 1), 7)
        return (logp + scale * torch.randn(logp.shape, generator=generator)) * completion_mask

    if old:
        inputs["old_per_token_logps"] = near_policy(0.3)
    if ref:
        inputs["ref_per_token_logps"] = near_policy(0.5)
    if sampling_ratio == "token":
        inputs["importance_sampling_ratio"] = torch.rand(batch, 7, generator=generator).mul(2).clamp(max=1.5)
        inputs["importance_sampling_ratio"][0, 1] = 0.0  # masked by the "token_mask" mode
    elif sampling_ratio == "sequence":
        inputs["importance_sampling_ratio"] = torch.rand(batch, 1, generator=generator) + 0.5
    return inputs


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
