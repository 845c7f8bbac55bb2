"""Every Colab notebook runs top to bottom in its small (CPU) mode without an error, and
what it produces is checked (02 is the architecture x objective runner's tiny mode end
to end: all six models trained, evaluated, tabulated and plotted, and resumable)."""

import csv
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.scripts import load_script
from tests.train_helpers import HANG_TIMEOUT_S

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)

COLAB = os.path.join(os.path.dirname(__file__), "..", "..", "colab")
NOTEBOOKS = sorted(name for name in os.listdir(COLAB) if name.endswith(".ipynb"))


def test_the_three_notebooks_are_there():
  assert NOTEBOOKS == ["01_quickstart.ipynb", "02_architecture_ablation.ipynb",
                       "03_scaling_laws.ipynb"]


def check_quickstart(temp_dir):
  model_dir = os.path.join(temp_dir, "t5x_lite_colab_quickstart_small")
  assert os.path.exists(os.path.join(model_dir, "metrics.jsonl"))


def check_ablation(temp_dir):
  from t5x_lite.scaling import sweep

  work = os.path.join(temp_dir, "t5x_lite_colab_ablation_tiny")
  with open(os.path.join(work, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 6
  for row in rows:
    assert 0 < float(row["heldout_loss"]) < 10
    assert 0 <= float(row["cloze_accuracy"]) <= 1
  with open(os.path.join(work, "results.md")) as f:
    assert f.read().count("\n") == 2 + 6  # header, rule, one line per model
  assert os.path.getsize(os.path.join(work, "results.png")) > 10_000
  # Resumable: a second invocation would find every model finished and skip it.
  runner = load_script("experiments/architecture_objective/run.py")
  for planned in runner.plan(runner.MODES["tiny"], [0])["runs"]:
    assert sweep.is_finished(planned, os.path.join(work, "runs"))


def check_scaling(temp_dir):
  work = os.path.join(temp_dir, "t5x_lite_colab_sweep_small")
  with open(os.path.join(work, "RUNS.csv")) as f:
    assert len(list(csv.DictReader(f))) == 2
  assert os.path.getsize(os.path.join(work, "study.png")) > 10_000


CHECKS = {"01_quickstart.ipynb": check_quickstart, "02_architecture_ablation.ipynb": check_ablation,
          "03_scaling_laws.ipynb": check_scaling}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_small_mode(name, monkeypatch, tmp_path):
  notebook = nbformat.read(os.path.join(COLAB, name), as_version=4)
  assert "SMALL = True" in notebook.cells[1].source  # CI runs what a user gets by default
  # The kernel is `python -m ipykernel_launcher`: make `python` this environment's.
  monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks work under tempfile.gettempdir()
  client = NotebookClient(notebook, timeout=HANG_TIMEOUT_S, kernel_name="python3",
                          resources={"metadata": {"path": COLAB}})
  client.execute()  # raises CellExecutionError, naming the cell, on any error
  outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                    for o in cell.get("outputs", []))
  assert "Error" not in outputs
  CHECKS[name](str(tmp_path))
