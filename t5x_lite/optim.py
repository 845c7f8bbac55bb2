"""Optimizers and learning-rate schedules, all from optax, configured by gin.

`make_optimizer` returns one optax GradientTransformation: global-norm
clipping, then AdamW or Adafactor (T5's defaults) with weight decay that
skips norm scales and biases, driven by a schedule. (Gradient accumulation
over microbatches lives in the train step, so one step is one update.)
"""

from __future__ import annotations

import gin
import jax
import optax

SCHEDULES = ("warmup_cosine", "rsqrt", "constant")
OPTIMIZERS = ("adamw", "adafactor")


class OptimizerConfigError(ValueError):
  """An optimizer or schedule setting that cannot work."""


@gin.configurable
def make_schedule(name: str = "warmup_cosine", peak_learning_rate: float = 3e-4,
                  warmup_steps: int = 100, total_steps: int = 1000,
                  final_fraction: float = 0.1) -> optax.Schedule:
  """Learning rate by step.

  warmup_cosine: linear warmup to the peak, then cosine decay to
    final_fraction x peak at total_steps (the usual LM pretraining schedule).
  rsqrt: T5's inverse square root, peak_learning_rate / sqrt(max(step, warmup_steps))
    x sqrt(warmup_steps), i.e. constant at the peak during warmup (T5 uses peak 0.01, 10k).
  constant: linear warmup then constant.
  """
  if name not in SCHEDULES:
    raise OptimizerConfigError(f"make_schedule.name={name!r}; choose one of {SCHEDULES}.")
  if warmup_steps < 0 or total_steps < 1:
    raise OptimizerConfigError("warmup_steps must be >= 0 and total_steps >= 1.")
  if name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak_learning_rate, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=final_fraction * peak_learning_rate)
  if name == "rsqrt":
    warmup = max(warmup_steps, 1)

    def rsqrt(step):
      return peak_learning_rate * jax.lax.rsqrt(jax.numpy.maximum(step, warmup) / warmup)

    return rsqrt
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak_learning_rate, max(warmup_steps, 1)),
       optax.constant_schedule(peak_learning_rate)], [warmup_steps])


def decay_mask(params) -> object:
  """True for matrices and embeddings; False for norm scales and biases (1-D)."""
  return jax.tree.map(lambda p: getattr(p, "ndim", 0) > 1, params)


@gin.configurable
def make_optimizer(name: str = "adamw", schedule: optax.Schedule | None = None,
                   weight_decay: float = 0.1, b1: float = 0.9, b2: float = 0.95,
                   eps: float = 1e-8, clip_norm: float | None = 1.0
                   ) -> optax.GradientTransformation:
  """The training optimizer.

  Args:
    name: "adamw" or "adafactor" (T5: factored second moments, no momentum,
      update clipping 1.0, relative step off so the schedule sets the rate).
    schedule: learning rate by step (make_schedule by default).
    weight_decay: decoupled decay on matrices only (see decay_mask).
    b1, b2, eps: AdamW's moment decay rates and epsilon.
    clip_norm: global gradient-norm clip; None disables it.
  """
  if name not in OPTIMIZERS:
    raise OptimizerConfigError(f"make_optimizer.name={name!r}; choose one of {OPTIMIZERS}.")
  schedule = schedule or make_schedule()
  if name == "adamw":
    core = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                       mask=decay_mask)
  else:
    core = optax.adafactor(schedule, multiply_by_parameter_scale=True, clipping_threshold=1.0,
                           decay_rate=0.8, momentum=None, weight_decay_rate=weight_decay or None,
                           weight_decay_mask=decay_mask)
  return optax.chain(optax.clip_by_global_norm(clip_norm), core) if clip_norm else core
