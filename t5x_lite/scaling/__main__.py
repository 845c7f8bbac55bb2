"""`python -m t5x_lite.scaling COMMAND ...`: the scaling-law toolkit's command line.

  count   parameters and training FLOPs per token of a gin model config:
          python -m t5x_lite.scaling count --gin_file=gin/models/gpt3_1_3b.gin [--json]
  optimal compute-optimal parameters and tokens of a published law at a budget:
          python -m t5x_lite.scaling optimal --law chinchilla-approach1 --budget 5.76e23
              [--topology v5p:8x8x16 [--mfu 0.4] [--price 4.2] [--power W]]
          (with a topology: wall-clock, chip-hours, energy and cost of that run)
  cost    time, chip-hours, energy and cost of a number of training FLOPs:
          python -m t5x_lite.scaling cost --flops 3.14e23 --flops_per_chip 28e12 \
              --price 1.5 [--chips 1024] [--power 300]
          python -m t5x_lite.scaling cost --flops 1e23 --topology h100:128x8 [--mfu 0.4]
  fit     fit a runs table (see t5x_lite/scaling/runs.py for its columns):
          python -m t5x_lite.scaling fit RUNS.csv \
              --method {parametric,isoflop,envelope,kaplan,experts,experts_data} \
              [--budget C] [--bootstrap K] [--plot out.png] [--json]
          (envelope reads training curves: rows with run and step, e.g. CURVES.csv)
          python -m t5x_lite.scaling fit DENSE_RUNS.csv MOE_RUNS.csv --method experts
          (dense and mixture-of-experts runs, an experts column: L(N, D, E), and how the
          compute-optimal active size moves with E; experts_data: E in the data term too)
  plan    model shapes and steps for an IsoFLOP sweep of a gin model family:
          python -m t5x_lite.scaling plan --gin_file=experiments/scaling/family.gin \
              --budgets 1e12 3e12 1e13 --batch_size 16 --targets_length 256 \
              [--sizes 5] [--spread 4] [--aspect_ratio 64] [--head_dim 64] [--output plan.json]
          (run it with tools/scaling_sweep.py)
          [--learning_rate LR | --tune_learning_rate [--learning_rates 1e-3 1e-1 8]]:
              one peak rate for every run; under μP (parametrization='mup' in the gin
              model) it transfers from the base width to every shape
          --refine RUNS.csv (instead of --budgets): sizes beyond every budget whose
              lowest loss sits at the edge of the sizes tried
  coordcheck  activation RMS against width after a few AdamW steps, standard vs μP
          (the gin model's d_model is the base width):
          python -m t5x_lite.scaling coordcheck --gin_file=models/tiny_causal_decoder.gin \
              --widths 64 128 256 512 --output coordcheck.png [--json slopes.json]
              [--steps 5] [--learning_rate 1e-2] [--batch_size 8] [--task TASK]
  plot    a 2 x 2 overview of a sweep: IsoFLOP profiles, loss-compute frontier, N_opt and
          D_opt of each fit with bootstrap bands, L(N, D) contours:
          python -m t5x_lite.scaling plot RUNS.csv --output study.png [--curves CURVES.csv]
              [--methods isoflop parametric] [--bootstrap 200]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Sequence

from t5x_lite import gin_utils
from t5x_lite.common import files as result_files
from t5x_lite.common.errors import ConfigError, at_least, file_errors, positive, run_cli
from t5x_lite.data import get_batches, register_tasks
from t5x_lite.models import counting, mup
from t5x_lite.pods import chips as pod_chips
from t5x_lite.pods import cost as pod_cost
from t5x_lite.pods import topology as pod_topology
from t5x_lite.scaling import coordcheck, downstream, laws, lr_sweep, planning
from t5x_lite.scaling import report as reports
from t5x_lite.scaling.plots import plot_downstream, plot_experts, plot_fit, plot_study
from t5x_lite.scaling.runs import read_runs, read_tables
from t5x_lite.training import optim


def _count(args, files, bindings, search_paths) -> None:
  if not files:
    raise gin_utils.GinConfigError("count needs --gin_file=gin/models/<preset>.gin.")
  config = gin_utils.model_config(files, bindings, search_paths)
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


def _add_pod_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--topology", help="price the run on this pod: "
                      + pod_topology.FORMS)
  parser.add_argument("--mfu", type=positive(), default=pod_cost.DEFAULT_MFU,
                      help=f"model FLOPs utilisation on the pod (default {pod_cost.DEFAULT_MFU})")
  parser.add_argument("--price", type=positive(), default=None, help="$ per chip-hour")
  parser.add_argument("--power", type=positive(), default=None,
                      help="watts per chip (default: the chip's datasheet figure)")


def _pod_run_cost(args, flops: float) -> pod_cost.RunCost | None:
  """The cost of `flops` on args.topology at args.mfu, or None without a topology."""
  if not args.topology:
    return None
  if args.mfu > 1:
    raise ConfigError(f"--mfu is a fraction of peak, at most 1; got {args.mfu}.")
  pod = pod_topology.parse(args.topology)
  return pod_cost.run_cost(flops, pod.num_chips, pod.chip.peak_flops * args.mfu,
                           args.power or pod.chip.power_watts, args.price)


def _cost_fields(run: pod_cost.RunCost) -> dict:
  return {"chips": run.chips, "effective_flops_per_chip": run.effective_flops_per_chip,
          "seconds": run.seconds, "days": run.days, "chip_hours": run.chip_hours,
          "energy_kwh": run.energy_kwh, "cost": run.cost}


def _optimal(args) -> None:
  if not (args.budget > 0 and args.budget < float("inf")):
    raise ConfigError(f"--budget must be a positive number of FLOPs, got {args.budget}.")
  allocation = laws.preset(args.law).optimal(args.budget)
  run = _pod_run_cost(args, allocation.flops)
  if args.json:
    print(json.dumps({"law": args.law, **allocation.as_dict(),
                      **({"topology": args.topology, "mfu": args.mfu, **_cost_fields(run)}
                         if run else {})}))
    return
  print(f"law:              {args.law}")
  print(f"budget:           {allocation.flops:.3e} FLOPs")
  print(f"params (N_opt):   {allocation.params:.4g}")
  print(f"tokens (D_opt):   {allocation.tokens:.4g}")
  print(f"tokens/param:     {allocation.tokens_per_param:.1f}")
  if allocation.loss is not None:
    print(f"predicted loss:   {allocation.loss:.4f}")
  if run:
    print(f"on {args.topology} at MFU {100 * args.mfu:.0f}%: {pod_cost.describe(run)}")


def _cost(args) -> None:
  if args.topology and args.flops_per_chip:
    raise ConfigError("give --topology (with --mfu) or --flops_per_chip, not both.")
  if args.topology:
    run = _pod_run_cost(args, args.flops)
  elif args.flops_per_chip:
    run = pod_cost.run_cost(args.flops, args.chips, args.flops_per_chip, args.power,
                            args.price)
  else:
    raise ConfigError("cost needs --topology (a pod, with --mfu) or --flops_per_chip (the "
                      f"effective FLOP/s of one chip, e.g. {pod_chips.get('v100').peak_flops:.3g}"
                      " x MFU).")
  if args.json:
    print(json.dumps({"flops": args.flops, **_cost_fields(run)}))
    return
  print(f"{args.flops:.3e} FLOPs at {run.effective_flops_per_chip / 1e12:.1f} TFLOP/s per "
        f"chip: {pod_cost.describe(run)}")


def _plot_downstream(args) -> None:
  """plot --downstream SET: DOWNSTREAM.csv's metrics of one set along the sweep."""
  with file_errors("the downstream table", args.runs):
    with open(args.runs) as handle:
      rows = list(csv.DictReader(handle))
  available = sorted({key.split("/")[0] for row in rows for key in row if "/" in key})
  missing = [m for m in args.downstream_metrics if f"{args.downstream}/{m}" not in
             (rows[0] if rows else {})]
  if not rows or missing:
    raise ConfigError(f"{args.runs} has no {args.downstream!r} scores"
                      + (f" for {missing}" if rows else "") + f"; its sets: {available or 'none'}"
                      " (tools/scaling_sweep.py --downstream writes them).")
  plot_downstream(rows, args.downstream, args.downstream_metrics, args.output)
  print(f"plot: {args.output}")


