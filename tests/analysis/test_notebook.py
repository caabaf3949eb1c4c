"""notebooks/pareto_analysis.ipynb runs end to end on a real small search, so it cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "pareto_analysis.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    parameters = code[0]
    assert "parameters" in parameters.metadata.get("tags", [])
    assert 'RESULTS_DIR = os.environ.get("NXMI_RESULTS_DIR", "runs/search-sst2")' in parameters.source
    assert "TARGET_RATIOS = None" in parameters.source and 'CONVENTION = "paper"' in parameters.source


def test_notebook_runs_on_a_search(search_dir, monkeypatch):
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:  # pragma: no cover - ipykernel (a dev dependency) provides it
        pytest.fail("no python3 Jupyter kernel: install the dev extra (pip install -e '.[dev]')")
    monkeypatch.setenv("NXMI_RESULTS_DIR", str(search_dir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors
    images = [cell for cell in code if any("image/png" in out.get("data", {}) for out in cell.outputs)]
    assert len(images) == 2  # the front and the plan heatmap
    texts = "".join(str(out.get("data", {}).get("text/plain", "")) for cell in code for out in cell.outputs)
    assert "completed" in texts and "trial_id" in texts
    # the notebook's choice is the search's: its objective (on the selection rows), not the validation metric
    from nxmiformer.analysis import load_results, select

    config = json.loads((search_dir / "search.json").read_text())
    objective, weight = config["objective"], config["prior_weight"]
    chosen = select(load_results(search_dir), 0.875, metric=objective, prior_weight=weight)
    streams = "".join(out.get("text", "") for cell in code for out in cell.outputs if out.output_type == "stream")
    how = objective + (f" with prior weight {weight:g}" if weight else "")
    assert f"chosen on {how}\n" in streams and chosen["trial_id"] in texts
