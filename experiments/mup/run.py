"""μP learning-rate transfer on the embedded corpus (experiments/mup/README.md).

For the causal decoder and the encoder-decoder, under the standard parametrization and
under μP, at widths 32-256 (8x), train one initialisation at 8 log-spaced peak learning
rates (t5x_lite/scaling/lr_sweep.py: vmapped over the rates, the same batches for all)
and record the final validation loss. Rows go to results.csv as each (architecture,
parametrization, width) finishes; a rerun skips those already there. Then plot.png
(loss against learning rate, one curve per width) and optima.md.

  python experiments/mup/run.py [--steps 200] [--widths 32 64 128 256] [--plot_only]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from t5x_lite import gin_utils
from t5x_lite.common import files
from t5x_lite.data import register_tasks  # noqa: E402
from t5x_lite.data.pipeline import get_batches  # noqa: E402
from t5x_lite.models.counting import count  # noqa: E402
from t5x_lite.scaling import coordcheck, lr_sweep  # noqa: E402
from t5x_lite.training import optim  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results.csv")
COLUMNS = ["architecture", "parametrization", "d_model", "params", "learning_rate", "loss"]
TASKS = {  # byte-level pydocs: full LM for the decoder, span corruption for the enc-dec
    "causal_decoder": ("pydocs.full_lm.byte", {"targets": 128}),
    "encoder_decoder": ("pydocs.span_corruption.byte", {"inputs": 128, "targets": 32}),
}
RATES = lr_sweep.log_spaced(2 ** -10, 2 ** -3, 8)  # 9.8e-4 ... 0.125, factors of 2


def base_model(architecture: str):
  base = gin_utils.model_config([os.path.join(HERE, "family.gin")])
  if architecture == "encoder_decoder":
    base = base.replace(architecture="encoder_decoder", num_encoder_layers=2,
                        num_decoder_layers=2)
  return base


def read_done() -> set:
  if not os.path.exists(RESULTS):
    return set()
  with open(RESULTS) as handle:
    return {(r["architecture"], r["parametrization"], int(r["d_model"]))
            for r in csv.DictReader(handle)}


def append_rows(rows: list[dict]) -> None:
  new = not os.path.exists(RESULTS)
  with open(RESULTS, "a", newline="") as handle:
    writer = csv.DictWriter(handle, COLUMNS)
    if new:
      writer.writeheader()
    writer.writerows(rows)


def run(args) -> None:
  register_tasks()
  done = read_done()
  schedule = optim.ScheduleConfig(warmup_steps=args.steps // 10)
  settings = optim.OptimizerConfig(weight_decay=0.01)
  for architecture, (task, lengths) in TASKS.items():
    train = get_batches(task, lengths, "train", args.batch_size, architecture, seed=0)
    batches = [next(train) for _ in range(args.steps)]
    validation = get_batches(task, lengths, "validation", args.batch_size, architecture,
                             seed=0, num_epochs=1)
    evaluation = [next(validation) for _ in range(args.eval_batches)]
    base = base_model(architecture)
    for parametrization in coordcheck.PARAMETRIZATIONS:
      for width in args.widths:
        if (architecture, parametrization, width) in done:
          continue
        config = coordcheck.widen(base, width, parametrization)
        params = count(config).params
        start = time.time()
        print(f"{architecture} {parametrization} d_model {width} ({params:,} params): "
              f"{len(RATES)} rates x {args.steps} steps", flush=True)
        result = lr_sweep.sweep_learning_rates(config, RATES, batches, evaluation, settings,
                                               schedule, progress=print)
        append_rows([dict(architecture=architecture, parametrization=parametrization,
                          d_model=width, params=params, learning_rate=rate, loss=loss)
                     for rate, loss in zip(result.learning_rates, result.losses)])
        print(f"  best {result.best:.2e} (vertex {result.vertex():.2e}), loss "
              f"{min(result.losses):.4f}; {time.time() - start:.0f} s", flush=True)


def report() -> None:
  """plot.png and optima.md from results.csv."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  with open(RESULTS) as handle:
    rows = list(csv.DictReader(handle))
  architectures = [a for a in TASKS if any(r["architecture"] == a for r in rows)]
  figure, axes = plt.subplots(len(architectures), 2, figsize=(11, 4.2 * len(architectures)),
                              squeeze=False)
  lines = ["| architecture | parametrization | " + " | ".join(
      f"d_model {w}" for w in sorted({int(r['d_model']) for r in rows})) + " | spread |",
      "|---|---|" + "---|" * (len({r['d_model'] for r in rows}) + 1)]
  for row_axes, architecture in zip(axes, architectures):
    for axis, parametrization in zip(row_axes, coordcheck.PARAMETRIZATIONS):
      optima = []
      widths = sorted({int(r["d_model"]) for r in rows if r["architecture"] == architecture
                       and r["parametrization"] == parametrization})
      colours = plt.cm.viridis(np.linspace(0, 0.9, len(widths)))
      for colour, width in zip(colours, widths):
        mine = [r for r in rows if r["architecture"] == architecture
                and r["parametrization"] == parametrization and int(r["d_model"]) == width]
        rates = [float(r["learning_rate"]) for r in mine]
        values = [float(r["loss"]) for r in mine]
        result = lr_sweep.SweepResult(rates, values)
        optimum = result.vertex()
        optima.append((width, optimum, result.bracketed, min(values)))
        axis.plot(rates, values, marker="o", color=colour, label=f"d_model {width}")
        axis.plot([optimum], [min(values)], marker="*", markersize=14, color=colour)
      axis.set_xscale("log", base=2)
      axis.set_xlabel("peak learning rate")
      axis.set_ylabel("validation loss (nats / byte)")
      finite = [float(r["loss"]) for r in rows if r["architecture"] == architecture
                and np.isfinite(float(r["loss"]))]
      axis.set_ylim(min(finite) - 0.05, min(max(finite), min(finite) + 1.5))
      axis.set_title(f"{architecture}, {parametrization}", fontsize=10)
      axis.grid(alpha=0.3)
      axis.legend(fontsize=7)
      if not optima:  # not run yet (an interrupted study's report)
        continue
      spread = max(o[1] for o in optima) / min(o[1] for o in optima)
      lines.append(f"| {architecture} | {parametrization} | " + " | ".join(
          f"{o[1]:.1e}{'' if o[2] else ' (edge)'} ({o[3]:.3f})" for o in optima)
          + f" | {spread:.1f}x |")
  figure.tight_layout()
  figure.savefig(os.path.join(HERE, "plot.png"), dpi=110)
  plt.close(figure)
  with files.atomic_write(os.path.join(HERE, "optima.md")) as handle:
    handle.write("Optimal peak learning rate per width (parabola vertex in log rate around "
                 "the best of the 8; best validation loss in brackets; spread: largest / "
                 "smallest optimum)\n\n" + "\n".join(lines) + "\n")
  print("\n".join(lines))


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--eval_batches", type=int, default=8)
  parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256])
  parser.add_argument("--plot_only", action="store_true")
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
  if not args.plot_only:
    run(args)
  report()


if __name__ == "__main__":
  main()
