"""`plan`: compute budgets and a size range -> concrete model shapes and step counts.

A family is a base model config (a gin preset) whose width and depth are
varied by one rule:
  - heads of `head_dim` (64 by default); d_model is a multiple of head_dim;
  - aspect ratio: d_model / num_layers is kept near `aspect_ratio` (Kaplan et
    al. found loss flat over 20-200; 64 by default). Of the shapes whose ratio
    lies within a factor 2 of it, the one whose counted parameters N are
    nearest the target (in log) wins (an MoE family's N is its active parameters, what
    a token's FLOPs scale with; counting.py), ties (within 2%) going to the ratio
    nearest `aspect_ratio`;
  - d_ff = 4 d_model, or 8/3 d_model for gated (GLU) activations so the MLP
    keeps its parameter count, rounded to a multiple of head_dim.
Each budget C gets `sizes` targets log-spaced over [N*/spread, N* x spread]
around the N* that would see `tokens_per_param` tokens per parameter
(Chinchilla's ~20 unless told otherwise), clipped to [min_params,
max_params]. FLOPs are the family's exact count (t5x_lite.models.counting,
matmul convention: attention and logits included, which at small widths
and long sequences is well above 6N), so N* solves C = flops_per_token(N*)
x tokens_per_param x N*, and each run's steps = D / (batch x length) with
D = C / flops_per_token: every run of a budget costs C.

Learning rates: a plan may carry one peak learning rate (given, or tuned by a sweep of
the narrowest shape, lr_sweep.py). Under μP (the family's base config has
parametrization="mup" and mup_base_d_model; shapes narrower than it are never planned)
the one rate transfers to every shape; under the standard parametrization it is optimal only
near the width it was tuned at.

Refining: `refine` reads a finished sweep's runs and, for each budget whose lowest loss
sits at the smallest or largest size tried, plans sizes beyond that edge.

WSD families (`wsd_family`): a warmup-stable-decay schedule's stable phase does not
depend on the run's length (Hägele et al. 2024), so the runs of one shape across the
budgets can share it. Each shape gets one stable run (warmup then constant, to the
latest fork point, keeping a checkpoint at each) and each planned run becomes a
cooldown branch of it: forked where its own WSD schedule's decay begins (the last
`decay_fraction` of its steps), it trains only the decay, and equals the from-scratch
WSD run of its length (training/forking.py). The plan's FLOPs are then the stable
runs' plus the branches' decays, against the sum of the independent runs'.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import optimize

from t5x_lite.common.errors import UserError
from t5x_lite.models import counting, mup
from t5x_lite.models.configs import TransformerConfig
from t5x_lite.runs.spec import OptimizerConfigError, ScheduleConfig
from t5x_lite.scaling import isoflop
from t5x_lite.scaling.runs import Runs


class PlanError(UserError, ValueError):
  """A plan request that cannot be met; the message names the option to change."""


@dataclasses.dataclass(frozen=True)
class Family:
  """The shape rule of a model family (see the module docstring)."""
  base: TransformerConfig
  aspect_ratio: float = 64.0
  head_dim: int = 64
  ffn_ratio: Optional[float] = None  # None: 8/3 when gated, else 4
  max_layers: int = 128

  def shape(self, num_layers: int, d_model: int) -> TransformerConfig:
    ratio = self.ffn_ratio or (8 / 3 if self.base.gated else 4.0)
    d_ff = max(self.head_dim, int(round(ratio * d_model / self.head_dim)) * self.head_dim)
    encoder_layers = num_layers if self.base.is_encoder_decoder else 0
    return dataclasses.replace(self.base, d_model=d_model, num_decoder_layers=num_layers,
                               num_encoder_layers=encoder_layers,
                               num_heads=d_model // self.head_dim, num_kv_heads=None,
                               head_dim=self.head_dim, d_ff=d_ff)

  def candidates(self) -> list[tuple[int, TransformerConfig]]:
    """(params, config) of every shape whose aspect ratio is within a factor 2 of the rule."""
    found = []
    # Under μP, no shape narrower than the base width the learning rate transfers from.
    narrowest = self.base.mup_base_d_model if mup.is_mup(self.base) else self.head_dim
    for num_layers in range(1, self.max_layers + 1):
      low = max(math.ceil(narrowest / self.head_dim),
                math.ceil(self.aspect_ratio * num_layers / 2 / self.head_dim))
      high = math.floor(self.aspect_ratio * num_layers * 2 / self.head_dim)
      for heads in range(low, high + 1):
        config = self.shape(num_layers, heads * self.head_dim)
        found.append((counting.count_params(config, active=True)[0], config))
    return found

  def nearest(self, target_params: float, candidates=None) -> TransformerConfig:
    """The shape whose parameter count is nearest `target_params` (see the docstring)."""
    candidates = candidates or self.candidates()
    distance = np.array([abs(math.log(params / target_params)) for params, _ in candidates])
    close = np.flatnonzero(distance <= distance.min() + 0.02)

    def aspect_miss(index):
      config = candidates[index][1]
      return abs(math.log(config.d_model / config.num_decoder_layers / self.aspect_ratio))

    return candidates[min(close, key=aspect_miss)][1]


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  id: str
  budget: float
  config: TransformerConfig
  params: int
  flops_per_token: float
  steps: int
  tokens: int
  flops: float
  learning_rate: Optional[float] = None

  @property
  def tokens_per_param(self) -> float:
    return self.tokens / self.params

  def bindings(self) -> list[str]:
    """Gin bindings that turn the family's base preset into this shape."""
    c = self.config
    return [f"TransformerConfig.num_decoder_layers = {c.num_decoder_layers}",
            f"TransformerConfig.num_encoder_layers = {c.num_encoder_layers}",
            f"TransformerConfig.d_model = {c.d_model}",
            f"TransformerConfig.num_heads = {c.num_heads}",
            "TransformerConfig.num_kv_heads = None",
            f"TransformerConfig.head_dim = {c.head_dim}",
            f"TransformerConfig.d_ff = {c.d_ff}",
            *([f"TransformerConfig.mup_base_d_model = {c.mup_base_d_model}"]
              if mup.is_mup(c) else []),
            *([f"LEARNING_RATE = {self.learning_rate!r}"]
              if self.learning_rate is not None else [])]

  def as_dict(self) -> dict:
    c = self.config
    return {"id": self.id, "budget": self.budget, "num_layers": c.num_decoder_layers,
            "d_model": c.d_model, "num_heads": c.num_heads, "head_dim": c.head_dim,
            "d_ff": c.d_ff, "params": self.params, "flops_per_token": self.flops_per_token,
            "steps": self.steps, "tokens": self.tokens, "flops": self.flops,
            "tokens_per_param": self.tokens_per_param, "learning_rate": self.learning_rate,
            "experts": c.expert_expansion,
            "mup_base_d_model": c.mup_base_d_model if mup.is_mup(c) else None,
            "bindings": self.bindings()}


