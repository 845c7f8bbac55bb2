"""Every Colab notebook runs top to bottom in its small (CPU) mode without an error."""

import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

COLAB = os.path.join(os.path.dirname(__file__), "..", "..", "colab")
NOTEBOOKS = sorted(name for name in os.listdir(COLAB) if name.endswith(".ipynb"))


def test_the_three_notebooks_are_there():
  assert NOTEBOOKS == ["01_quickstart.ipynb", "02_architecture_ablation.ipynb",
                       "03_scaling_laws.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_small_mode(name, monkeypatch):
  notebook = nbformat.read(os.path.join(COLAB, name), as_version=4)
  assert "SMALL = True" in notebook.cells[1].source  # CI runs what a user gets by default
  # The kernel is `python -m ipykernel_launcher`: make `python` this environment's.
  monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": COLAB}})
  client.execute()  # raises CellExecutionError, naming the cell, on any error
  outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                    for o in cell.get("outputs", []))
  assert "Error" not in outputs
