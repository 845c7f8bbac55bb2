"""experiments/architecture_objective/run.py: the grid is compute-matched. Its tiny mode
(all six models trained, evaluated, tabulated, plotted; resumable) runs end to end in
tests/colab/test_notebooks.py, through colab/02_architecture_ablation.ipynb."""

import json

import pytest

from tests.scripts import load_script

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)


@pytest.fixture(scope="module")
def runner():
  return load_script("experiments/architecture_objective/run.py")


def test_the_grid_is_compute_and_parameter_matched(runner):
  plan = runner.plan(runner.MODES["full"], seeds=[0])
  assert [(r["architecture"], r["objective"]) for r in plan["runs"]] == list(runner.GRID)
  budget = runner.MODES["full"].budget
  for run in plan["runs"]:
    assert run["flops"] == pytest.approx(budget, rel=0.01)  # to the nearest step
  params = [run["params"] for run in plan["runs"]]
  assert max(params) / min(params) < 1.2  # the encoder-decoder adds cross-attention only
  decoder_rows = {(r["architecture"], r["objective"]): sum(r["feature_lengths"].values())
                  for r in plan["runs"]}
  assert all(length <= runner.MODES["full"].length for length in decoder_rows.values())


def test_the_adaptation_stage_is_compute_matched_and_starts_from_its_pretrained_runs(runner):
  mode = runner.MODES["full"]
  adaptations, finetuning = runner.adaptation_plans(mode, seeds=[0, 1], work_dir="/work")
  pretrained = {run["id"]: run for run in runner.plan(mode, [0, 1])["runs"]}
  # Wang et al.'s non-causal adaptation: the causal full-LM decoder, continued as a prefix
  # decoder with prefix LM for a tenth of its pretraining FLOPs.
  for run in adaptations["runs"]:
    assert pretrained[run["init"]]["architecture"] == "causal_decoder"
    assert run["architecture"] == "prefix_decoder" and run["params"] == pretrained[
        run["init"]]["params"]
    assert run["flops"] == pytest.approx(mode.adaptation_fraction * mode.budget, rel=0.01)
    assert f"CHECKPOINT_PATH = '/work/{run['init']}'" in run["bindings"]
    assert "train.allow_changes = ['TransformerConfig.architecture']" in run["bindings"]
  # Every pretrained model and every adapted one: multitask fine-tuning, equal FLOPs.
  starts = [run["init"] for run in finetuning["runs"]]
  assert starts == [*pretrained, *(run["id"] for run in adaptations["runs"])]
  for run in finetuning["runs"]:
    assert run["flops"] == pytest.approx(mode.finetune_budget, rel=0.01)
    assert "MIXTURE_OR_TASK_NAME = 'multitask.train.byte'" in run["bindings"]
    assert sum(run["feature_lengths"].values()) == mode.length


def test_the_adaptation_stage_runs_end_to_end_in_tiny_mode(runner, tmp_path, monkeypatch):
  from t5x_lite import train

  def train_here(args, log_path, stream):  # in this process: shares compiled tiny models
    return train.main(args)

  # Two of the six models (a decoder and the encoder-decoder) keep the test short; the
  # adapted prefix decoder comes from the causal full-LM one.
  monkeypatch.setattr(runner, "GRID", (("causal_decoder", "full_lm"),
                                       ("encoder_decoder", "span_corruption")))
  rows = runner.run_adaptation("tiny", [0], str(tmp_path / "runs"), str(tmp_path),
                               train=train_here)
  assert len(rows) == 2 * 3  # 2 pretrained models + the adapted one, before and after
  assert {row["stage"] for row in rows} == {"pretrained", "multitask"}
  for row in rows:
    assert 0 <= row["heldout_accuracy"] <= 1 and row["heldout_questions"] > 0
  table = (tmp_path / "adaptation.md").read_text()
  assert table.count("\n") == 2 + 6 and "full_lm+prefix_lm" in table
  # Resumable: scored once, the scores are read back, not recomputed.
  assert all((tmp_path / "runs" / f"{row['id']}" / "heldout_scores.json").exists()
             for row in rows)
  assert (tmp_path / "adaptation.png").stat().st_size > 10_000
  # The adapted prefix decoder holds the causal decoder's parameters, trained further.
  record = json.loads((tmp_path / "runs" / "causal_decoder-full_lm-seed0-prefix_lm_adapted"
                       / "spec.json").read_text())
  assert record["spec"]["TransformerConfig"]["architecture"] == "prefix_decoder"
