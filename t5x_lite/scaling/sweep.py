"""Running a sweep plan (from `python -m t5x_lite.scaling plan`) and collecting RUNS.csv.

Each planned run is one `python -m t5x_lite.train` job in <sweep_dir>/<run id>,
configured by the plan's gin files and bindings plus the sweep's own (task,
learning rate, mesh: e.g. experiments/scaling/sweep.gin). Locally the runs go
one after another; a run whose metrics.jsonl already holds its final
evaluation is skipped, and an interrupted one resumes from its checkpoint,
so re-running the same command finishes a sweep; a run directory whose recorded
settings differ from the sweep's (a changed learning rate, say) is refused instead,
never skipped or resumed under the new ones. For a cluster,
`launch_commands` gives one shell command per run instead.

`collect` reads every finished run's evaluations into two tables: RUNS.csv
(one row per run: final validation loss, counted N, D = steps x batch x
length, C = D x counted FLOPs per token) for the isoflop and parametric
fits, and a training-curves table (one row per evaluation, with run and
step) for the envelope fit.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence, TextIO

from t5x_lite.common import files
from t5x_lite.common.errors import UserError
from t5x_lite.models.configs import LAYOUT_KNOBS
from t5x_lite.runs import run_dir
from t5x_lite.runs.spec import differences

RUNS_COLUMNS = ("run", "budget", "params", "tokens", "flops", "loss", "steps", "num_layers",
                "d_model", "d_ff", "experts", "settings", "stable", "seed")
# Recorded knobs that cannot change a run's result: a sweep may skip or resume a run that
# differs from it only in these. Everything else (the learning rate included) must match.
NEUTRAL_KNOBS = frozenset({
    "train.model_dir", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.peak_flops_per_device", "train.profile_start_step", "train.profile_steps",
    "train.allow_changes", *(f"TransformerConfig.{name}" for name in LAYOUT_KNOBS)})
CURVE_COLUMNS = ("run", "step", "params", "tokens", "flops", "loss")


class SweepError(UserError, ValueError):
  """A plan file or sweep directory that cannot be used; the message says what to fix."""


def settings_fingerprint(spec_json: dict) -> str:
  """A short hash of a recorded spec's result-bearing settings (all but NEUTRAL_KNOBS):
  RUNS.csv carries it, so rows trained under different settings are told apart."""
  kept = {section: {key: value for key, value in values.items()
                    if f"{section}.{key}" not in NEUTRAL_KNOBS}
          for section, values in spec_json.items() if isinstance(values, dict)}
  return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def changed_settings(model_dir: str, current: dict) -> dict:
  """{knob: (recorded, now)} where a run directory's recorded spec differs from the spec
  its run would record now (neutral knobs aside); {} when nothing was recorded yet."""
  record = run_dir.read_record(model_dir)
  if record is None:
    return {}
  return {knob: values for knob, values in differences(record["spec"], current).items()
          if knob not in NEUTRAL_KNOBS}


def read_plan(path: str) -> dict:
  if not os.path.isfile(path):
    raise SweepError(f"plan {path!r} does not exist; write one with "
                     "`python -m t5x_lite.scaling plan ... --output PLAN.json`.")
  try:
    with open(path) as handle:
      plan = json.load(handle)
    missing = [key for key in ("gin_files", "batch_size", "targets_length", "runs")
               if key not in plan]
  except (json.JSONDecodeError, TypeError) as error:
    raise SweepError(f"plan {path!r} is not a plan written by `scaling plan`: {error}") from None
  if missing:
    raise SweepError(f"plan {path!r} lacks {missing}; write it with `scaling plan --output`.")
  return plan


def _feature_lengths(plan: dict, run: dict) -> str:
  if "feature_lengths" in run:  # runs of different objectives (experiments/...)
    return repr(dict(run["feature_lengths"]))
  lengths = {"targets": plan["targets_length"]}
  if plan.get("inputs_length"):
    lengths = {"inputs": plan["inputs_length"], **lengths}
  return repr(lengths)


def train_args(plan: dict, run: dict, sweep_dir: str, gin_files: Sequence[str] = (),
               gin_bindings: Sequence[str] = (), warmup_fraction: float = 0.05,
               evaluations: int = 8) -> list[str]:
  """`python -m t5x_lite.train` arguments for one planned run.

  The sweep's own gin files come first and the plan's family after them, so
  the family's preset is what the shape bindings modify; command-line
  bindings come last and win. A run may carry its own "gin_files" and
  "feature_lengths" (studies that mix architectures and objectives).
  """
  steps = int(run["steps"])
  every = max(1, steps // max(1, evaluations))
  run_files = run.get("gin_files", plan["gin_files"])  # a run may name its own model
  args = [f"--gin_file={path}" for path in (*gin_files, *run_files)]
  args += [f"--gin_search_paths={path}" for path in plan.get("gin_search_paths", [])]
  warmup = run.get("warmup_steps", max(1, round(warmup_fraction * steps)))
  bindings = [*plan.get("gin_bindings", []), *run["bindings"],
              f"MODEL_DIR = {os.path.join(sweep_dir, run['id'])!r}",
              f"TRAIN_STEPS = {steps}", f"BATCH_SIZE = {plan['batch_size']}",
              f"TASK_FEATURE_LENGTHS = {_feature_lengths(plan, run)}",
              f"WARMUP_STEPS = {warmup}",
              f"train.eval_every = {every}", f"train.checkpoint_every = {every}",
              *_wsd_bindings(run, sweep_dir), *gin_bindings]
  for binding in bindings:
    key, _, value = binding.partition("=")
    args.append(f"--gin.{key.strip()}={value.strip()}")
  return args


def _wsd_bindings(run: dict, sweep_dir: str) -> list[str]:
  """A WSD family's schedule (scaling/planning.wsd_family): the stable run holds the
  peak and keeps its fork points; a branch decays from its fork of the stable run."""
  if run.get("role") == "stable":
    return ["make_schedule.name = 'constant'", f"train.keep_steps = {run['keep_steps']}"]
  if run.get("role") == "branch":
    return ["make_schedule.name = 'wsd'",
            f"make_schedule.decay_fraction = {run['decay_fraction']!r}",
            f"train.fork_from = {os.path.join(sweep_dir, run['parent'])!r}",
            f"train.fork_step = {run['fork_step']}"]
  return []


def compute(run: dict) -> float:
  """What training `run` computes: a branch only its decay, any other run all of it."""
  return float(run.get("own_flops", run["flops"]))


def launch_commands(plan: dict, sweep_dir: str, **kwargs) -> list[str]:
  """One shell command per run (for a cluster's job scripts)."""
  return [shlex.join([sys.executable, "-m", "t5x_lite.train",
                      *train_args(plan, run, sweep_dir, **kwargs)]) for run in plan["runs"]]


def evaluations(model_dir: str) -> list[dict]:
  """The eval rows of a run's metrics.jsonl, by step (the last write of a step wins)."""
  path = os.path.join(model_dir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  rows = {}
  with open(path) as handle:
    for line in handle:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # A line cut short by a kill: ignore it.
        continue
      if row.get("split") == "eval":
        rows[int(row["step"])] = row
  return [rows[step] for step in sorted(rows)]


def is_finished(run: dict, sweep_dir: str) -> bool:
  rows = evaluations(os.path.join(sweep_dir, run["id"]))
  return bool(rows) and rows[-1]["step"] >= int(run["steps"])


def _subprocess_train(args: list[str], log_path: str, stream: TextIO) -> int:
  """Runs the trainer in a child process, echoing its output to `stream` and a log."""
  with open(log_path, "a") as log:
    child = subprocess.Popen([sys.executable, "-m", "t5x_lite.train", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in child.stdout:
      log.write(line)
      stream.write("    " + line)
      stream.flush()
    return child.wait()


def run_sweep(plan: dict, sweep_dir: str, *, gin_files: Sequence[str] = (),
              gin_bindings: Sequence[str] = (), warmup_fraction: float = 0.05,
              evaluations_per_run: int = 8, stream: TextIO = sys.stdout,
              train: Optional[Callable[[list[str], str, TextIO], int]] = None,
              settings: Optional[Callable[[list[str]], dict]] = None,
              rerun_changed: bool = False) -> list[str]:
  """Trains every unfinished run of `plan` in turn; returns the ids of runs that failed.

  settings: the spec a run's train arguments would record (what the trainer writes to
  spec.json). A run directory that recorded other settings (NEUTRAL_KNOBS aside) is never
  skipped as finished nor resumed: it is refused, naming the knobs, before anything
  trains, or with `rerun_changed` moved aside (<id>.replaced-<fingerprint>) and trained
  again.
  """
  train = train or _subprocess_train
  os.makedirs(sweep_dir, exist_ok=True)
  runs = plan["runs"]
  arguments = {run["id"]: train_args(plan, run, sweep_dir, gin_files, gin_bindings,
                                     warmup_fraction, evaluations_per_run) for run in runs}
  if settings is not None:
    _reconcile(runs, sweep_dir, {run_id: settings(args) for run_id, args in arguments.items()},
               rerun_changed, stream)
  total_flops = sum(compute(run) for run in runs)
  done_flops, spent, failed = 0.0, 0.0, []
  for index, run in enumerate(runs, start=1):
    fork = (f" (branch of {run['parent']} from step {run['fork_step']})"
            if run.get("role") == "branch" else "")
    header = (f"[{index}/{len(runs)}] {run['id']}: {int(run['params']):,} params, "
              f"{int(run['steps'])} steps, {compute(run):.3g} FLOPs{fork}")
    if is_finished(run, sweep_dir):
      print(f"{header}: finished earlier, skipped", file=stream, flush=True)
      total_flops -= compute(run)
      continue
    if run.get("parent") in failed:
      print(f"{header}: skipped, its stable run failed", file=stream, flush=True)
      failed.append(run["id"])
      total_flops -= compute(run)
      continue
    print(header, file=stream, flush=True)
    model_dir = os.path.join(sweep_dir, run["id"])
    os.makedirs(model_dir, exist_ok=True)
    start = time.perf_counter()
    status = train(arguments[run["id"]], os.path.join(model_dir, "train.log"), stream)
    spent += time.perf_counter() - start
    done_flops += compute(run)
    if status != 0 or not is_finished(run, sweep_dir):
      failed.append(run["id"])
      print(f"{run['id']} failed (exit status {status}); see {model_dir}/train.log",
            file=stream, flush=True)
    remaining = spent / done_flops * (total_flops - done_flops)
    print(f"sweep: {done_flops / total_flops:.0%} of this session's FLOPs done, "
          f"{spent / 60:.1f} min so far, ETA {remaining / 60:.1f} min", file=stream, flush=True)
  return failed


def _reconcile(runs: list[dict], sweep_dir: str, current: dict[str, dict], rerun_changed: bool,
               stream: TextIO) -> None:
  """Refuses (or moves aside) every run directory whose recorded settings differ."""
  changed = {run["id"]: changed_settings(os.path.join(sweep_dir, run["id"]), current[run["id"]])
             for run in runs}
  changed = {run_id: knobs for run_id, knobs in changed.items() if knobs}
  if not changed:
    return
  if not rerun_changed:
    shown = "; ".join(f"{run_id}: {run_dir.format_changes(knobs)}"
                      for run_id, knobs in list(changed.items())[:3])
    raise SweepError(f"{len(changed)} run(s) in {sweep_dir} were trained with other settings "
                     f"than this sweep's ({shown}{'; ...' if len(changed) > 3 else ''}). "
                     "Restore those settings, sweep into a new --sweep_dir, or pass "
                     "--rerun_changed to move them aside and train them again.")
  for run_id in changed:
    model_dir = os.path.join(sweep_dir, run_id)
    aside = f"{model_dir}.replaced-{settings_fingerprint(run_dir.read_record(model_dir)['spec'])}"
    os.replace(model_dir, aside)
    print(f"{run_id}: trained with other settings; moved to {aside}, training it again",
          file=stream, flush=True)


def collect(plan: dict, sweep_dir: str, runs_csv: str,
            curves_csv: Optional[str] = None) -> tuple[int, list[str]]:
  """Writes RUNS.csv (and the curves table) from the finished runs.

  Returns (runs written, ids of unfinished runs left out).
  """
  rows, curves, unfinished = [], [], []
  for run in plan["runs"]:
    if run.get("role") == "stable":  # a shared prefix, not a point: its branches are
      if not is_finished(run, sweep_dir):
        unfinished.append(run["id"])
      continue
    evals = evaluations(os.path.join(sweep_dir, run["id"]))
    if not evals or evals[-1]["step"] < int(run["steps"]):
      unfinished.append(run["id"])
      continue
    flops_per_token = float(run["flops"]) / float(run["tokens"])
    tokens_per_step = float(run["tokens"]) / int(run["steps"])
    final = evals[-1]
    record = run_dir.read_record(os.path.join(sweep_dir, run["id"]))
    rows.append({"run": run["id"], "budget": run["budget"], "params": run["params"],
                 "tokens": run["tokens"], "flops": run["flops"], "loss": final["loss"],
                 "steps": run["steps"], "num_layers": run["num_layers"],
                 "d_model": run["d_model"], "d_ff": run["d_ff"],
                 # Plans written before MoE families existed are dense.
                 "experts": run.get("experts", 1.0),
                 "settings": settings_fingerprint(record["spec"]) if record else "",
                 "stable": run.get("parent", ""), "seed": run.get("seed", "")})
    for row in evals:
      tokens = round(int(row["step"]) * tokens_per_step)
      curves.append({"run": run["id"], "step": int(row["step"]), "params": run["params"],
                     "tokens": tokens, "flops": tokens * flops_per_token, "loss": row["loss"]})
  for path, columns, table in ((runs_csv, RUNS_COLUMNS, rows),
                               (curves_csv, CURVE_COLUMNS, curves)):
    if path:
      with files.atomic_write(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
  return len(rows), unfinished
