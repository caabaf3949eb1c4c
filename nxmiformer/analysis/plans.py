"""Plans as tables: which spec every (layer, component) cell of the encoder gets.

A plan names modules by their full name in the model (``bert.encoder.layer.3.attention.self.query``).
:func:`module_position` places such a name in the (layer, component) grid by the standard Hugging
Face suffixes, so no model has to be loaded; pass a model to place modules by structure instead
(``compressible_modules``), which also covers unusual architectures and shows every layer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
from torch import nn

from ..compression import (
    ALL_COMPONENTS, COMPONENTS, DENSE, FUSED_COMPONENTS, CompressibleModule, CompressionPlan, compressible_modules,
)
from ..errors import NxmiError

PLAN_TABLE_COLUMNS = ("module", "layer", "component", "spec", "bits_per_weight")

# the module name after "<blocks>.<layer>." -> component, for the encoder families we know
_SUFFIXES = {
    # BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, DeBERTa (its query_proj...), MPNet (attention.attn.q...)
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.self.query_proj": "query", "attention.self.key_proj": "key",
    "attention.self.value_proj": "value",
    "attention.attn.q": "query", "attention.attn.k": "key", "attention.attn.v": "value", "attention.attn.o": "attn_out",
    "attention.output.dense": "attn_out", "intermediate.dense": "ffn_in", "output.dense": "ffn_out",
    # DistilBERT
    "attention.q_lin": "query", "attention.k_lin": "key", "attention.v_lin": "value",
    "attention.out_lin": "attn_out", "ffn.lin1": "ffn_in", "ffn.lin2": "ffn_out",
    # ModernBERT: fused QKV, gated FFN input (gate and up in one matrix)
    "attn.Wqkv": "qkv", "attn.Wo": "attn_out", "mlp.Wi": "ffn_in", "mlp.Wo": "ffn_out",
}
_NAME = re.compile(r"^(?P<blocks>.+)\.(?P<layer>\d+)\.(?P<rest>[^.\d][^.]*(?:\.[^.\d][^.]*)*)$")


def module_position(name: str) -> tuple[int, str]:
    """``(layer, component)`` of a module name by its Hugging Face suffix.

    ``bert.encoder.layer.3.attention.self.query`` -> ``(3, "query")``. Known suffixes: BERT,
    RoBERTa, XLM-R, ELECTRA, MiniLM, DeBERTa, MPNet, DistilBERT, ModernBERT.

    Raises:
        NxmiError: a name with no layer index or an unknown suffix (pass the model instead).
    """
    match = _NAME.match(name)
    component = _SUFFIXES.get(match["rest"]) if match else None
    if component is None:
        raise NxmiError(f"cannot place module {name!r} in the layer x component grid by its name "
                        f"(known endings: {', '.join(sorted(set(_SUFFIXES)))}); pass the model to place it by structure")
    return int(match["layer"]), component


def plan_of(source: "CompressionPlan | Mapping | pd.Series | str | os.PathLike") -> CompressionPlan:
    """A :class:`CompressionPlan` from a plan, its ``to_dict`` form, a results row (its
    ``plan_json``) or the path of a plan JSON file."""
    if isinstance(source, CompressionPlan):
        return source
    if isinstance(source, pd.Series):
        if "plan_json" not in source.index:
            raise NxmiError("a results row needs a 'plan_json' column to give its plan")
        return CompressionPlan.from_json(source["plan_json"])
    if isinstance(source, Mapping):
        return CompressionPlan.from_dict(source)
    if isinstance(source, (str, os.PathLike)):
        return CompressionPlan.load(Path(source))
    raise NxmiError(f"cannot read a plan from a {type(source).__name__}; give a CompressionPlan, a plan dict, "
                    "a results row or a plan.json path")


def plan_table(plan: "CompressionPlan | Mapping | pd.Series | str | os.PathLike", model: nn.Module | None = None,
               num_layers: int | None = None) -> pd.DataFrame:
    """One row per (layer, component) cell: module name, spec string and bits per weight
    (``density * bits``, the ``paper`` cost).

    Without ``model`` the cells come from the plan's module names (:func:`module_position`);
    cells the plan does not name are dense fp32 (a plan leaves unnamed modules dense) and are
    filled in for layers ``0 .. num_layers - 1`` (default: up to the highest layer the plan
    names), their ``module`` left empty; the cells of a layer are :data:`COMPONENTS`, or
    :data:`FUSED_COMPONENTS` when the plan names a ``qkv`` module. With ``model`` every
    compressible module is listed.
    """
    plan = plan_of(plan)
    if model is not None:
        rows = [(cm.name, cm.layer, _component(cm), plan.spec_for(cm.name)) for cm in compressible_modules(model)]
        unknown = sorted(set(plan) - {name for name, *_ in rows})
        if unknown:
            raise NxmiError(f"plan names module(s) the model does not have: {', '.join(unknown[:5])}")
    else:
        rows = [(name, *module_position(name), spec) for name, spec in plan.items()]
    table = pd.DataFrame(rows, columns=["module", "layer", "component", "spec"])
    if model is None:
        layers = num_layers if num_layers is not None else int(table["layer"].max()) + 1 if len(table) else 0
        layout = FUSED_COMPONENTS if "qkv" in set(table["component"]) else COMPONENTS
        grid = pd.MultiIndex.from_product([range(layers), layout], names=["layer", "component"])
        named = table.set_index(["layer", "component"])
        if named.index.has_duplicates:
            twice = named.index[named.index.duplicated()][0]
            raise NxmiError(f"the plan names two modules for layer {twice[0]} {twice[1]}; pass the model to place them")
        table = named.reindex(grid.union(named.index, sort=False)).reset_index()
        table["module"] = table["module"].fillna("")
        table["spec"] = table["spec"].map(lambda spec: DENSE if pd.isna(spec) else spec)  # unnamed: dense
    table["bits_per_weight"] = table["spec"].map(lambda spec: spec.bits_per_weight)
    table["spec"] = table["spec"].map(str)
    order = {c: i for i, c in enumerate(ALL_COMPONENTS)}
    table = table.sort_values(["layer", "component"], key=lambda s: s.map(order) if s.name == "component" else s,
                              kind="mergesort")
    return table[list(PLAN_TABLE_COLUMNS)].reset_index(drop=True)


def plan_grid(table: pd.DataFrame, value: str) -> pd.DataFrame:
    """``value`` of a :func:`plan_table` as layers x components (components in
    :data:`~nxmiformer.compression.ALL_COMPONENTS` order, then any ``other``)."""
    grid = table.pivot(index="layer", columns="component", values=value)
    columns = [c for c in ALL_COMPONENTS if c in grid.columns] + sorted(set(grid.columns) - set(ALL_COMPONENTS))
    return grid[columns]


def _component(cm: CompressibleModule) -> str:
    """The component, or ``other:<name in the block>`` for a linear of no standard component."""
    return cm.component if cm.component != "other" else f"other:{cm.name.split(f'.{cm.layer}.', 1)[-1]}"
