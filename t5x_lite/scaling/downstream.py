"""Downstream metrics along a sweep: every finished run scored on question sets, beside
its loss, for emergence studies (Wei et al. 2022; Schaeffer et al. 2023).

Each run's newest checkpoint is scored by rank classification on each named set
(inference/multiple_choice.py: `zero_shot_suite`, the cloze sets, `addition`, a JSONL
path, multitask tasks) under four metrics: accuracy, exact match (greedy decoding
writes the correct answer), the correct answer's log-likelihood per token, and the
Brier score of the choice distribution. A run's scores are kept in its own directory
(downstream.json, with the checkpoint step they belong to and the question count), so
collecting again scores only what is new; DOWNSTREAM.csv has a row per run with its
compute, parameters, tokens and final loss, and a column per set and metric.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Optional, Sequence

from t5x_lite.common import files
from t5x_lite.inference import multiple_choice, textio
from t5x_lite.runs import loading, run_dir
from t5x_lite.scaling import sweep

FILE = "downstream.json"
METRICS = ("accuracy", "exact_match", "answer_logprob_per_token", "brier")


def _cached(model_dir: str, step: int, sets: Sequence[str], limit: Optional[int]) -> dict:
  path = os.path.join(model_dir, FILE)
  if not os.path.isfile(path):
    return {}
  with open(path) as handle:
    record = json.load(handle)
  if record.get("step") != step or record.get("limit") != limit:
    return {}
  return {name: scores for name, scores in record["sets"].items() if name in sets}


def evaluate_run(model_dir: str, sets: Sequence[str], limit: Optional[int] = None) -> dict:
  """{set: {metric: value, "questions": n}} of the run's newest checkpoint (the first
  `limit` questions of each set), reusing and updating MODEL_DIR/downstream.json."""
  step, model = loading.newest_model(model_dir)
  sets = list(sets)
  scores = _cached(model_dir, step, sets, limit)
  missing = [name for name in sets if name not in scores]
  if missing:
    task = run_dir.read_record(model_dir)["spec"]["train"]["task"]
    _, vocabulary, _ = textio.task_vocabularies(task)
    for name, questions in multiple_choice.question_sets(missing, limit).items():
      outcome = multiple_choice.rank_classify(model, vocabulary, questions)
      scores[name] = {**{metric: outcome[metric] for metric in METRICS},
                      "questions": outcome["questions"], "chance": outcome["chance"]}
    with files.atomic_write(os.path.join(model_dir, FILE)) as handle:
      json.dump({"step": step, "limit": limit, "sets": scores}, handle, indent=1)
  return scores


def collect(plan: dict, sweep_dir: str, sets: Sequence[str], path: str,
            limit: Optional[int] = None) -> int:
  """Scores every finished run of `plan` (stable phases aside) and writes DOWNSTREAM.csv;
  returns the rows written."""
  rows = []
  for run in plan["runs"]:
    model_dir = os.path.join(sweep_dir, run["id"])
    if run.get("role") == "stable" or not sweep.is_finished(run, sweep_dir):
      continue
    scores = evaluate_run(model_dir, sets, limit)
    row = {"run": run["id"], "params": run["params"], "tokens": run["tokens"],
           "flops": run["flops"], "loss": sweep.evaluations(model_dir)[-1]["loss"]}
    for name, values in scores.items():
      row.update({f"{name}/{metric}": values[metric] for metric in (*METRICS, "chance")})
    rows.append(row)
  columns = list(dict.fromkeys(key for row in rows for key in row))
  with files.atomic_write(path) as handle:
    writer = csv.DictWriter(handle, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  return len(rows)
