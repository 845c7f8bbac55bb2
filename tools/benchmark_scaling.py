"""Speed of the scaling-law fits (`make bench`): the full-grid approach-3 fit and a
1,000-sample bootstrap on 250 synthetic runs drawn from Epoch AI's law with 1% noise;
and the IsoFLOP fit with a 1,000-sample bootstrap on 5 budgets x 15 sizes, near each
minimum (the default) against all points (the earlier rule), side by side.

Targets: the grid fit under 30 s and the bootstrap under 5 minutes on 2 cores.

  python tools/benchmark_scaling.py [--runs 250] [--samples 1000]
"""

from __future__ import annotations

import time

import bench_cli
import numpy as np

from t5x_lite.scaling import isoflop, report
from t5x_lite.scaling.fitting import bootstrap_parametric, fit_parametric, percentile_interval
from t5x_lite.scaling.laws import preset
from t5x_lite.scaling.runs import Runs, RunsError


def synthetic_runs(count: int, noise: float, seed: int = 0):
  """IsoFLOP-like runs: N log-uniform in [1e7, 1e10], D log-uniform in [1e8, 1e11]."""
  rng = np.random.default_rng(seed)
  params = np.exp(rng.uniform(np.log(1e7), np.log(1e10), count))
  tokens = np.exp(rng.uniform(np.log(1e8), np.log(1e11), count))
  truth = preset("epoch-2024")
  loss = truth.loss(params, tokens) * np.exp(rng.normal(0, noise, count))
  return params, tokens, loss, truth


def main() -> None:
  parser = bench_cli.parser(__doc__)
  parser.add_argument("--runs", type=int, default=250)
  parser.add_argument("--samples", type=int, default=1000)
  args = parser.parse_args()
  params, tokens, loss, truth = synthetic_runs(args.runs, 0.01)
  start = time.perf_counter()
  law = fit_parametric(params, tokens, loss)
  fit_seconds = time.perf_counter() - start
  print(f"grid fit ({args.runs} runs, 4,500 starts): {fit_seconds:.1f} s -> alpha "
        f"{law.alpha:.3f} beta {law.beta:.3f} (true {truth.alpha:.3f}, {truth.beta:.3f})")
  start = time.perf_counter()
  laws = bootstrap_parametric(params, tokens, loss, samples=args.samples, start=law)
  boot_seconds = time.perf_counter() - start
  low, high = percentile_interval([sample.alpha for sample in laws])
  print(f"bootstrap ({args.samples} refits): {boot_seconds:.1f} s -> alpha 95% CI "
        f"({low:.3f}, {high:.3f})")
  rows = [(p, f / (6 * p), f) for f in np.logspace(18, 22, 5) for p in np.geomspace(1e7, 3e10, 15)]
  grid_params, grid_tokens, grid_flops = (np.array(column) for column in zip(*rows))
  noisy = truth.loss(grid_params, grid_tokens) * np.exp(
      np.random.default_rng(1).normal(0, 0.003, len(rows)))
  runs = Runs(params=grid_params, tokens=grid_tokens, loss=noisy, flops=grid_flops)
  for label, window in (("near the minimum", isoflop.NEAR_MINIMUM), ("all points", None)):
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    allocation, _ = isoflop.fit_isoflop(runs, window=window)
    exponents = []
    for _ in range(args.samples):
      try:
        exponents.append(isoflop.fit_isoflop(report.resample(runs, "isoflop", rng),
                                             window=window)[0].a)
      except RunsError:  # a resample without enough bracketed budgets
        continue
    seconds = time.perf_counter() - start
    a_low, a_high = percentile_interval(exponents)
    print(f"isoflop fit {label} + {args.samples} bootstrap refits: {seconds:.1f} s -> a "
          f"{allocation.a:.3f} [{a_low:.3f}, {a_high:.3f}] (true {truth.a:.3f})")


if __name__ == "__main__":
  main()
