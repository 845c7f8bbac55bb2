"""The step functions of a run: jitted init, train and validation steps over a mesh.

The train state is a plain pytree {"params", "opt_state", "step"}; steps are pure
functions of it under jax.jit with explicit shardings (the rules table of
common/partitioning.py) and donated buffers; the model is nnx.merge'd inside the traced
function. One train step is one optimizer update: microbatches accumulate gradients
inside it, and an update that is not finite leaves the state untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from t5x_lite.common import partitioning
from t5x_lite.models import Transformer, TransformerConfig, alignment_losses
from t5x_lite.models.lora import AdaptedModel
from t5x_lite.models.params import abstract_model
from t5x_lite.training.objectives import LanguageModelling, with_router_losses


@dataclasses.dataclass
class StepFunctions:
  """The compiled pieces of a run (shared by the loop, compile_check and the tests).

  `lower_train(batch)` lowers the very train step `train` runs, from shapes alone (the
  state's and the batch's ShapeDtypeStructs with their shardings), so it can be
  compiled for devices this process cannot run on (compile-only TPU and GPU devices).
  """
  init: Callable[[], Any]
  train: Callable[[Any, Mapping[str, jax.Array]], tuple[Any, dict]]
  validate: Callable[[Any, Mapping[str, jax.Array]], dict]
  abstract_state: Callable[[], Any]
  lower_train: Callable[[Mapping[str, jax.ShapeDtypeStruct]], jax.stages.Lowered]
  # Each row's log-probability of its loss-weighted tokens (no dropout): [rows].
  score: Callable[[Any, Mapping[str, jax.Array]], jax.Array]
  # The model of a state's params (a LoRA run's merged with its frozen base), for work
  # outside the step functions (e.g. sampling from the policy at an evaluation).
  model: Callable[[Any], Transformer]


def _split_microbatches(batch: Mapping[str, jax.Array], microbatches: int) -> dict:
  """[B, ...] -> [microbatches, B / microbatches, ...] taking every k-th row.

  Strided rows keep each device's contiguous block of the batch on that
  device, so splitting needs no communication.
  """
  def split(x):
    x = x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return {k: split(v) for k, v in batch.items()}


def make_step_functions(config: TransformerConfig, optimizer: optax.GradientTransformation,
                        mesh: jax.sharding.Mesh, seed: int = 0, microbatches: int = 1,
                        z_loss: float = 1e-4, label_smoothing: float = 0.0,
                        adapted: Optional[AdaptedModel] = None,
                        objective: Any = None) -> StepFunctions:
  """Builds jitted init / train / eval functions with shardings from the rules table.

  `objective` (training/objectives.py) is what the step minimises: by default language
  modelling with `z_loss` and `label_smoothing`; an MoE model's adds its router losses.

  With `adapted` (models/lora.adapt over the loaded base) the state's params are the
  LoRA adapters, initialised from `adapted.adapters`; the base parameters are a frozen
  input of every step: no gradient, no optimizer state, never saved by the trainer.
  """
  if adapted is None:
    graphdef, abstract_params = nnx.split(abstract_model(config), nnx.Param)
    frozen = {}
  else:
    graphdef, frozen = adapted.graphdef, adapted.base
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                   adapted.adapters)
  param_shardings = partitioning.state_shardings(abstract_params, mesh)
  frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
  replicated = partitioning.replicated(mesh)
  batch_sharding = partitioning.batch_sharding(mesh)
  dropout_key = jax.random.key(seed + 1)

  def init_params():
    return nnx.split(Transformer(config, rngs=nnx.Rngs(params=seed)), nnx.Param)[1]

  with partitioning.axis_rules(mesh):
    params_init = (jax.jit(init_params, out_shardings=param_shardings) if adapted is None else
                   lambda: jax.device_put(adapted.adapters, param_shardings))
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  # Optimizer leaves shaped like their parameter follow its sharding; others replicate.
  # (Per-tensor learning rates keep one state per role, with the other roles' parameters
  # as empty MaskedNodes: those stay as they are.)
  def leaf_sharding(leaf, param, sharding):
    if isinstance(leaf, optax.MaskedNode):
      return leaf
    return sharding if leaf.shape == param.shape else replicated

  opt_shardings = optax.tree_map_params(
      optimizer, leaf_sharding, abstract_opt, abstract_params, param_shardings,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  state_shardings = {"params": param_shardings, "opt_state": opt_shardings, "step": replicated}

  def init():
    with partitioning.axis_rules(mesh):
      params = params_init()
      opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
    return {"params": params, "opt_state": opt_state,
            "step": jax.device_put(jnp.zeros((), jnp.int32), replicated)}

  objective = with_router_losses(objective or LanguageModelling(z_loss, label_smoothing),
                                 config)

  def merged(params, frozen) -> Transformer:
    return nnx.merge(graphdef, params, *([frozen] if adapted is not None else []))

  def loss_sums(params, frozen, batch, rng):
    return objective.sums(merged(params, frozen), batch, rng)

  def train_step(state, frozen, batch):
    normaliser = objective.normaliser(batch)  # over the whole batch, not a microbatch
    rng = jax.random.fold_in(dropout_key, state["step"])

    def normalised_loss(params, microbatch, rng):
      sums = loss_sums(params, frozen, microbatch, rng)
      return sums["loss"] / normaliser, sums

    grad_fn = jax.value_and_grad(normalised_loss, has_aux=True)
    if microbatches == 1:
      (_, sums), grads = grad_fn(state["params"], batch, rng)
    else:
      split = _split_microbatches(batch, microbatches)

      def accumulate(carry, inputs):
        index, microbatch = inputs
        (_, sums), grads = grad_fn(state["params"], microbatch, jax.random.fold_in(rng, index))
        return jax.tree.map(jnp.add, carry, (grads, sums)), None

      first = jax.tree.map(lambda x: x[0], split)
      shapes = jax.eval_shape(lambda: grad_fn(state["params"], first, rng))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes[1], shapes[0][1]))
      (grads, sums), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(microbatches), split))
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # An update that overflows (finite loss and gradients, non-finite new parameters) is
    # as bad as a non-finite loss: either leaves the state untouched, so nothing
    # non-finite can reach a checkpoint; the loop decides what next.
    params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p))
                                       for p in jax.tree.leaves(params)]))
    finite = jnp.isfinite(sums["loss"]) & jnp.isfinite(grad_norm) & params_finite
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = {"params": keep(params, state["params"]),
                 "opt_state": keep(opt_state, state["opt_state"]),
                 "step": state["step"] + 1}
    stats = dict(sums, grad_norm=grad_norm, finite=finite, params_finite=params_finite)
    return new_state, stats

  def eval_step(state, frozen, batch):
    return loss_sums(state["params"], frozen, batch, None)

  def score_step(state, frozen, batch):
    model = merged(state["params"], frozen)
    return alignment_losses.sequence_logps(model(batch), batch["decoder_target_tokens"],
                                           batch["decoder_loss_weights"]).logps

  with partitioning.axis_rules(mesh):
    score = jax.jit(score_step, in_shardings=(state_shardings, frozen_shardings,
                                              batch_sharding), out_shardings=replicated)
    train = jax.jit(train_step, in_shardings=(state_shardings, frozen_shardings, batch_sharding),
                    out_shardings=(state_shardings, replicated), donate_argnums=0)
    validate = jax.jit(eval_step, in_shardings=(state_shardings, frozen_shardings,
                                                batch_sharding), out_shardings=replicated)

  def traced(fn):
    def run(state, batch):
      with partitioning.axis_rules(mesh):
        return fn(state, frozen, batch)
    return run

  def shapes_of_state():
    shaped = lambda tree, shardings: jax.tree.map(  # noqa: E731
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        tree, shardings)
    return {"params": shaped(abstract_params, param_shardings),
            "opt_state": shaped(abstract_opt, opt_shardings),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)}

  def lower_train(batch):
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
             for k, v in batch.items()}
    with partitioning.axis_rules(mesh):
      return train.lower(shapes_of_state(), frozen, batch)

  return StepFunctions(init=init, train=traced(train), validate=traced(validate),
                       abstract_state=shapes_of_state, lower_train=lower_train,
                       score=traced(score), model=lambda params: merged(params, frozen))


def abstract_state(state: Any) -> Any:
  """Shape/dtype/sharding placeholders of a state, the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
