"""Find the compressible ``nn.Linear`` modules of a Hugging Face encoder by its structure.

The encoder's blocks are the longest ``nn.ModuleList`` whose items share one class and each hold
linear layers. Inside a standard block the six linears are registered in the order query, key,
value, attention-output, FFN-in, FFN-out in every encoder family we know (BERT, RoBERTa, ELECTRA,
MiniLM, DistilBERT, MPNet, XLM-R...), and their shapes tell which is which: attention projections
are ``hidden -> hidden``, FFN-in ``hidden -> intermediate``, FFN-out ``intermediate -> hidden``.
Blocks with extra linears fall back to name hints. Embeddings, pooler and classifier live outside
the blocks and are never returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..errors import NxmiError

COMPONENTS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")

_NAME_HINTS = {
    "query": re.compile(r"(^|[._])(q|query|q_lin|q_proj|query_proj|wq)$"),
    "key": re.compile(r"(^|[._])(k|key|k_lin|k_proj|key_proj|wk)$"),
    "value": re.compile(r"(^|[._])(v|value|v_lin|v_proj|value_proj|wv)$"),
    "attn_out": re.compile(r"(attention|attn).*(output\.dense|out_lin|out_proj|\.o|dense)$|(^|[._])(out_lin|o_proj|wo)$"),
    "ffn_in": re.compile(r"(intermediate\.dense|lin1|fc1|up_proj|wi|ffn\.0|intermediate)$"),
    "ffn_out": re.compile(r"(^output\.dense|lin2|fc2|down_proj|ffn\.2|(^|[._])output)$"),
}


@dataclass(frozen=True)
class CompressibleModule:
    """One encoder linear layer: its full name in the model, block index and component type."""

    name: str
    layer: int
    component: str
    in_features: int
    out_features: int
    module: nn.Module

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features


def _is_linear(module: nn.Module) -> bool:
    # wrappers made by compress_ subclass nn.Linear, so they are found too
    return isinstance(module, nn.Linear)


def encoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and the ``nn.ModuleList`` of the encoder's blocks (see the module docstring)."""
    return _find_blocks(model)


def _find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        classes = {type(block) for block in module}
        if len(classes) != 1:
            continue
        if not all(any(_is_linear(m) for m in block.modules()) for block in module):
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    if best is None:
        raise NxmiError(
            f"no encoder blocks found in {type(model).__name__}: expected an nn.ModuleList of "
            "identical blocks holding nn.Linear layers"
        )
    return best


def _classify_block(linears: list[tuple[str, nn.Linear]]) -> list[str] | None:
    """Component names for a block's linears (registration order), or None if unsure."""
    if len(linears) == 6:
        q, k, v, o, fi, fo = (m for _, m in linears)
        hidden = q.in_features
        ok = (
            all(m.in_features == hidden for m in (q, k, v, fi))
            and o.out_features == hidden
            and fi.out_features == fo.in_features
            and fo.out_features == hidden
        )
        if ok:
            return list(COMPONENTS)
    out: list[str] = []
    for rel_name, _ in linears:
        hits = [c for c, pattern in _NAME_HINTS.items() if pattern.search(rel_name)]
        out.append(hits[0] if len(hits) == 1 else "other")
    return out


def compressible_modules(model: nn.Module) -> list[CompressibleModule]:
    """The encoder ``nn.Linear`` layers of ``model``, in block order, with layer index and component.

    Component is one of ``query, key, value, attn_out, ffn_in, ffn_out`` (``other`` for a linear
    in a block that matches none, e.g. DeBERTa's relative-position projection).
    """
    prefix, blocks = _find_blocks(model)
    found: list[CompressibleModule] = []
    for layer, block in enumerate(blocks):
        linears = [(n, m) for n, m in block.named_modules() if n and _is_linear(m)]
        # wrappers hold no child linears, so nothing is listed twice
        components = _classify_block(linears)
        for (rel_name, module), component in zip(linears, components):
            found.append(
                CompressibleModule(
                    name=f"{prefix}.{layer}.{rel_name}",
                    layer=layer,
                    component=component,
                    in_features=module.in_features,
                    out_features=module.out_features,
                    module=module,
                )
            )
    return found