def _budget_label(budget: float) -> str:
  mantissa, exponent = f"{budget:.2e}".split("e")
  return f"C{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def run_id(budget: float, config: TransformerConfig) -> str:
  """C<budget>-L<layers>-d<d_model>, and -E<experts> for a mixture-of-experts family (its
  runs share shapes, budgets and nearly N and D with the dense family's)."""
  experts = f"-E{config.expert_expansion:g}" if config.num_experts else ""
  return f"{_budget_label(budget)}-L{config.num_decoder_layers}-d{config.d_model}{experts}"


def rule_of_thumb_params(budget: float, tokens_per_param: float,
                         flops_per_token: Callable[[float], float]) -> float:
  """The N with budget = flops_per_token(N) x tokens_per_param x N."""
  def excess(log_params):
    params = math.exp(log_params)
    return math.log(flops_per_token(params) * tokens_per_param * params / budget)
  return math.exp(optimize.brentq(excess, 0.0, math.log(budget)))


def target_sizes(budget: float, sizes: int, spread: float, centre: float,
                 min_params: float = 0.0, max_params: float = math.inf) -> np.ndarray:
  """`sizes` log-spaced parameter targets over [centre / spread, centre x spread]."""
  low, high = max(centre / spread, min_params), min(centre * spread, max_params)
  if low > high:
    raise PlanError(f"budget {budget:.3g}: its sizes [{centre / spread:.3g}, "
                    f"{centre * spread:.3g}] lie outside --min_params/--max_params "
                    f"[{min_params:.3g}, {max_params:.3g}].")
  return np.exp(np.linspace(math.log(low), math.log(high), sizes))


