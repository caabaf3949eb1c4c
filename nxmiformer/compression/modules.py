"""Find the compressible ``nn.Linear`` modules of a Hugging Face encoder by its structure.

The encoder's blocks are the longest ``nn.ModuleList`` whose items share one class and each hold
linear layers. Inside a standard block the six linears are registered in the order query, key,
value, attention-output, FFN-in, FFN-out in every encoder family we know (BERT, RoBERTa, ELECTRA,
MiniLM, DistilBERT, MPNet, XLM-R, DeBERTa...), and their shapes tell which is which: attention
projections are ``hidden -> hidden``, FFN-in ``hidden -> intermediate``, FFN-out
``intermediate -> hidden``.

A fused block (ModernBERT) has four: one ``qkv`` matrix holding the query, key and value
projections as row blocks (``hidden -> 3 x heads``), the attention output, an FFN input that may be
gated (gate and up projections in one matrix, ``hidden -> 2 x intermediate``: still ``ffn_in``)
and the FFN output. A fused matrix is one module with one role and takes one spec: N:M groups run
along its input dimension, as for separate projections, and its per-row scales are those of the
separate projections (a scale group of ``g`` rows, or ``gtensor``, spans the whole matrix).

Blocks of any other layout fall back to name hints. Embeddings, pooler and classifier live outside
the blocks and are never returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..errors import NxmiError

# the roles of a block with separate query, key and value projections (BERT and most encoders)
COMPONENTS = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
# the roles of a block whose query, key and value are one fused matrix (ModernBERT)
FUSED_COMPONENTS = ("qkv", "attn_out", "ffn_in", "ffn_out")
# every role a module may have, in display order (a linear of none is ``other``)
ALL_COMPONENTS = ("query", "key", "value", "qkv", "attn_out", "ffn_in", "ffn_out")

_NAME_HINTS = {
    "query": re.compile(r"(^|[._])(q|query|q_lin|q_proj|query_proj|wq)$"),
    "key": re.compile(r"(^|[._])(k|key|k_lin|k_proj|key_proj|wk)$"),
    "value": re.compile(r"(^|[._])(v|value|v_lin|v_proj|value_proj|wv)$"),
    "qkv": re.compile(r"(^|[._])(wqkv|qkv|qkv_proj|query_key_value)$", re.IGNORECASE),
    "attn_out": re.compile(r"(attention|attn).*(output\.dense|out_lin|out_proj|\.o|dense)$|(^|[._])(out_lin|o_proj|wo)$"),
    "ffn_in": re.compile(r"(intermediate\.dense|lin1|fc1|up_proj|wi|ffn\.0|intermediate)$"),
    "ffn_out": re.compile(r"(^output\.dense|lin2|fc2|down_proj|ffn\.2|(^|[._])output)$"),
}

# projections of relative-position embeddings (DeBERTa's pos_key_proj, pos_query_proj): ``other``
_POSITIONAL = re.compile(r"(^|[._])pos_[^.]*$")


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
    if len(linears) == 4:
        qkv, o, fi, fo = (m for _, m in linears)
        hidden = qkv.in_features
        ok = (
            qkv.out_features == 3 * o.in_features
            and o.out_features == hidden
            and fi.in_features == hidden
            and fi.out_features in (fo.in_features, 2 * fo.in_features)  # plain or gated (gate and up)
            and fo.out_features == hidden
        )
        if ok:
            return list(FUSED_COMPONENTS)
    out: list[str] = []
    for rel_name, _ in linears:
        hits = [c for c, pattern in _NAME_HINTS.items() if pattern.search(rel_name)]
        positional = _POSITIONAL.search(rel_name)  # e.g. DeBERTa's pos_key_proj: not the tokens' key
        out.append(hits[0] if len(hits) == 1 and not positional else "other")
    return out


def compressible_modules(model: nn.Module) -> list[CompressibleModule]:
    """The encoder ``nn.Linear`` layers of ``model``, in block order, with layer index and component.

    Component is one of ``query, key, value, attn_out, ffn_in, ffn_out`` (:data:`COMPONENTS`), or
    ``qkv, attn_out, ffn_in, ffn_out`` (:data:`FUSED_COMPONENTS`) in a block with a fused QKV
    matrix; ``other`` for a linear in a block that matches none, e.g. DeBERTa's relative-position
    projection.
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
