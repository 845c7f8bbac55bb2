"""Runs a scaling sweep plan and collects its RUNS.csv.

  # plan: python -m t5x_lite.scaling plan --gin_file=experiments/scaling/family.gin ... \
  #           --output plan.json
  python tools/scaling_sweep.py plan.json --sweep_dir /tmp/sweep \
      --gin_file=experiments/scaling/sweep.gin [--gin.KEY=VALUE ...] \
      [--runs_csv RUNS.csv] [--curves_csv CURVES.csv]
  python tools/scaling_sweep.py plan.json --sweep_dir gs://... --commands    # cluster
  python tools/scaling_sweep.py plan.json --sweep_dir /tmp/sweep --collect_only

Locally the runs train one after another through `python -m t5x_lite.train`;
finished runs are skipped and an interrupted one resumes, so the same
command finishes a sweep. --commands prints one launch command per run
instead. Afterwards the finished runs are collected into RUNS.csv (fit it
with `python -m t5x_lite.scaling fit RUNS.csv --method isoflop`) and the
training curves table (for --method envelope).
"""

from __future__ import annotations

import argparse
import os
import sys

from t5x_lite import gin_utils
from t5x_lite.scaling import downstream, sweep


def recorded_settings(train_args: list[str]) -> dict:
  """The spec `python -m t5x_lite.train` would record for these arguments (spec.json)."""
  gin_utils.parse_flags(train_args)
  return gin_utils.resolve_train_spec().to_json()


def main(argv: list[str]) -> int:
  try:
    files, bindings, search_paths, rest = gin_utils.rewrite_gin_args(argv)
  except gin_utils.GinConfigError as error:
    gin_utils.fail(str(error))
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("plan", help="JSON written by `python -m t5x_lite.scaling plan --output`")
  parser.add_argument("--sweep_dir", required=True, help="one MODEL_DIR per run goes here")
  parser.add_argument("--runs_csv", help="default: <sweep_dir>/RUNS.csv")
  parser.add_argument("--curves_csv", help="default: <sweep_dir>/CURVES.csv")
  parser.add_argument("--warmup_fraction", type=float, default=0.05,
                      help="WARMUP_STEPS as a share of each run's steps")
  parser.add_argument("--evaluations", type=int, default=8,
                      help="validation evaluations (and checkpoints) per run")
  parser.add_argument("--commands", action="store_true",
                      help="print one launch command per run instead of running them")
  parser.add_argument("--collect_only", action="store_true", help="only write the tables")
  parser.add_argument("--rerun_changed", action="store_true",
                      help="move runs trained with other settings aside and train them again "
                      "(by default such runs are refused)")
  parser.add_argument("--downstream", nargs="+", metavar="SET",
                      help="also score every finished run on these question sets "
                      "(zero_shot_suite, pydocs_cloze, addition, a JSONL path...) into "
                      "DOWNSTREAM.csv: accuracy, exact match, answer log-likelihood, Brier")
  parser.add_argument("--downstream_limit", type=int,
                      help="the first N questions of each set (default: all)")
  parser.add_argument("--downstream_csv", help="default: <sweep_dir>/DOWNSTREAM.csv")
  args = parser.parse_args(rest)
  try:
    plan = sweep.read_plan(args.plan)
    if search_paths:
      plan["gin_search_paths"] = [*plan.get("gin_search_paths", []), *search_paths]
    options = dict(gin_files=files, gin_bindings=bindings, warmup_fraction=args.warmup_fraction,
                   evaluations=args.evaluations)
    if args.commands:
      print("\n".join(sweep.launch_commands(plan, args.sweep_dir, **options)))
      return 0
    failed = []
    if not args.collect_only:
      failed = sweep.run_sweep(plan, args.sweep_dir, gin_files=files, gin_bindings=bindings,
                               warmup_fraction=args.warmup_fraction,
                               evaluations_per_run=args.evaluations,
                               settings=recorded_settings, rerun_changed=args.rerun_changed)
    runs_csv = args.runs_csv or os.path.join(args.sweep_dir, "RUNS.csv")
    curves_csv = args.curves_csv or os.path.join(args.sweep_dir, "CURVES.csv")
    written, unfinished = sweep.collect(plan, args.sweep_dir, runs_csv, curves_csv)
    if args.downstream:
      # The runs' tasks as the runs registered them (a mixture bound in gin among them):
      # scoring reads the vocabulary of each run's recorded task.
      gin_utils.parse([*plan["gin_files"], *files], [*plan["gin_bindings"], *bindings],
                      plan.get("gin_search_paths", []))
      gin_utils.register_tasks()
      downstream_csv = args.downstream_csv or os.path.join(args.sweep_dir, "DOWNSTREAM.csv")
      scored = downstream.collect(plan, args.sweep_dir, args.downstream, downstream_csv,
                                  args.downstream_limit)
      print(f"{scored} runs scored on {', '.join(args.downstream)} in {downstream_csv}")
  except (sweep.SweepError, gin_utils.UserError, OSError) as error:
    gin_utils.fail(str(error))
  print(f"{written} finished runs in {runs_csv} (training curves: {curves_csv})")
  if unfinished:
    print(f"not finished: {', '.join(unfinished)}")
  if failed:
    print(f"error: runs failed: {', '.join(failed)}; their train.log says why", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