def plan_sweep(family: Family, budgets: Sequence[float], *, sizes: int = 5,
               spread: float = 4.0, tokens_per_param: float = 20.0, batch_size: int,
               targets_length: int, inputs_length: int = 0, min_params: float = 0.0,
               max_params: float = math.inf, share_shapes: bool = False) -> list[PlannedRun]:
  """One IsoFLOP profile of up to `sizes` distinct shapes per budget. With
  `share_shapes` (WSD families), every shape planned for some budget is also placed on
  each other budget whose size range holds it, so one stable run serves several."""
  if sizes < 1 or spread < 1 or batch_size < 1 or targets_length < 1:
    raise PlanError("--sizes, --batch_size and --targets_length must be positive and "
                    "--spread at least 1.")
  if family.base.is_encoder_decoder and inputs_length < 1:
    raise PlanError("an encoder-decoder family needs --inputs_length.")
  if any(not (math.isfinite(b) and b > 0) for b in budgets) or not budgets:
    raise PlanError(f"--budgets must be positive FLOP counts, got {list(budgets)}.")
  candidates = family.candidates()
  # Training FLOPs per token as a smooth function of N, interpolated (log-log)
  # over the family's shapes; beyond them it is extrapolated as ~6N.
  counted = sorted((params, counting.count(config, targets_length=targets_length,
                                           inputs_length=inputs_length).flops_per_token)
                   for params, config in candidates)
  log_n = np.log([params for params, _ in counted])
  log_ratio = np.log([fpt / params for params, fpt in counted])

  def flops_per_token(params: float) -> float:
    return params * math.exp(np.interp(math.log(params), log_n, log_ratio))

  targets = {budget: target_sizes(budget, sizes, spread,
                                  rule_of_thumb_params(budget, tokens_per_param,
                                                       flops_per_token),
                                  min_params, max_params)
             for budget in sorted(budgets)}
  runs = _runs_for_targets(family, targets, candidates, batch_size, targets_length,
                           inputs_length)
  if share_shapes:
    shapes = {run.params: run.config for run in runs}
    placed = {(run.budget, run.params) for run in runs}
    for budget, sizes in targets.items():
      low, high = min(sizes) / 1.05, max(sizes) * 1.05  # `nearest` may land 2-5% off
      extra = [params for params in shapes if low <= params <= high
               and (budget, params) not in placed]
      runs += _runs_for_targets(family, {budget: extra}, candidates, batch_size,
                                targets_length, inputs_length)
    runs.sort(key=lambda run: (run.budget, run.params))
  return runs


def _runs_for_targets(family: Family, targets: dict[float, Sequence[float]], candidates,
                      batch_size: int, targets_length: int, inputs_length: int,
                      exclude: Sequence[tuple[float, int]] = ()) -> list[PlannedRun]:
  """A run per distinct shape nearest each budget's parameter targets (shapes whose
  parameter count is in `exclude` for that budget, already run, are skipped)."""
  runs = []
  for budget, sizes in targets.items():
    seen = {(b, p) for b, p in exclude if b == budget}
    for target in sizes:
      config = family.nearest(target, candidates)
      counts = counting.count(config, targets_length=targets_length,
                              inputs_length=inputs_length)
      if (budget, counts.active_params) in seen:
        continue
      seen.add((budget, counts.active_params))
      steps = round(budget / (counts.flops_per_sequence * batch_size))
      if steps < 1:
        raise PlanError(f"budget {budget:.3g} buys less than one step of the "
                        f"{counts.active_params:,}-parameter shape; raise the budget or lower "
                        "--batch_size.")
      tokens = steps * batch_size * counts.tokens_per_sequence
      runs.append(PlannedRun(
          id=run_id(budget, config),
          budget=budget, config=config, params=counts.active_params,
          flops_per_token=counts.flops_per_token, steps=steps, tokens=tokens,
          flops=steps * batch_size * counts.flops_per_sequence))
  return runs


