"""Learning-rate sweeps: one model trained at several peak learning rates at once.

`sweep_learning_rates(config, rates, train_batches, eval_batches)` trains copies of one
initialisation, one per peak rate, on the same batches in the same order, vmapped over
the rates (one compile, one pass over the data), with the project's optimizer and
schedule (optim.py; μP's per-tensor rates when the config says so), and returns each
rate's final validation loss. It serves the μP transfer study (experiments/mup) and the
base-rate tuning of `python -m t5x_lite.scaling plan --tune_learning_rate`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from t5x_lite.common.errors import ConfigError
from t5x_lite.models import TransformerConfig, create_model, losses
from t5x_lite.training import optim


@dataclasses.dataclass(frozen=True)
class SweepResult:
  """Final validation loss per peak learning rate (inf where training diverged)."""
  learning_rates: list[float]
  losses: list[float]

  @property
  def best(self) -> float:
    """The rate with the lowest loss."""
    return self.learning_rates[int(np.argmin(self.losses))]

  @property
  def bracketed(self) -> bool:
    """Whether the lowest loss lies strictly inside the rates tried."""
    index = int(np.argmin(self.losses))
    return 0 < index < len(self.losses) - 1

  def vertex(self) -> float:
    """The optimum of a parabola in log(rate) through the best rate and its neighbours
    (the best rate itself at an edge): finer than the grid's spacing."""
    index = int(np.argmin(self.losses))
    if not self.bracketed:
      return self.best
    x = np.log(self.learning_rates[index - 1:index + 2])
    y = np.asarray(self.losses[index - 1:index + 2])
    a, b, _ = np.polyfit(x, y, 2)
    return float(math.exp(-b / (2 * a))) if a > 0 else self.best


def log_spaced(low: float, high: float, count: int) -> list[float]:
  """`count` rates evenly spaced in log between low and high."""
  if not 0 < low < high or count < 2:
    raise ConfigError(f"learning rates need 0 < low < high and at least 2 values; got "
                      f"[{low}, {high}] x {count}.")
  return [float(r) for r in np.geomspace(low, high, count)]


def sweep_learning_rates(config: TransformerConfig, learning_rates: Sequence[float],
                         train_batches: Sequence[dict], eval_batches: Sequence[dict],
                         optimizer: optim.OptimizerConfig = optim.OptimizerConfig(),
                         schedule: optim.ScheduleConfig = optim.ScheduleConfig(),
                         seed: int = 0, progress: Optional[Callable[[str], None]] = None
                         ) -> SweepResult:
  """Trains `config` once per peak rate (vmapped) for len(train_batches) steps and
  returns the mean validation loss per token over `eval_batches` at the end."""
  if not learning_rates:
    raise ConfigError("a learning-rate sweep needs at least one rate.")
  steps = len(train_batches)
  # The schedule at peak 1, times each run's peak: the same shape for every rate.
  shape = optim.make_schedule(dataclasses.replace(schedule, peak_learning_rate=1.0), steps)
  transform = optim.make_optimizer(optimizer, shape, config)
  graphdef, params = nnx.split(create_model(config, seed=seed), nnx.Param)
  rates = jnp.asarray(learning_rates, jnp.float32)
  stacked = jax.tree.map(lambda p: jnp.broadcast_to(p, (len(rates), *p.shape)), params)

  def loss_fn(params, batch):
    sums = losses.model_loss_sums(nnx.merge(graphdef, params), batch)
    return sums.loss / jnp.maximum(sums.tokens, 1.0)

  def one_step(params, opt_state, rate, batch):
    updates, opt_state = transform.update(jax.grad(loss_fn)(params, batch), opt_state, params)
    # adamw's updates are its learning rate times (Adam + decay): scaling them by the
    # peak rate is adamw at rate x schedule.
    updates = jax.tree.map(lambda u: rate * u, updates)
    return optax.apply_updates(params, updates), opt_state

  train_step = jax.jit(jax.vmap(one_step, in_axes=(0, 0, 0, None)))
  evaluate = jax.jit(jax.vmap(
      lambda params, batch: losses.model_loss_sums(nnx.merge(graphdef, params), batch),
      in_axes=(0, None)))
  opt_state = jax.vmap(transform.init)(stacked)
  for step, batch in enumerate(train_batches, 1):
    stacked, opt_state = train_step(stacked, opt_state, rates, batch)
    if progress and (step % max(1, steps // 5) == 0 or step == steps):
      progress(f"    step {step}/{steps}")
  total, tokens = np.zeros(len(rates)), np.zeros(len(rates))
  for batch in eval_batches:
    sums = evaluate(stacked, batch)
    total += np.asarray(sums.cross_entropy)
    tokens += np.asarray(sums.tokens)
  final = total / np.maximum(tokens, 1.0)
  final = [float(v) if np.isfinite(v) else float("inf") for v in final]
  return SweepResult(learning_rates=[float(r) for r in learning_rates], losses=final)
