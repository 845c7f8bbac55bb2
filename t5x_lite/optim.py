"""Optimizers and learning-rate schedules, all from optax, described by two configs.

`make_optimizer(OptimizerConfig, schedule)` returns one optax
GradientTransformation: global-norm clipping, then AdamW or Adafactor (T5's
defaults) with weight decay that skips norm scales and biases, driven by
`make_schedule(ScheduleConfig, total_steps)`. (Gradient accumulation over
microbatches lives in the train step, so one step is one update.) Gin binds
the configs as `make_optimizer.*` and `make_schedule.*` (gin_utils.py).

Per-tensor learning rates (μP, models/mup.py) are an optax.multi_transform over the
parameters' role labels: one copy of the optimizer per role, its schedule multiplied
by the role's factor.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional

import jax
import optax

from t5x_lite.errors import ConfigError, check_field_types

SCHEDULES = ("warmup_cosine", "rsqrt", "constant")
OPTIMIZERS = ("adamw", "adafactor")


class OptimizerConfigError(ConfigError):
  """An optimizer or schedule setting that cannot work."""


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """Learning rate by step.

  name: "warmup_cosine": linear warmup to the peak, then cosine decay to
    final_fraction x peak at the run's last step (the usual LM pretraining schedule);
    "rsqrt": T5's inverse square root, peak_learning_rate / sqrt(max(step, warmup_steps))
    x sqrt(warmup_steps), i.e. constant at the peak during warmup (T5: peak 0.01, 10k);
    "constant": linear warmup then constant.
  """
  name: str = "warmup_cosine"
  peak_learning_rate: float = 3e-4
  warmup_steps: int = 100
  final_fraction: float = 0.1

  def __post_init__(self):
    check_field_types(self, "make_schedule")
    if self.name not in SCHEDULES:
      raise OptimizerConfigError(f"make_schedule.name={self.name!r}; choose one of {SCHEDULES}.")
    if self.warmup_steps < 0 or self.peak_learning_rate < 0:
      raise OptimizerConfigError("make_schedule.warmup_steps and peak_learning_rate must be "
                                 f">= 0, got {self.warmup_steps} and {self.peak_learning_rate}.")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The optimizer.

  name: "adamw" or "adafactor" (T5: factored second moments, no momentum, update
    clipping 1.0, relative step off so the schedule sets the rate).
  weight_decay: decoupled decay on matrices only (see decay_mask).
  b1, b2, eps: AdamW's moment decay rates and epsilon.
  clip_norm: global gradient-norm clip; None disables it.
  """
  name: str = "adamw"
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: Optional[float] = 1.0

  def __post_init__(self):
    check_field_types(self, "make_optimizer")
    if self.name not in OPTIMIZERS:
      raise OptimizerConfigError(f"make_optimizer.name={self.name!r}; choose one of "
                                 f"{OPTIMIZERS}.")
    if self.clip_norm is not None and self.clip_norm <= 0:
      raise OptimizerConfigError(f"make_optimizer.clip_norm must be positive or None, got "
                                 f"{self.clip_norm}.")


def make_schedule(config: ScheduleConfig, total_steps: int) -> optax.Schedule:
  """The learning rate of `config` for a run of `total_steps` steps."""
  if total_steps < 1:
    raise OptimizerConfigError(f"a schedule needs total_steps >= 1, got {total_steps}.")
  peak, warmup = config.peak_learning_rate, config.warmup_steps
  if config.name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=config.final_fraction * peak)
  if config.name == "rsqrt":
    warmup = max(warmup, 1)

    def rsqrt(step):
      return peak * jax.lax.rsqrt(jax.numpy.maximum(step, warmup) / warmup)

    return rsqrt
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
      [warmup])


def decay_mask(params) -> object:
  """True for matrices and embeddings; False for norm scales and biases (1-D)."""
  return jax.tree.map(lambda p: getattr(p, "ndim", 0) > 1, params)


def make_optimizer(config: OptimizerConfig, schedule: optax.Schedule,
                   roles: Optional[Callable] = None,
                   multipliers: Optional[Mapping[str, float]] = None
                   ) -> optax.GradientTransformation:
  """The training optimizer of `config` driven by `schedule`.

  roles, multipliers: per-tensor learning rates: `roles(params)` labels every parameter
  and each label's updates follow multipliers[label] x schedule (models/mup.py gives
  both under μP). Gradient clipping stays global, over all parameters together.
  """
  if roles is None:
    core = _core(config, schedule)
  else:
    if config.name != "adamw":
      raise OptimizerConfigError(f"per-tensor learning rates support make_optimizer.name="
                                 f"'adamw', not {config.name!r}.")
    core = optax.multi_transform(
        {label: _core(config, _scaled(schedule, factor)) for label, factor in multipliers.items()},
        roles)
  if config.clip_norm:
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), core)
  return core


def model_optimizer(model_config, config: OptimizerConfig, schedule: optax.Schedule
                    ) -> optax.GradientTransformation:
  """make_optimizer for a model: under μP with its per-tensor learning rates
  (models/mup.py), else plain."""
  from t5x_lite.models import mup  # models import optim's configs through spec, not this

  if mup.is_mup(model_config):
    return make_optimizer(config, schedule, mup.parameter_roles,
                          mup.learning_rate_multipliers(model_config))
  return make_optimizer(config, schedule)


def _scaled(schedule: optax.Schedule, factor: float) -> optax.Schedule:
  return schedule if factor == 1.0 else (lambda step: factor * schedule(step))


def _core(config: OptimizerConfig, schedule: optax.Schedule) -> optax.GradientTransformation:
  if config.name == "adamw":
    return optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                       weight_decay=config.weight_decay, mask=decay_mask)
  return optax.adafactor(schedule, multiply_by_parameter_scale=True, clipping_threshold=1.0,
                         decay_rate=0.8, momentum=None,
                         weight_decay_rate=config.weight_decay or None,
                         weight_decay_mask=decay_mask)