def bracketing_problems(runs: Sequence[PlannedRun], family: Optional[Family] = None
                        ) -> list[str]:
  """Budgets whose planned shapes cannot bracket an optimum (fewer than three distinct
  sizes): what to change, one message each. With the `family`, sizes pinned at its
  largest or smallest shape are named as the limit (not --spread)."""
  params = sorted(p for p, _ in family.candidates()) if family is not None else []
  problems = []
  for budget in sorted({run.budget for run in runs}):
    sizes = sorted({run.params for run in runs if run.budget == budget})
    if len(sizes) >= 3:
      continue
    shown = ", ".join(f"{s:,}" for s in sizes)
    # `nearest` may pick a shape up to 2% smaller for its aspect ratio: within 5% is the edge.
    if params and sizes[-1] >= params[-1] / 1.05:
      problems.append(
          f"budget {budget:.3g}: its sizes reach the family's largest shape ({params[-1]:,} "
          f"parameters at {family.max_layers} layers, the layer cap), so only {len(sizes)} "
          f"distinct sizes ({shown}) fit; lower the budget, or raise --aspect_ratio or "
          "--head_dim for wider shapes.")
    elif params and sizes[0] <= params[0] * 1.05:
      problems.append(
          f"budget {budget:.3g}: its sizes reach the family's smallest shape ({params[0]:,} "
          f"parameters), so only {len(sizes)} distinct sizes ({shown}) fit; raise the budget, "
          "or lower --head_dim for narrower shapes.")
    else:
      problems.append(
          f"budget {budget:.3g}: the family's shapes give only {len(sizes)} distinct sizes "
          f"({shown}); an IsoFLOP parabola needs three. Raise --spread or --sizes, or lower "
          "--head_dim for finer shapes.")
  return problems


def wsd_family(runs: Sequence[PlannedRun], *, decay_fraction: float = 0.2,
               warmup_fraction: float = 0.05) -> dict:
  """The plan's runs as a WSD family (module docstring): {"runs": run dicts, each shape's
  stable run before its branches; "flops": what the family computes; "independent_flops":
  what the runs would cost trained apart; "savings": the fraction saved}.

  A branch's "flops" stays the compute of the run it stands for (what its loss is a
  point of); "own_flops" is what it computes itself, the decay. Every shape's runs share
  one warmup, warmup_fraction of its shortest run.
  """
  if not 0 < decay_fraction <= 1 or not 0 <= warmup_fraction < 1:
    raise PlanError(f"--decay_fraction must be in (0, 1] and --warmup_fraction in [0, 1); "
                    f"got {decay_fraction} and {warmup_fraction}.")
  shapes: dict[tuple, list[PlannedRun]] = {}
  for run in runs:
    shapes.setdefault((run.config.num_decoder_layers, run.config.num_encoder_layers,
                       run.config.d_model, run.config.d_ff), []).append(run)
  planned, family_flops = [], 0.0
  for (layers, _, d_model, _), members in shapes.items():
    members = sorted(members, key=lambda run: run.steps)
    warmup = max(1, round(warmup_fraction * members[0].steps))
    schedule = ScheduleConfig(name="wsd", warmup_steps=warmup, decay_fraction=decay_fraction)
    try:
      forks = [schedule.stable_end(run.steps) for run in members]
    except OptimizerConfigError as error:
      raise PlanError(f"the {members[0].params:,}-parameter shape's shortest run "
                      f"({members[0].steps} steps) is too short for a WSD branch: {error}"
                      ) from error
    per_step = members[0].flops / members[0].steps  # batch x FLOPs per sequence
    stable_steps = max(forks)
    stable_id = f"stable-L{layers}-d{d_model}"
    stable = {**members[0].as_dict(), "id": stable_id, "budget": None, "role": "stable",
              "steps": stable_steps, "tokens": members[0].tokens // members[0].steps
              * stable_steps, "flops": per_step * stable_steps, "warmup_steps": warmup,
              "keep_steps": sorted(set(forks))}
    stable["tokens_per_param"] = stable["tokens"] / stable["params"]
    planned.append(stable)
    family_flops += stable["flops"]
    for run, fork in zip(members, forks):
      own = per_step * (run.steps - fork)
      planned.append({**run.as_dict(), "role": "branch", "parent": stable_id,
                      "fork_step": fork, "warmup_steps": warmup,
                      "decay_fraction": decay_fraction, "own_flops": own})
      family_flops += own
  independent = sum(run.flops for run in runs)
  return {"runs": planned, "flops": family_flops, "independent_flops": independent,
          "savings": 1 - family_flops / independent if independent else 0.0,
          "decay_fraction": decay_fraction, "warmup_fraction": warmup_fraction}