def _plot(args) -> None:
  if args.downstream:
    _plot_downstream(args)
    return
  runs = read_runs(args.runs)
  curves = read_runs(args.curves) if args.curves else None
  fitted = []
  for method in args.methods:
    table = curves if method == "envelope" else runs
    if table is None:
      raise ConfigError("--methods envelope needs --curves CURVES.csv (training curves).")
    fitted.append(reports.fit_runs(table, method, args.budget, args.bootstrap, args.seed))
    print(f"{method}: a = {fitted[-1].parameters['a']:.3f}, b = {fitted[-1].parameters['b']:.3f}"
          if "a" in fitted[-1].parameters else f"{method}: fitted")

  plot_study(runs, fitted, args.output, curves)
  print(f"plot: {args.output}")


def _plan(args, files, bindings, search_paths) -> None:
  if not files:
    raise gin_utils.GinConfigError("plan needs the family's base model: --gin_file=<model>.gin.")
  base = gin_utils.model_config(files, bindings, search_paths)
  family = planning.Family(base, aspect_ratio=args.aspect_ratio, head_dim=args.head_dim,
                           ffn_ratio=args.ffn_ratio)
  lengths = dict(batch_size=args.batch_size, targets_length=args.targets_length,
                 inputs_length=args.inputs_length)
  notes: list[str] = []
  # --sizes means "per budget" or "per refined edge": unset, each function's default holds.
  sizes = {} if args.sizes is None else {"sizes": args.sizes}
  if args.refine:
    runs, notes = planning.refine(family, read_runs(args.refine), max_params=args.max_params,
                                  **sizes, **lengths)
  else:
    runs = planning.plan_sweep(
        family, args.budgets, spread=args.spread, tokens_per_param=args.tokens_per_param,
        min_params=args.min_params, max_params=args.max_params, share_shapes=args.wsd,
        **sizes, **lengths)
  for problem in planning.bracketing_problems(runs, family) if not args.refine else []:
    print(f"warning: {problem}", file=sys.stderr)
  tuned = None
  learning_rate = args.learning_rate
  if args.tune_learning_rate and runs:
    tuned = _tune_learning_rate(args, planning.with_learning_rate(runs, None))
    learning_rate = tuned["learning_rate"]
  runs = planning.with_learning_rate(runs, learning_rate)
  if learning_rate is not None and runs and not mup.is_mup(runs[0].config):
    print("warning: under the standard parametrization one learning rate is tuned for the "
          "base width only; set TransformerConfig.parametrization = 'mup' to transfer it to "
          "every shape.", file=sys.stderr)
  plan = {"gin_files": list(files), "gin_bindings": list(bindings),
          "gin_search_paths": list(search_paths), "batch_size": args.batch_size,
          "inputs_length": args.inputs_length, "targets_length": args.targets_length,
          "family": {"aspect_ratio": args.aspect_ratio, "head_dim": args.head_dim,
                     "ffn_ratio": args.ffn_ratio, "tokens_per_param": args.tokens_per_param,
                     "spread": args.spread},
          "parametrization": base.parametrization, "learning_rate": learning_rate,
          "learning_rate_sweep": tuned, "refined_from": args.refine, "notes": notes,
          "runs": [run.as_dict() for run in runs]}
  family_plan = None
  if args.wsd:
    family_plan = planning.wsd_family(runs, decay_fraction=args.decay_fraction,
                                      warmup_fraction=args.warmup_fraction)
    plan["runs"] = family_plan.pop("runs")
    plan["wsd"] = family_plan
    for total in ("flops", "independent_flops"):
      family_plan[total] *= args.seeds
  plan["runs"] = planning.with_seeds(plan["runs"], args.seeds)
  plan["seeds"] = args.seeds
  if args.output:
    with result_files.atomic_write(args.output) as handle:
      json.dump(plan, handle, indent=1)
  if args.json:
    print(json.dumps(plan))
    return
  for note in notes:
    print(note)
  print(f"{'run':22s} {'layers':>6s} {'d_model':>7s} {'heads':>5s} {'d_ff':>5s} {'params':>11s} "
        f"{'steps':>7s} {'tokens':>11s} {'tok/param':>9s} {'FLOPs':>9s}")
  for run in runs:
    c = run.config
    print(f"{run.id:22s} {c.num_decoder_layers:6d} {c.d_model:7d} {c.num_heads:5d} "
          f"{c.d_ff:5d} {run.params:11,d} {run.steps:7d} {run.tokens:11,d} "
          f"{run.tokens_per_param:9.1f} {run.flops:9.3g}")
  if family_plan is not None:
    for entry in plan["runs"]:
      if entry["role"] == "stable":
        print(f"  {entry['id']}: stable phase of {entry['steps']} steps (warmup "
              f"{entry['warmup_steps']}), kept at steps {entry['keep_steps']}")
    print(f"WSD family: one stable run per shape, each run above a cooldown branch of it "
          f"(the last {args.decay_fraction:g} of its steps); {family_plan['flops']:.3g} FLOPs "
          f"against {family_plan['independent_flops']:.3g} for independent runs "
          f"({100 * family_plan['savings']:.0f}% saved)")
  total = sum(run.flops for run in runs) * args.seeds
  if args.seeds > 1:
    print(f"each run above trained with {args.seeds} seeds (ids -s0 ... -s{args.seeds - 1}): "
          f"{len(plan['runs'])} run directories")
  if learning_rate is not None:
    print(f"peak learning rate {learning_rate:.3g}" + (
        f" (μP, base width d_model {runs[0].config.mup_base_d_model})"
        if runs and mup.is_mup(runs[0].config) else ""))
  print(f"{len(runs) * args.seeds} runs, {total:.3g} FLOPs in all"
        + (f"; plan written to {args.output}" if args.output else ""))


