"""tools/scaling_sweep.py's engine: train every planned run once, resume, collect RUNS.csv."""

import csv
import dataclasses
import io
import json
import os

import pytest

from t5x_lite import train
from t5x_lite.gin_utils import model_config
from t5x_lite.scaling import downstream, sweep
from t5x_lite.scaling.__main__ import main as scaling_main
from t5x_lite.scaling.planning import Family, plan_sweep, wsd_family
from t5x_lite.scaling.runs import read_runs
from tests.scripts import load_script

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)


def make_plan(gin_file="experiments/scaling/family.gin", budgets=(1e12, 3e12), sizes=3,
              batch_size=16, length=256) -> dict:
  family = Family(model_config([gin_file]), aspect_ratio=32, head_dim=32)
  runs = plan_sweep(family, list(budgets), sizes=sizes, batch_size=batch_size,
                    targets_length=length)
  return {"gin_files": [gin_file], "gin_bindings": [], "batch_size": batch_size,
          "inputs_length": 0, "targets_length": length, "runs": [r.as_dict() for r in runs]}


def fake_train(losses):
  """Stands in for the trainer: writes the evaluations a finished run leaves behind."""
  calls = []

  def run(args, log_path, stream):
    values = dict(arg[len("--gin."):].split("=", 1) for arg in args if arg.startswith("--gin."))
    model_dir, steps = eval(values["MODEL_DIR"]), int(values["TRAIN_STEPS"])
    calls.append(os.path.basename(model_dir))
    if calls[-1] in losses.get("fail", ()):
      return 2
    with open(os.path.join(model_dir, "metrics.jsonl"), "a") as handle:
      for step in (steps // 2, steps):
        loss = losses[calls[-1]] + (0.5 if step < steps else 0.0)
        handle.write(json.dumps({"step": step, "split": "eval", "loss": loss}) + "\n")
    return 0
  return run, calls


def test_train_args_set_the_shape_the_length_and_the_cadence():
  plan = make_plan()
  run = plan["runs"][0]
  args = sweep.train_args(plan, run, "/sweep", gin_files=["experiments/scaling/sweep.gin"],
                          gin_bindings=["LEARNING_RATE = 1e-3"], evaluations=4)
  assert args[:2] == ["--gin_file=experiments/scaling/sweep.gin",
                      "--gin_file=experiments/scaling/family.gin"]
  assert f"--gin.TransformerConfig.d_model={run['d_model']}" in args
  assert f"--gin.TRAIN_STEPS={run['steps']}" in args
  assert f"--gin.MODEL_DIR='/sweep/{run['id']}'" in args
  assert f"--gin.train.eval_every={run['steps'] // 4}" in args
  assert args[-1] == "--gin.LEARNING_RATE=1e-3"  # the user's bindings win
  assert "t5x_lite.train" in sweep.launch_commands(plan, "/sweep")[0]


def test_sweep_skips_finished_runs_reports_failures_and_collects_tables(tmp_path):
  plan = make_plan()
  ids = [run["id"] for run in plan["runs"]]
  losses = {run_id: 3.0 - 0.1 * i for i, run_id in enumerate(ids)}
  losses["fail"] = (ids[1],)
  trainer, calls = fake_train(losses)
  failed = sweep.run_sweep(plan, str(tmp_path), train=trainer, stream=io.StringIO())
  assert failed == [ids[1]] and calls == ids

  losses["fail"] = ()
  output = io.StringIO()
  assert sweep.run_sweep(plan, str(tmp_path), train=trainer, stream=output) == []
  assert calls[len(ids):] == [ids[1]]  # only the failed run was trained again
  assert output.getvalue().count("finished earlier, skipped") == len(ids) - 1

  written, unfinished = sweep.collect(plan, str(tmp_path), str(tmp_path / "RUNS.csv"),
                                      str(tmp_path / "CURVES.csv"))
  assert (written, unfinished) == (len(ids), [])
  runs = read_runs(str(tmp_path / "RUNS.csv"))
  assert list(runs.loss) == pytest.approx([losses[i] for i in ids])
  assert list(runs.expert_counts) == [1.0] * len(ids)  # a dense family
  assert list(runs.flops) == pytest.approx([run["flops"] for run in plan["runs"]])
  curves = read_runs(str(tmp_path / "CURVES.csv"))
  assert len(curves) == 2 * len(ids) and set(curves.run) == set(ids)


def test_a_planned_run_trains_through_the_real_job(tmp_path):
  """The plan's bindings are ones the trainer accepts: one tiny run, end to end."""
  plan = make_plan("models/tiny_causal_decoder.gin", budgets=(2.5e8,), sizes=1, batch_size=2,
                   length=32)
  plan["runs"] = plan["runs"][:1]
  extra = ["runs/pretrain.gin", "meshes/single_device.gin"]
  bindings = ["MIXTURE_OR_TASK_NAME = 'pydocs.full_lm.byte'", "train.eval_steps = 1",
              "TransformerConfig.max_length = 32"]

  def in_process(args, log_path, stream):
    return train.main(args)

  failed = sweep.run_sweep(plan, str(tmp_path), gin_files=extra, gin_bindings=bindings,
                           evaluations_per_run=2, train=in_process, stream=io.StringIO())
  assert failed == []
  written, _ = sweep.collect(plan, str(tmp_path), str(tmp_path / "RUNS.csv"))
  assert written == 1
  assert 0 < read_runs(str(tmp_path / "RUNS.csv")).loss[0] < 10


def recording(train_function, settings):
  """A trainer that records spec.json as the real one does, then trains."""
  def run(args, log_path, stream):
    model_dir = eval(next(a for a in args if a.startswith("--gin.MODEL_DIR="))[16:])
    with open(os.path.join(model_dir, "spec.json"), "w") as handle:
      json.dump({"spec": settings(args)}, handle)
    return train_function(args, log_path, stream)
  return run


def test_a_sweep_never_skips_or_resumes_a_run_trained_with_other_settings(tmp_path):
  plan = make_plan()
  ids = [run["id"] for run in plan["runs"]]
  # The settings each run would record, as tools/scaling_sweep.py resolves them from gin.
  settings = load_script("tools/scaling_sweep.py").recorded_settings
  sweep_gin = ["experiments/scaling/sweep.gin"]
  trainer, calls = fake_train({run_id: 3.0 for run_id in ids})
  sweep.run_sweep(plan, str(tmp_path), gin_files=sweep_gin, train=recording(trainer, settings),
                  settings=settings, stream=io.StringIO())
  sweep.collect(plan, str(tmp_path), str(tmp_path / "RUNS.csv"))
  first = {row["run"]: row["settings"] for row in csv.DictReader(open(tmp_path / "RUNS.csv"))}
  assert len(first) == len(ids) and "" not in first.values()  # each run's own settings

  changed = ["LEARNING_RATE = 0.0123"]
  with pytest.raises(sweep.SweepError, match=r"make_schedule.peak_learning_rate: .* -> 0.0123"):
    sweep.run_sweep(plan, str(tmp_path), gin_files=sweep_gin, gin_bindings=changed,
                    train=recording(trainer, settings), settings=settings,
                    stream=io.StringIO())
  assert len(calls) == len(ids)  # refused before anything trained or was skipped

  output = io.StringIO()
  assert sweep.run_sweep(plan, str(tmp_path), gin_files=sweep_gin, gin_bindings=changed,
                         train=recording(trainer, settings), settings=settings,
                         rerun_changed=True, stream=output) == []
  assert calls[len(ids):] == ids and output.getvalue().count("moved to") == len(ids)
  assert len([d for d in os.listdir(tmp_path) if ".replaced-" in d]) == len(ids)
  sweep.collect(plan, str(tmp_path), str(tmp_path / "RUNS.csv"))
  again = {row["run"]: row["settings"] for row in csv.DictReader(open(tmp_path / "RUNS.csv"))}
  assert all(again[run_id] != first[run_id] for run_id in ids)


@pytest.fixture(scope="module")
def wsd_sweep(tmp_path_factory):
  """One tiny shape on two budgets as a WSD family, swept for real: (plan, dir, log)."""
  folder = tmp_path_factory.mktemp("wsd_sweep")
  family = Family(model_config(["models/tiny_causal_decoder.gin"]), aspect_ratio=32,
                  head_dim=32)
  short, = plan_sweep(family, [2.5e8], sizes=1, batch_size=2, targets_length=32)
  long = dataclasses.replace(short, id=short.id.replace("C2.5e8", "C5e8"),
                             budget=2 * short.budget, steps=2 * short.steps,
                             tokens=2 * short.tokens, flops=2 * short.flops)
  wsd = wsd_family([short, long], decay_fraction=0.25)
  plan = {"gin_files": ["models/tiny_causal_decoder.gin"], "gin_bindings": [],
          "batch_size": 2, "inputs_length": 0, "targets_length": 32, "runs": wsd["runs"]}
  extra = ["runs/pretrain.gin", "meshes/single_device.gin"]
  bindings = ["MIXTURE_OR_TASK_NAME = 'pydocs.full_lm.byte'", "train.eval_steps = 1",
              "TransformerConfig.max_length = 64"]
  output = io.StringIO()
  failed = sweep.run_sweep(plan, str(folder), gin_files=extra, gin_bindings=bindings,
                           evaluations_per_run=2, train=lambda args, log, stream: train.main(args),
                           stream=output)
  assert failed == []
  return plan, folder, output.getvalue()


def test_a_wsd_family_sweeps_stable_runs_then_their_branches(wsd_sweep):
  """The stable run trains first, both branches fork from it and train only their
  decays, and RUNS.csv names the stable phase they share."""
  plan, folder, log = wsd_sweep
  assert [r["role"] for r in plan["runs"]] == ["stable", "branch", "branch"]
  assert "branch of stable-" in log
  stable, *branches = plan["runs"]
  for branch in branches:
    steps = [row["step"] for row in sweep.evaluations(str(folder / branch["id"]))]
    assert min(steps) > branch["fork_step"] and max(steps) == branch["steps"]
  written, unfinished = sweep.collect(plan, str(folder), str(folder / "RUNS.csv"))
  assert written == 2 and unfinished == []
  with open(folder / "RUNS.csv") as handle:
    rows = list(csv.DictReader(handle))
  assert {row["stable"] for row in rows} == {stable["id"]}
  assert sorted(float(row["flops"]) for row in rows) == sorted(r["flops"] for r in branches)


def test_downstream_scores_are_collected_per_run_and_plotted(wsd_sweep, tmp_path, capsys):
  """Each finished run (not the stable phase) scored on two sets under every metric, the
  scores kept in its directory (a second collection scores nothing again), and the
  emergence figure drawn from the table."""
  plan, folder, _ = wsd_sweep
  table = tmp_path / "DOWNSTREAM.csv"
  assert downstream.collect(plan, str(folder), ["addition", "pydocs_cloze"], str(table),
                            limit=6) == 2
  with open(table) as handle:
    rows = list(csv.DictReader(handle))
  assert [row["run"] for row in rows] == [r["id"] for r in plan["runs"][1:]]
  for row in rows:
    for name in ("addition", "pydocs_cloze"):
      assert 0 <= float(row[f"{name}/accuracy"]) <= 1
      assert 0 <= float(row[f"{name}/exact_match"]) <= 1
      assert float(row[f"{name}/answer_logprob_per_token"]) < 0
      assert 0 <= float(row[f"{name}/brier"]) <= 2
  record = json.loads((folder / plan["runs"][1]["id"] / downstream.FILE).read_text())
  assert record["limit"] == 6 and set(record["sets"]) == {"addition", "pydocs_cloze"}
  before = (folder / plan["runs"][1]["id"] / downstream.FILE).stat().st_mtime_ns
  downstream.collect(plan, str(folder), ["addition"], str(table), limit=6)
  assert (folder / plan["runs"][1]["id"] / downstream.FILE).stat().st_mtime_ns == before
  figure = tmp_path / "emergence.png"
  scaling_main(["plot", str(table), "--downstream", "addition", "--output", str(figure)])
  assert figure.stat().st_size > 10_000
  with pytest.raises(SystemExit) as exit_info:
    scaling_main(["plot", str(table), "--downstream", "hellaswag", "--output", str(figure)])
  assert exit_info.value.code == 2 and "its sets: ['addition'" in capsys.readouterr().err
