"""`python -m t5x_lite.scaling COMMAND ...`: the scaling-law toolkit's command line.

  count   parameters and training FLOPs per token of a gin model config:
          python -m t5x_lite.scaling count --gin_file=gin/models/gpt3_1_3b.gin [--json]
  optimal compute-optimal parameters and tokens of a published law at a budget:
          python -m t5x_lite.scaling optimal --law chinchilla-approach1 --budget 5.76e23
  fit     fit a runs table (see t5x_lite/scaling/runs.py for its columns):
          python -m t5x_lite.scaling fit RUNS.csv --method {parametric,isoflop}
              [--budget C] [--bootstrap K] [--plot out.png] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from t5x_lite import gin_utils
from t5x_lite.scaling import counting, laws


def load_model_config(files: Sequence[str], bindings: Sequence[str],
                      search_paths: Sequence[str]):
  from t5x_lite.models.configs import TransformerConfig

  gin_utils.parse(files, bindings, search_paths)
  try:
    return TransformerConfig()
  except (ValueError, TypeError) as error:
    raise gin_utils.GinConfigError(str(error)) from None


def _count(args, files, bindings, search_paths) -> None:
  if not files:
    raise gin_utils.GinConfigError("count needs --gin_file=gin/models/<preset>.gin.")
  config = load_model_config(files, bindings, search_paths)
  counts = counting.count(config, targets_length=args.targets_length,
                          inputs_length=args.inputs_length, convention=args.convention)
  if args.json:
    print(json.dumps(counts.as_dict()))
    return
  print(f"model:                {', '.join(files)} ({config.architecture})")
  print(f"params:               {counts.params:,} ({counts.params / 1e9:.3f}B)")
  print(f"non_embedding_params: {counts.non_embedding_params:,}")
  print(f"tokens_per_sequence:  {counts.tokens_per_sequence:,}")
  print(f"flops_per_token:      {counts.flops_per_token:.4e} (training, {args.convention} "
        "convention)")
  print(f"flops_per_token_6n:   {counts.flops_per_token_6n:.4e} (6 x params)")


def _optimal(args) -> None:
  if not (args.budget > 0 and args.budget < float("inf")):
    raise ValueError(f"--budget must be a positive number of FLOPs, got {args.budget}.")
  allocation = laws.preset(args.law).optimal(args.budget)
  if args.json:
    print(json.dumps({"law": args.law, **allocation.as_dict()}))
    return
  print(f"law:              {args.law}")
  print(f"budget:           {allocation.flops:.3e} FLOPs")
  print(f"params (N_opt):   {allocation.params:.4g}")
  print(f"tokens (D_opt):   {allocation.tokens:.4g}")
  print(f"tokens/param:     {allocation.tokens_per_param:.1f}")
  if allocation.loss is not None:
    print(f"predicted loss:   {allocation.loss:.4f}")


def _fit(args) -> None:
  from t5x_lite.scaling import report as reports
  from t5x_lite.scaling.runs import read_runs

  runs = read_runs(args.runs)
  fitted = reports.fit_runs(runs, args.method, args.budget, args.bootstrap, args.seed)
  if args.plot:
    from t5x_lite.scaling.plots import plot_fit
    plot_fit(runs, fitted, args.plot)
  if args.json:
    print(json.dumps(fitted.as_dict()))
    return

  def line(name, value):
    interval = fitted.intervals.get(name)
    shown = f"  95% CI [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else ""
    print(f"  {name:17s} {value:.4g}{shown}")

  print(f"{fitted.method} fit of {fitted.runs} runs"
        + (f", {fitted.bootstrap_samples} bootstrap refits" if fitted.bootstrap_samples else ""))
  for name, value in fitted.parameters.items():
    line(name, value)
  print(f"compute-optimal at C = {fitted.budget:.3e} FLOPs:")
  for name, value in fitted.optimal.items():
    line(name, value)
  if args.plot:
    print(f"plot: {args.plot}")


def main(argv: Sequence[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    files, bindings, search_paths, rest = gin_utils.rewrite_gin_args(argv)
  except gin_utils.GinConfigError as error:
    gin_utils.fail(str(error))
  parser = argparse.ArgumentParser(prog="python -m t5x_lite.scaling", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  count = commands.add_parser("count", help="parameters and FLOPs of a gin model config "
                              "(--gin_file, --gin.KEY=VALUE, --gin_search_paths)")
  count.add_argument("--targets_length", type=int, default=None,
                     help="decoder tokens per sequence (default: the config's max_length)")
  count.add_argument("--inputs_length", type=int, default=None,
                     help="encoder (or prefix) tokens (default: max_length for "
                     "encoder-decoders, 0 for decoders)")
  count.add_argument("--convention", choices=counting.CONVENTIONS, default="matmul")
  count.add_argument("--json", action="store_true", help="print one JSON object")
  optimal = commands.add_parser("optimal", help="compute-optimal N and D of a published law")
  optimal.add_argument("--law", required=True, choices=sorted(laws.PRESETS))
  optimal.add_argument("--budget", required=True, type=float, help="training FLOPs C")
  optimal.add_argument("--json", action="store_true", help="print one JSON object")
  fit = commands.add_parser("fit", help="fit a runs table and report the optimum")
  fit.add_argument("runs", help="CSV with params, tokens, loss [, flops, run, step]")
  fit.add_argument("--method", choices=["parametric", "isoflop"], default="parametric")
  fit.add_argument("--budget", type=float, default=None,
                   help="FLOPs for the optimum (default: the largest run's)")
  fit.add_argument("--bootstrap", type=int, default=0, help="bootstrap refits for 95%% CIs")
  fit.add_argument("--seed", type=int, default=0)
  fit.add_argument("--plot", help="write a figure of the fit here (.png, .pdf, .svg)")
  fit.add_argument("--json", action="store_true", help="print one JSON object")
  args = parser.parse_args(rest)
  try:
    if args.command == "count":
      _count(args, files, bindings, search_paths)
    elif args.command == "optimal":
      _optimal(args)
    elif args.command == "fit":
      _fit(args)
  except (gin_utils.GinConfigError, ValueError, OSError) as error:
    gin_utils.fail(str(error))


if __name__ == "__main__":
  main()
