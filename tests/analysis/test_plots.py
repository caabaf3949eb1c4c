"""The Pareto plot and the plan heatmap: PNG files of the expected pixel size."""

from __future__ import annotations

import matplotlib.image
import pytest

from nxmiformer.analysis import metric_se, plot_front, plot_pareto, plot_plan, select
from nxmiformer.compression import CompressionPlan
from nxmiformer.errors import NxmiError
from tests.analysis.conftest import synthetic_results
from tests.conftest import tiny_bert


def png_shape(path):
    """(height, width) in pixels of a PNG as decoded."""
    assert path.is_file() and path.stat().st_size > 0
    return matplotlib.image.imread(path).shape[:2]


CASES = [
    ("target met", dict(target_ratio=0.875)),
    ("target unmet", dict(target_ratio=0.99)),
    ("no target", dict()),
    ("storage, retention, stopped", dict(target_ratio=0.85, convention="storage", metric="retention",
                                         include_stopped=True)),
]


@pytest.mark.parametrize("label,kwargs", CASES, ids=[c[0] for c in CASES])
def test_pareto_plot_png(label, kwargs, tmp_path):
    path = tmp_path / "sub" / "front.png"
    fig = plot_pareto(synthetic_results(0), path=path, size=(6, 4), dpi=50, **kwargs)
    assert png_shape(path) == (200, 300)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "Pareto front" in legend and any(t.startswith("failed (") for t in legend)
    assert any(t.startswith("selected: ") for t in legend) == (label in ("target met", "storage, retention, stopped"))


def test_pareto_plot_stars_the_trial_it_is_given(tmp_path):
    table = synthetic_results(0)
    by_metric = select(table, 0.875)
    given = select(table, 0.875, metric="selection_kl")
    assert given["trial_id"] != by_metric["trial_id"]  # else the case below tells nothing
    for row, expected in ((None, by_metric), (given, given)):
        fig = plot_pareto(table, 0.875, selected=row, size=(6, 4), dpi=50)
        legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert f"selected: {expected['trial_id']}" in legend


def test_pareto_plot_bad_input(tmp_path):
    with pytest.raises(NxmiError, match="'bytes'"):
        plot_pareto(synthetic_results(0), convention="bytes", path=tmp_path / "f.png")
    with pytest.raises(NxmiError, match=r"\(0, 1\), got 2"):
        plot_pareto(synthetic_results(0), target_ratio=2, path=tmp_path / "f.png")
    assert not list(tmp_path.iterdir())


def test_plan_heatmap_png(tmp_path):
    model = tiny_bert(num_hidden_layers=3)
    plan = CompressionPlan.by_component(model, {"query": "2:4:int4", "ffn_in": "dense:int8", "ffn_out": "4:8:int4:a8"})
    fig = plot_plan(plan, path=tmp_path / "plan.png", dpi=50)
    width, height = fig.get_size_inches() * 50
    assert png_shape(tmp_path / "plan.png") == (round(height), round(width))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["query", "key", "value", "attn_out", "ffn_in", "ffn_out"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["layer 0", "layer 1", "layer 2"]
    cells = [t.get_text() for t in ax.texts]
    assert cells[:6] == ["2:4:int4", "dense", "dense", "dense", "dense:int8", "4:8:int4:a8"] and len(cells) == 18
    # a larger model makes a larger picture
    taller = plot_plan(CompressionPlan.uniform(tiny_bert(num_hidden_layers=6), "2:4:int8"))
    assert taller.get_size_inches()[1] > fig.get_size_inches()[1]


def test_empty_plan_has_nothing_to_draw():
    with pytest.raises(NxmiError, match="names no module"):
        plot_plan(CompressionPlan())
    assert plot_plan(CompressionPlan(), num_layers=2).axes[0].texts[0].get_text() == "dense"


def test_front_plot_marks_the_choice_at_each_target_on_both_panels(tmp_path):
    table = synthetic_results(0)
    chosen = {t: select(table, t, metric="selection_loss_calibrated") for t in (0.8, 0.875)}
    fig = plot_front(table, [0.875, 0.8], objective="selection_loss_calibrated", selected=chosen,
                     path=tmp_path / "front.png", dpi=50)
    assert png_shape(tmp_path / "front.png") == (240, 700)
    left, right = fig.axes[:2]
    for ax, column in ((left, "selection_loss_calibrated"), (right, "primary")):
        stars = [c for c in ax.collections if c.get_offsets().shape == (1, 2) and c.get_sizes()[0] == 260]
        assert sorted(tuple(s.get_offsets()[0]) for s in stars) == sorted(
            (row["ratio_paper"], row[column]) for row in chosen.values())
        assert len([line for line in ax.get_lines() if line.get_linestyle() == "--"]) == 2  # a line per target
    legend = [t.get_text() for t in right.get_legend().get_texts()]
    assert "chosen at each target" in legend


SE_CASES = [  # primary, validation rows predicted, dense primary, metric -> standard error by hand
    ("accuracy", 0.8, 100, 0.9, "primary", (0.8 * 0.2 / 100) ** 0.5),
    ("retention", 0.8, 100, 0.9, "retention", (0.8 * 0.2 / 100) ** 0.5 / 0.9),
    ("perfect", 1.0, 50, 1.0, "primary", 0.0),
    ("no predictions", 0.8, 0, 0.9, "primary", float("nan")),
    ("selection metric", 0.8, 100, 0.9, "selection_loss", float("nan")),
]


@pytest.mark.parametrize("label,primary,rows,dense,metric,expected", SE_CASES, ids=[c[0] for c in SE_CASES])
def test_metric_se_is_the_binomial_error_over_the_rows_predicted(label, primary, rows, dense, metric, expected):
    import json
    import math

    import pandas as pd

    frame = pd.DataFrame({"primary": [primary], "dense_primary": [dense],
                          "predictions": [json.dumps([0] * rows) if rows else ""]})
    got = float(metric_se(frame, metric).iloc[0])
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, rel=1e-12)
