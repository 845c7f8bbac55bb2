"""Optimizers and learning-rate schedules, all from optax, described by two configs
(OptimizerConfig, ScheduleConfig: plain data of the run record, runs/spec.py).

`make_optimizer(OptimizerConfig, schedule, model)`, the one optimizer builder, returns
one optax GradientTransformation: global-norm clipping, then AdamW or Adafactor (T5's
defaults) with weight decay that skips norm scales and biases, driven by
`make_schedule(ScheduleConfig, total_steps)`. (Gradient accumulation over
microbatches lives in the train step, so one step is one update.) Gin binds
the configs as `make_optimizer.*` and `make_schedule.*` (gin_utils.py).

Per-tensor learning rates (μP, models/mup.py) are an optax.multi_transform over the
parameters' role labels: one copy of the optimizer per role, its schedule multiplied
by the role's factor.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from t5x_lite.models import mup
from t5x_lite.models.configs import TransformerConfig
from t5x_lite.runs.spec import OptimizerConfig, OptimizerConfigError, ScheduleConfig

__all__ = ["OptimizerConfig", "OptimizerConfigError", "ScheduleConfig", "make_optimizer",
           "make_schedule", "decay_mask"]



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
  warmup_then_peak = [optax.linear_schedule(0.0, peak, max(warmup, 1)),
                      optax.constant_schedule(peak)]
  if config.name == "wsd":
    stable_end = config.stable_end(total_steps)
    decay_steps = total_steps - stable_end
    final = config.final_fraction * peak
    shape = DECAY_SHAPES[config.decay_shape]

    def decay(count):  # steps since the decay began
      progress = jnp.clip(count / decay_steps, 0.0, 1.0)
      return final + (peak - final) * shape(progress)

    # The same warmup and constant as "constant" up to stable_end, value for value: a
    # branch forked from a run with either schedule continues it exactly.
    return optax.join_schedules([*warmup_then_peak, decay], [warmup, stable_end])
  return optax.join_schedules(warmup_then_peak, [warmup])


# Fraction of the peak-to-final drop left at decay progress p (1 at p = 0, 0 at p = 1).
DECAY_SHAPES = {
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + jnp.cos(jnp.pi * p)),
    "1-sqrt": lambda p: 1.0 - jnp.sqrt(p),
}


def decay_mask(params) -> object:
  """True for matrices and embeddings; False for norm scales and biases (1-D)."""
  return jax.tree.map(lambda p: getattr(p, "ndim", 0) > 1, params)


def make_optimizer(config: OptimizerConfig, schedule: optax.Schedule,
                   model: Optional[TransformerConfig] = None, *, adapters_only: bool = False
                   ) -> optax.GradientTransformation:
  """The training optimizer of `config` driven by `schedule`, for `model`.

  Under μP (models/mup.py) each parameter's updates follow its role's multiplier x
  schedule (an optax.multi_transform over role labels; AdamW only); a plain model, no
  model, or LoRA adapters (`adapters_only`: new low-rank matrices, trained at the plain
  rate) get one rate. Gradient clipping stays global, over all parameters together.
  """
  if model is None or adapters_only or not mup.is_mup(model):
    core = _core(config, schedule)
  else:
    if config.name != "adamw":
      raise OptimizerConfigError(f"per-tensor learning rates support make_optimizer.name="
                                 f"'adamw', not {config.name!r}.")
    core = optax.multi_transform(
        {label: _core(config, _scaled(schedule, factor))
         for label, factor in mup.learning_rate_multipliers(model).items()},
        mup.parameter_roles)
  if config.clip_norm:
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), core)
  return core


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
