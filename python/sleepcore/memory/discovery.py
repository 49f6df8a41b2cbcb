"""Find the decoder layers of a causal LM and the MLP of each layer from the module structure alone.

Rules (no attribute names are assumed):

* an **attention** module is a direct child of a layer with at least three ``nn.Linear``
  descendants reading the hidden size ``d`` (query, key and value) and one writing ``d`` (output);
* the **decoder layers** are the first ``nn.ModuleList`` (in ``named_modules`` order) whose items
  all have an attention child;
* a layer's **MLP** is its one direct child, other than the attention, with ``nn.Linear``
  descendants mapping ``d -> m`` and ``m -> d`` for some width ``m``.
"""

from __future__ import annotations

from torch import nn


def hidden_size(model: nn.Module) -> int:
    """The model's hidden size ``d``, read from its input embedding (or ``config.hidden_size``)."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    if isinstance(embeddings, nn.Embedding):
        return embeddings.embedding_dim
    size = getattr(getattr(model, "config", None), "hidden_size", None)
    if not isinstance(size, int):
        raise ValueError(f"unsupported model {type(model).__name__}: cannot tell its hidden size "
                         "(no nn.Embedding input embedding and no config.hidden_size)")
    return size


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [sub for sub in module.modules() if isinstance(sub, nn.Linear)]


def is_attention(module: nn.Module, d: int) -> bool:
    """Whether ``module`` looks like self-attention over hidden size ``d`` (see the module docstring)."""
    linears = _linears(module)
    return sum(linear.in_features == d for linear in linears) >= 3 and any(linear.out_features == d
                                                                           for linear in linears)


def is_mlp(module: nn.Module, d: int) -> bool:
    """Whether ``module`` holds Linear layers mapping ``d -> m`` and ``m -> d`` for some ``m``."""
    linears = _linears(module)
    widths_out = {linear.out_features for linear in linears if linear.in_features == d}
    widths_in = {linear.in_features for linear in linears if linear.out_features == d}
    return bool(widths_out & widths_in)


def find_decoder_layers(model: nn.Module, d: int) -> nn.ModuleList:
    """The model's decoder layers. Raises ``ValueError`` if no ModuleList of attention layers exists."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and all(
                any(is_attention(child, d) for child in item.children()) for item in module):
            return module
    raise ValueError(f"unsupported model {type(model).__name__}: no decoder layers found "
                     f"(no nn.ModuleList whose items all contain an attention module over hidden size {d})")


def find_mlp(layer: nn.Module, d: int) -> tuple[str, nn.Module]:
    """``(child name, module)`` of the layer's MLP. Raises ``ValueError`` if there is none or several."""
    found = [(name, child) for name, child in layer.named_children()
             if not isinstance(child, nn.Linear) and not is_attention(child, d) and is_mlp(child, d)]
    if len(found) != 1:
        names = [name for name, _ in found]
        raise ValueError(f"unsupported decoder layer {type(layer).__name__}: expected one MLP child "
                         f"mapping {d} -> m -> {d}, found {len(found)} {names}")
    return found[0]
