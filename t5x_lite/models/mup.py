"""The maximal-update parametrization (μP; Yang et al. 2022, "Tensor Programs V"): every
μP rule of the model and the optimizer lives here.

`TransformerConfig(parametrization="mup", mup_base_d_model=B)` makes a model of width
d_model behave, step for step, like the base model of width B with the hyperparameters
tuned there: the learning rate found at width B transfers to every width. With
m = d_model / B (the width multiplier; d_ff and heads x head_dim are taken to grow with
d_model, as a scaling family's shapes do), each tensor gets, by its role:

  role    tensors                              init variance          Adam LR   forward
  input   token embedding, learned and T5       constant (as standard) x 1
          relative position tables
  hidden  attention query/key/value/out,        1 / fan_in, i.e. the   x 1/m
          MLP wi_0/wi_1/wo                      base's x base/width
  output  untied logits projection              1 / fan_in (standard)  x 1       logits x 1/m
  vector  norm scales, biases                   ones / zeros           x 1

and attention logits are scaled by sqrt(mup_base_head_dim) / head_dim instead of
1 / sqrt(head_dim): μP's 1/head_dim, anchored so that it equals the standard scale at
the base head_dim (None: the model's own head_dim, i.e. a family that grows the number
of heads, not their width, keeps the standard scale). With tied embeddings the shared
matrix is an input (LR x 1) and the output multiplier applies to the logits it computes.

Why: under Adam a hidden matrix's update moves its output by O(LR x fan_in) per
coordinate, so LR must fall as 1/width to keep feature updates O(1); the output layer
sums d_model O(1) coordinates that become correlated with its weights during training,
so its logits must be damped by 1/m; input weights and vectors have a finite fan-in,
so their updates need no correction. Standard fan-in initialisation already gives
hidden matrices μP's variance, so μP changes no initialiser except T5's folding of
1/sqrt(head_dim) into the query (μP scales the logits explicitly instead).

At the base width (m = 1, base head_dim = head_dim) a μP model computes exactly what the
standard model computes, with the same learning rates; `parametrization="standard"` is
the default and leaves every number as it was.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax

PARAMETRIZATIONS = ("standard", "mup")
ROLES = ("input", "hidden", "output", "vector")
# Optimizers whose updates μP's learning-rate table is derived for (Adam-family: the
# update's size does not depend on the gradient's). Adafactor scales each update by
# the parameter's own RMS, which is a different parametrization of the step size.
SUPPORTED_OPTIMIZERS = ("adamw",)
_INPUT_MODULES = ("token_embedding", "absolute_positions", "relative_bias")


def is_mup(config) -> bool:
  return config.parametrization == "mup"


def width_multiplier(config) -> float:
  """m = d_model / mup_base_d_model under μP; 1 under the standard parametrization."""
  return config.d_model / config.mup_base_d_model if is_mup(config) else 1.0


def attention_logit_scale(config) -> float:
  """What attention logits q.k are multiplied by before the softmax."""
  head_dim = config.resolved_head_dim
  if is_mup(config):
    return math.sqrt(config.mup_base_head_dim or head_dim) / head_dim
  return 1.0 / math.sqrt(head_dim) if config.scale_attention_logits else 1.0


def query_init_scale(config) -> float:
  """Variance factor of the query initialiser: T5 (scale_attention_logits=False) folds
  1/head_dim of variance into it under the standard parametrization."""
  if is_mup(config) or config.scale_attention_logits:
    return 1.0
  return 1.0 / config.resolved_head_dim


def output_multiplier(config) -> float:
  """What the final hidden state is multiplied by before the logits projection: T5's
  d_model**-0.5 where it applies (taken at the base width under μP), times 1/m."""
  width = config.mup_base_d_model if is_mup(config) else config.d_model
  standard = width ** -0.5 if config.scales_decoder_outputs else 1.0
  return standard / width_multiplier(config)


def parameter_role(path: tuple[Any, ...]) -> str:
  """The μP role (ROLES) of the parameter at `path` in the model's nnx.State."""
  names = [str(getattr(key, "key", getattr(key, "name", key))) for key in path]
  if names[-1] == "value":  # the nnx.Variable's own field, when leaves are its arrays
    names = names[:-1]
  if names[-1] in ("scale", "bias"):
    return "vector"
  if any(name in _INPUT_MODULES for name in names):
    return "input"
  if "logits_dense" in names or "reward_head" in names:
    return "output"
  if names[-1] == "kernel":
    return "hidden"
  raise ValueError(f"no μP role for parameter {'/'.join(names)}; add it to "
                   "t5x_lite/models/mup.py:parameter_role.")


def parameter_roles(params) -> Any:
  """The tree of `params` with each leaf replaced by its role (optax.multi_transform's
  labels)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: parameter_role(path), params)


def learning_rate_multipliers(config) -> dict[str, float]:
  """{role: multiplier of the base learning rate} (the table in the module docstring)."""
  return {"input": 1.0, "hidden": 1.0 / width_multiplier(config), "output": 1.0,
          "vector": 1.0}


def check(config, optimizer_name: Optional[str] = None) -> Optional[str]:
  """What is wrong with a μP setting (a message naming what to change), or None."""
  if config.parametrization not in PARAMETRIZATIONS:
    return (f"TransformerConfig.parametrization={config.parametrization!r}; choose one of "
            f"{PARAMETRIZATIONS}.")
  if not is_mup(config):
    return None
  base = config.mup_base_d_model
  if base is None or base <= 0:
    return ("parametrization='mup' needs TransformerConfig.mup_base_d_model: the width the "
            "learning rate was tuned at (e.g. the smallest model of the family).")
  if base > config.d_model:
    return (f"TransformerConfig.mup_base_d_model={base} is larger than d_model="
            f"{config.d_model}: μP transfers hyperparameters from a base width up to wider "
            "models; tune at a width no larger than the model's.")
  if config.mup_base_head_dim is not None and config.mup_base_head_dim <= 0:
    return (f"TransformerConfig.mup_base_head_dim must be positive or None, got "
            f"{config.mup_base_head_dim}.")
  if optimizer_name is not None and optimizer_name not in SUPPORTED_OPTIMIZERS:
    return (f"parametrization='mup' supports the optimizers {SUPPORTED_OPTIMIZERS}, not "
            f"make_optimizer.name={optimizer_name!r}: μP's learning-rate multipliers are "
            "derived for Adam's updates, and Adafactor scales each update by the parameter's "
            "RMS. Use make_optimizer.name='adamw' or the standard parametrization.")
  return None