def _tune_learning_rate(args, runs) -> dict:
  """A peak-rate sweep of the plan's narrowest shape (the μP base width) on the task."""
  base = min(runs, key=lambda run: (run.config.d_model, run.params)).config
  register_tasks()
  task = args.task or coordcheck.DEFAULT_TASKS[base.architecture][0]
  lengths = {"targets": args.targets_length}
  if args.inputs_length:
    lengths["inputs"] = args.inputs_length
  train = get_batches(task, lengths, "train", args.batch_size, base.architecture, seed=0)
  batches = [next(train) for _ in range(args.tune_steps)]
  validation = get_batches(task, lengths, "validation", args.batch_size, base.architecture,
                           seed=0)
  evaluation = [next(validation) for _ in range(8)]
  low, high, count = args.learning_rates
  rates = lr_sweep.log_spaced(low, high, int(count))
  print(f"tuning the peak learning rate at d_model {base.d_model} ({args.tune_steps} steps "
        f"on {task}, {len(rates)} rates {low:.2g}-{high:.2g})", file=sys.stderr)
  schedule = optim.ScheduleConfig(warmup_steps=max(1, args.tune_steps // 20))
  result = lr_sweep.sweep_learning_rates(base, rates, batches, evaluation,
                                         schedule=schedule)
  for rate, loss in zip(result.learning_rates, result.losses):
    print(f"  learning rate {rate:.3g}: validation loss {loss:.4f}", file=sys.stderr)
  if not result.bracketed:
    print(f"warning: the best learning rate {result.best:.3g} is at the edge of the rates "
          f"tried; widen --learning_rates beyond it.", file=sys.stderr)
  return {"d_model": base.d_model, "task": task, "steps": args.tune_steps,
          "learning_rates": result.learning_rates, "losses": result.losses,
          "bracketed": result.bracketed, "learning_rate": result.vertex()}


def _coordcheck(args, files, bindings, search_paths) -> None:
  if not files:
    raise gin_utils.GinConfigError("coordcheck needs the base model: --gin_file=<model>.gin.")
  base = gin_utils.model_config(files, bindings, search_paths)
  register_tasks()
  task, lengths = coordcheck.DEFAULT_TASKS[base.architecture]
  task = args.task or task
  batches = get_batches(task, lengths, "train", args.batch_size, base.architecture,
                        seed=args.seed)
  steps = [next(batches) for _ in range(args.steps)]
  probe = next(get_batches(task, lengths, "validation", args.batch_size, base.architecture,
                           seed=args.seed))
  print(f"coordinate check of {', '.join(files)} ({base.architecture}, base width "
        f"{base.d_model}) at widths {args.widths}: {args.steps} AdamW steps at learning rate "
        f"{args.learning_rate} on {task}")
  result = coordcheck.coordcheck(base, args.widths, steps, probe, args.learning_rate,
                                 args.seed, progress=print)
  for parametrization in result.slopes:
    name, slope = result.largest_slope(parametrization)
    print(f"{parametrization}: largest |log-log slope| {slope:+.2f} ({name})")
  coordcheck.plot(result, args.output, f"{', '.join(files)}: coordinate check")
  print(f"plot: {args.output}")
  if args.json:
    coordcheck.write_json(result, args.json)
    print(f"slopes: {args.json}")


def _fit(args) -> None:
  runs = read_tables(args.runs)
  fitted = reports.fit_runs(runs, args.method, args.budget, args.bootstrap, args.seed)
  if args.plot:
    (plot_experts if args.method in reports.EXPERTS_METHODS else plot_fit)(runs, fitted,
                                                                           args.plot)
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
  if fitted.scatter is None:
    print("run-to-run scatter: not measured (no replicates; sweep with seeds to measure it)")
  else:
    print(f"run-to-run scatter: {fitted.scatter:.4f} (pooled over replicates; the bootstrap "
          "redraws each point from its replicates)")
  for budget in fitted.budget_noise:
    print(f"  {budget.describe()}")
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
  count.add_argument("--targets_length", type=at_least(1), default=None,
                     help="decoder tokens per sequence (default: the config's max_length)")
  count.add_argument("--inputs_length", type=at_least(0), default=None,
                     help="encoder (or prefix) tokens (default: max_length for "
                     "encoder-decoders, 0 for decoders)")
  count.add_argument("--convention", choices=counting.CONVENTIONS, default="matmul")
  count.add_argument("--json", action="store_true", help="print one JSON object")
  optimal = commands.add_parser("optimal", help="compute-optimal N and D of a published law")
  optimal.add_argument("--law", required=True, choices=sorted(laws.PRESETS))
  optimal.add_argument("--budget", required=True, type=positive(), help="training FLOPs C")
  optimal.add_argument("--json", action="store_true", help="print one JSON object")
  _add_pod_arguments(optimal)
  cost = commands.add_parser("cost", help="time, chip-hours, energy and cost of training FLOPs")
  cost.add_argument("--flops", required=True, type=positive(), help="training FLOPs")
  cost.add_argument("--flops_per_chip", type=positive(), default=None,
                    help="effective FLOP/s of one chip (peak x MFU), instead of --topology")
  cost.add_argument("--chips", type=at_least(1), default=1, help="with --flops_per_chip")
  cost.add_argument("--json", action="store_true", help="print one JSON object")
  _add_pod_arguments(cost)
  fit = commands.add_parser("fit", help="fit a runs table and report the optimum")
  fit.add_argument("runs", nargs="+", help="CSV with params, tokens, loss [, flops, run, "
                   "step, experts]; several tables are fitted as one")
  fit.add_argument("--method", choices=reports.METHODS, default="parametric")
  fit.add_argument("--budget", type=positive(), default=None,
                   help="FLOPs for the optimum (default: the largest run's)")
  fit.add_argument("--bootstrap", type=at_least(0), default=0, help="bootstrap refits for 95%% CIs")
  fit.add_argument("--seed", type=int, default=0)
  fit.add_argument("--plot", help="write a figure of the fit here (.png, .pdf, .svg)")
  fit.add_argument("--json", action="store_true", help="print one JSON object")
  plan = commands.add_parser("plan", help="model shapes and steps for an IsoFLOP sweep of a "
                             "gin model family (--gin_file, --gin.KEY=VALUE)")
  plan.add_argument("--budgets", type=positive(), nargs="+", help="FLOPs per profile")
  plan.add_argument("--refine", metavar="RUNS.csv",
                    help="instead of --budgets: add sizes beyond the edge of every budget of a "
                    "finished sweep whose lowest loss is at its smallest or largest size")
  plan.add_argument("--learning_rate", type=positive(), default=None,
                    help="peak learning rate for every run (under μP: tuned at the base width)")
  plan.add_argument("--tune_learning_rate", action="store_true",
                    help="sweep the peak learning rate at the plan's narrowest shape first and "
                    "plan every run with the best")
  plan.add_argument("--learning_rates", type=float, nargs=3, default=[1e-3, 1e-1, 8],
                    metavar=("LOW", "HIGH", "COUNT"), help="the tuning sweep's rates")
  plan.add_argument("--tune_steps", type=at_least(1), default=200)
  plan.add_argument("--task", default=None, help="the tuning sweep's seqio task (default: "
                    "the architecture's pydocs byte task)")
  plan.add_argument("--batch_size", required=True, type=at_least(1), help="sequences per step")
  plan.add_argument("--targets_length", required=True, type=at_least(1),
                    help="decoder tokens per sequence (TASK_FEATURE_LENGTHS['targets'])")
  plan.add_argument("--inputs_length", type=at_least(0), default=0,
                    help="encoder/prefix tokens per sequence (TASK_FEATURE_LENGTHS['inputs'])")
  plan.add_argument("--sizes", type=at_least(1), default=None,
                    help="model sizes per budget (default 5); with --refine, sizes added "
                    "beyond each unbracketed budget's edge (default 2)")
  plan.add_argument("--spread", type=positive(), default=4.0,
                    help="sizes span [N*/spread, N* x spread] around the rule-of-thumb N*")
  plan.add_argument("--tokens_per_param", type=positive(), default=20.0,
                    help="where N* sits: D/N of the profile's centre (Chinchilla ~20)")
  plan.add_argument("--min_params", type=float, default=0.0)
  plan.add_argument("--max_params", type=float, default=float("inf"))
  plan.add_argument("--aspect_ratio", type=positive(), default=64.0, help="target d_model / layers")
  plan.add_argument("--head_dim", type=at_least(1), default=64)
  plan.add_argument("--ffn_ratio", type=float, default=None,
                    help="d_ff / d_model (default 8/3 for gated activations, else 4)")
  plan.add_argument("--wsd", action="store_true",
                    help="plan a WSD family: one stable run per shape, every run a cooldown "
                    "branch of it (t5x_lite/scaling/planning.py)")
  plan.add_argument("--decay_fraction", type=positive(), default=0.2,
                    help="with --wsd: the share of each run that decays (default 0.2)")
  plan.add_argument("--warmup_fraction", type=float, default=0.05,
                    help="with --wsd: warmup, as a share of each shape's shortest run")
  plan.add_argument("--seeds", type=at_least(1), default=1,
                    help="train every run with this many seeds (initialisation and data "
                    "order): replicates that measure the run-to-run scatter")
  plan.add_argument("--output", help="write the plan as JSON here (for tools/scaling_sweep.py)")
  plan.add_argument("--json", action="store_true", help="print the plan as one JSON object")
  check = commands.add_parser("coordcheck", help="activation RMS against width, standard vs "
                              "μP (--gin_file: the base model)")
  check.add_argument("--widths", required=True, type=at_least(1), nargs="+", help="d_model values")
  check.add_argument("--output", required=True, help="figure file (.png, .pdf, .svg)")
  check.add_argument("--json", help="also write the RMS values and slopes here")
  check.add_argument("--steps", type=at_least(1), default=5, help="AdamW steps before measuring")
  check.add_argument("--learning_rate", type=positive(), default=1e-2)
  check.add_argument("--batch_size", type=at_least(1), default=8)
  check.add_argument("--task", default=None, help="seqio task (default: the architecture's "
                     "pydocs byte task)")
  check.add_argument("--seed", type=int, default=0)
  plot = commands.add_parser("plot", help="a 2 x 2 overview figure of a sweep")
  plot.add_argument("runs", help="RUNS.csv (one row per run)")
  plot.add_argument("--output", required=True, help="figure file (.png, .pdf, .svg)")
  plot.add_argument("--curves", help="training curves (CURVES.csv) for the envelope")
  plot.add_argument("--methods", nargs="+", choices=reports.METHODS,
                    default=["isoflop", "parametric"])
  plot.add_argument("--budget", type=positive(), default=None)
  plot.add_argument("--bootstrap", type=at_least(0), default=100,
                    help="refits per method for the bands")
  plot.add_argument("--seed", type=int, default=0)
  plot.add_argument("--downstream", metavar="SET",
                    help="instead: the runs table is DOWNSTREAM.csv (tools/scaling_sweep.py "
                    "--downstream); draw this question set's metrics against compute and loss")
  plot.add_argument("--downstream_metrics", nargs="+", choices=downstream.METRICS,
                    default=["accuracy", "exact_match", "answer_logprob_per_token", "brier"])
  args = parser.parse_args(rest)
  def run() -> int:
    if args.command == "count":
      _count(args, files, bindings, search_paths)
    elif args.command == "optimal":
      _optimal(args)
    elif args.command == "cost":
      _cost(args)
    elif args.command == "fit":
      _fit(args)
    elif args.command == "plot":
      _plot(args)
    elif args.command == "coordcheck":
      _coordcheck(args, files, bindings, search_paths)
    elif args.command == "plan":
      if not args.budgets and not args.refine:
        raise planning.PlanError("plan needs --budgets (a new sweep) or --refine RUNS.csv.")
      _plan(args, files, bindings, search_paths)
    return 0

  run_cli(run)


if __name__ == "__main__":
  main()