def with_seeds(entries: Sequence[dict], seeds: int) -> list[dict]:
  """The plan's run entries repeated for `seeds` seeds (initialisation and data order:
  train.seed), ids suffixed -s<seed>; a WSD branch forks from its own seed's stable run.
  One seed leaves the entries as they are."""
  if seeds < 1:
    raise PlanError(f"--seeds must be at least 1, got {seeds}.")
  if seeds == 1:
    return list(entries)
  repeated = []
  for seed in range(seeds):
    for entry in entries:
      copy = {**entry, "id": f"{entry['id']}-s{seed}", "seed": seed,
              "bindings": [*entry["bindings"], f"train.seed = {seed}"]}
      if "parent" in entry:
        copy["parent"] = f"{entry['parent']}-s{seed}"
      repeated.append(copy)
  return repeated


def with_learning_rate(runs: Sequence[PlannedRun], learning_rate: Optional[float]
                       ) -> list[PlannedRun]:
  """The runs with one peak learning rate (under μP, the rate at mup_base_d_model)."""
  return [dataclasses.replace(run, learning_rate=learning_rate) for run in runs]


def refine(family: Family, runs: Runs, *, sizes: int = 2, batch_size: int,
           targets_length: int, inputs_length: int = 0, max_params: float = math.inf
           ) -> tuple[list[PlannedRun], list[str]]:
  """New runs beyond the edge of every budget of `runs` (a finished sweep's table) whose
  lowest loss sits at its smallest or largest size, `sizes` per budget spaced as that
  budget's sizes were (at least 1.5x); and a line per budget saying what was done."""
  candidates = family.candidates()
  smallest_shape = min(params for params, _ in candidates)
  found, unbracketed = isoflop.split_profiles(runs)
  notes = [f"budget {p.flops:.3g} FLOPs: minimum bracketed at ~{p.optimal_params:,.0f} "
           "params; nothing to add" for p in found]
  targets, exclude = {}, []
  for budget in unbracketed:
    tried = np.unique(budget.params)
    exclude += [(budget.flops, int(p)) for p in tried]
    step = max(1.5, (tried.max() / tried.min()) ** (1 / max(len(tried) - 1, 1)))
    if budget.reason == "too few":
      centre = tried[len(tried) // 2]
      targets[budget.flops] = [centre / step, centre * step]
      notes.append(f"{budget.describe()}: adding sizes around {centre:,.0f}")
      continue
    edge, direction = ((tried.max(), step) if budget.reason == "largest"
                       else (tried.min(), 1 / step))
    wanted = [edge * direction ** k for k in range(1, sizes + 1)]
    wanted = [w for w in wanted if smallest_shape * 0.9 <= w <= max_params]
    if not wanted:
      notes.append(f"{budget.describe()}; the family has no shape beyond it (smallest "
                   f"{smallest_shape:,} params, --max_params {max_params:.3g}): lower "
                   "--head_dim or change the budget")
      continue
    targets[budget.flops] = wanted
    notes.append(f"{budget.describe()}: adding {len(wanted)} sizes towards "
                 f"{wanted[-1]:,.0f} params")
  added = _runs_for_targets(family, targets, candidates, batch_size, targets_length,
                            inputs_length, exclude)
  return added, notes
