"""The training loop and its step functions.

Read top to bottom: build the mesh, the model (parameters created directly
in their shardings), the optimizer and the data; restore the latest
checkpoint if MODEL_DIR has one; then step, report, evaluate and save until
TRAIN_STEPS, a signal, or a non-finite loss.

The train state is a plain pytree {"params", "opt_state", "step"}; steps are
pure functions of it under jax.jit with explicit shardings and donated
buffers (the model is nnx.merge'd inside the traced function).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import time
from typing import Any, Callable, Mapping, Optional

import gin
import jax
import jax.numpy as jnp
import optax
import seqio
from flax import nnx

from t5x_lite import checkpoints, losses, metrics, optim, partitioning
from t5x_lite.data import get_batches
from t5x_lite.models import Transformer, TransformerConfig
from t5x_lite.scaling.counting import count

NAN_POLICIES = ("halt", "skip")


class TrainingHalted(RuntimeError):
  """The run stopped on purpose (e.g. a non-finite loss); the message says where and why."""


@dataclasses.dataclass
class StepFunctions:
  """The compiled pieces of a run (shared by the loop and the tests)."""
  init: Callable[[], Any]
  train: Callable[[Any, Mapping[str, jax.Array]], tuple[Any, dict]]
  evaluate: Callable[[Any, Mapping[str, jax.Array]], dict]


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
                        z_loss: float = 1e-4, label_smoothing: float = 0.0) -> StepFunctions:
  """Builds jitted init / train / eval functions with shardings from the rules table."""
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(params=seed)))
  graphdef, abstract_params = nnx.split(abstract, nnx.Param)
  param_shardings = partitioning.state_shardings(abstract_params, mesh)
  replicated = partitioning.replicated(mesh)
  batch_sharding = partitioning.batch_sharding(mesh)
  dropout_key = jax.random.key(seed + 1)

  def init_params():
    return nnx.split(Transformer(config, rngs=nnx.Rngs(params=seed)), nnx.Param)[1]

  with partitioning.axis_rules(mesh):
    params_init = jax.jit(init_params, out_shardings=param_shardings)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  # Optimizer leaves shaped like their parameter follow its sharding; others replicate.
  opt_shardings = optax.tree_map_params(
      optimizer, lambda leaf, p, s: s if leaf.shape == p.shape else replicated, abstract_opt,
      abstract_params, param_shardings, transform_non_params=lambda _: replicated)
  state_shardings = {"params": param_shardings, "opt_state": opt_shardings, "step": replicated}

  def init():
    with partitioning.axis_rules(mesh):
      params = params_init()
      opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
    return {"params": params, "opt_state": opt_state,
            "step": jax.device_put(jnp.zeros((), jnp.int32), replicated)}

  def loss_sums(params, batch, rng):
    model = nnx.merge(graphdef, params)
    logits = model(batch, dropout_rng=rng)
    return losses.token_loss_sums(logits, batch["decoder_target_tokens"],
                                  batch["decoder_loss_weights"], z_loss, label_smoothing)

  def train_step(state, batch):
    total_tokens = jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)
    rng = jax.random.fold_in(dropout_key, state["step"])

    def normalised_loss(params, microbatch, rng):
      sums = loss_sums(params, microbatch, rng)
      return sums.loss / total_tokens, sums

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
    # A non-finite loss or gradient leaves the state untouched; the loop decides what next.
    finite = jnp.isfinite(sums.loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = {"params": keep(params, state["params"]),
                 "opt_state": keep(opt_state, state["opt_state"]),
                 "step": state["step"] + 1}
    stats = dict(sums._asdict(), grad_norm=grad_norm, finite=finite)
    return new_state, stats

  def eval_step(state, batch):
    return loss_sums(state["params"], batch, None)._asdict()

  with partitioning.axis_rules(mesh):
    train = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                    out_shardings=(state_shardings, replicated), donate_argnums=0)
    evaluate = jax.jit(eval_step, in_shardings=(state_shardings, batch_sharding),
                       out_shardings=replicated)

  def traced(fn):
    def run(*args):
      with partitioning.axis_rules(mesh):
        return fn(*args)
    return run

  return StepFunctions(init=init, train=traced(train), evaluate=traced(evaluate))


def abstract_state(state: Any) -> Any:
  """Shape/dtype/sharding placeholders of a state, the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def check_vocabulary(task: str, config: TransformerConfig) -> None:
  provider = seqio.get_mixture_or_task(task)
  for name, feature in provider.output_features.items():
    if feature.vocabulary.vocab_size > config.vocab_size:
      raise ValueError(
          f"task {task!r} feature {name!r} uses {feature.vocabulary.vocab_size} token ids but "
          f"TransformerConfig.vocab_size is {config.vocab_size}; set vocab_size >= "
          f"{feature.vocabulary.vocab_size} (rounded up to a multiple of 128).")


def _model_lengths(config: TransformerConfig,
                   feature_lengths: Mapping[str, int]) -> tuple[int, int]:
  """(encoder length, decoder length) the model sees for these task feature lengths."""
  inputs, targets = feature_lengths.get("inputs", 0), feature_lengths["targets"]
  return (inputs, targets) if config.is_encoder_decoder else (0, inputs + targets)


class _StopSignal:
  """SIGTERM/SIGINT set a flag; the loop finishes the step, saves and exits cleanly."""

  def __init__(self):
    self.received: Optional[int] = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _validation_batches(task, feature_lengths, batch_size, architecture, shard, eval_steps,
                        seed) -> list[dict]:
  """This host's first eval_steps validation batches; every evaluation uses these same ones."""
  batches = get_batches(task, feature_lengths, "validation", batch_size, architecture,
                        shard=shard, seed=seed, shuffle=False, num_epochs=None)
  return [next(batches) for _ in range(eval_steps)]


def _evaluate(steps: StepFunctions, state, batches: list[dict], mesh) -> dict[str, float]:
  """Validation loss, accuracy and perplexity over `batches`."""
  totals: dict[str, float] = {}
  for batch in batches:
    sums = steps.evaluate(state, partitioning.global_batch(batch, mesh))
    for key, value in jax.device_get(sums).items():
      totals[key] = totals.get(key, 0.0) + float(value)
  return losses.eval_metrics(totals)


@gin.configurable(denylist=["stream"])
def train(model_dir: str = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          task: str = gin.REQUIRED, feature_lengths: Mapping[str, int] = gin.REQUIRED,
          batch_size: int = gin.REQUIRED, seed: int = 0, microbatches: int = 1,
          z_loss: float = 1e-4, label_smoothing: float = 0.0, log_every: int = 10,
          eval_every: int = 100, eval_steps: int = 10, checkpoint_every: int = 100,
          keep_checkpoints: Optional[int] = 3, init_checkpoint: Optional[str] = None,
          nan_policy: str = "halt", peak_flops_per_device: Optional[float] = None,
          stream=None) -> dict[str, float]:
  """Trains TransformerConfig() (from gin) on `task` and returns the final eval metrics.

  Args:
    model_dir: checkpoints, TensorBoard logs and metrics.jsonl go here; a run
      resumes from the latest checkpoint found in it.
    train_steps: total optimizer steps (the schedule's length).
    task, feature_lengths, batch_size: the data (MIXTURE_OR_TASK_NAME,
      TASK_FEATURE_LENGTHS, BATCH_SIZE); batch_size is global over all hosts.
    seed: fixes initialisation, dropout and data order.
    microbatches: gradient accumulation; batch_size / microbatches rows per pass.
    z_loss, label_smoothing: see losses.token_loss_sums.
    log_every, eval_every, eval_steps, checkpoint_every, keep_checkpoints: cadence.
    init_checkpoint: fine-tuning: take the params (not the optimizer or data
      position) from this MODEL_DIR when model_dir has no checkpoint yet.
    nan_policy: on a non-finite loss, "halt" (stop with an error; the last
      checkpoint stays the newest) or "skip" (drop that update, go on).
    peak_flops_per_device: the MFU denominator; by default a datasheet figure
      for known accelerators in bfloat16, else measured on this machine.
  """
  stream = stream or sys.stdout
  if nan_policy not in NAN_POLICIES:
    raise ValueError(f"train.nan_policy={nan_policy!r}; choose one of {NAN_POLICIES}.")
  if batch_size % microbatches:
    raise ValueError(f"BATCH_SIZE {batch_size} is not divisible by train.microbatches "
                     f"{microbatches}.")
  config = TransformerConfig()
  config.validate()
  mesh = partitioning.create_mesh()
  data_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % data_shards or (batch_size // microbatches) % data_shards:
    raise ValueError(f"BATCH_SIZE {batch_size} (/{microbatches} microbatches) does not split "
                     f"over the mesh's {data_shards} data x fsdp shards; use a multiple.")
  optimizer = optim.make_optimizer(schedule=optim.make_schedule(total_steps=train_steps))
  steps = make_step_functions(config, optimizer, mesh, seed, microbatches, z_loss,
                              label_smoothing)
  shard = seqio.ShardInfo(jax.process_index(), jax.process_count())
  batches = get_batches(task, feature_lengths, "train", batch_size, config.architecture,
                        shard=shard, seed=seed)
  check_vocabulary(task, config)  # After get_batches, which names an unknown task clearly.
  checkpointer = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints"),
                                          checkpoint_every, keep_checkpoints)
  state = steps.init()
  start = checkpointer.latest_step()
  if start is not None:
    state = checkpointer.restore(start, abstract_state(state), batches)
    print(f"resumed from {checkpointer.directory} step {start}", file=stream)
  elif init_checkpoint:
    state["params"] = checkpoints.restore_params(init_checkpoint,
                                                 abstract_state(state["params"]))
    print(f"initialised params from {init_checkpoint}", file=stream)
  start = int(jax.device_get(state["step"]))

  encoder_length, decoder_length = _model_lengths(config, feature_lengths)
  counts = count(config, inputs_length=encoder_length, targets_length=decoder_length)
  if peak_flops_per_device:
    peak, peak_source = peak_flops_per_device, "train.peak_flops_per_device"
  else:
    peak, peak_source = metrics.peak_flops_per_device(config.dtype)
  is_main = jax.process_index() == 0
  writer = metrics.MetricsWriter(model_dir, enabled=is_main)
  progress = metrics.Progress(train_steps, start, counts.flops_per_token,
                              peak * jax.device_count(), stream=stream if is_main else None)
  if is_main:
    print(f"{config.architecture}: {counts.params / 1e6:.2f}M params, "
          f"{counts.flops_per_token / 1e6:.1f} MFLOP/token; mesh {dict(mesh.shape)}; "
          f"peak {peak / 1e9:.0f} GFLOP/s per device ({peak_source})", file=stream)

  # Read once, at the first evaluation: building a seqio pipeline takes seconds.
  validation = functools.cache(lambda: _validation_batches(
      task, feature_lengths, batch_size, config.architecture, shard, eval_steps, seed))
  skipped = 0
  step = start
  last_eval: dict[str, float] = {}
  with _StopSignal() as stop:
    while step < train_steps and stop.received is None:
      state, stats = steps.train(state, partitioning.global_batch(next(batches), mesh))
      stats = jax.device_get(stats)
      step += 1
      progress.add_tokens(batch_size * counts.tokens_per_sequence)
      if not stats["finite"]:
        if nan_policy == "halt":
          checkpointer.close()
          raise TrainingHalted(
              f"non-finite loss at step {step} (loss {stats['loss']}, grad norm "
              f"{stats['grad_norm']}); nothing was saved for it; the newest checkpoint is step "
              f"{checkpointer.latest_step()}. Lower the learning rate or set "
              "train.nan_policy='skip'.")
        skipped += 1
      if step % log_every == 0 or step == train_steps:
        tokens = max(float(stats["tokens"]), 1.0)
        loss = float(stats["cross_entropy"]) / tokens
        scalars = {"loss": loss, "z_loss": float(stats["z_loss"]) / tokens,
                   "accuracy": float(stats["correct"]) / tokens,
                   "grad_norm": float(stats["grad_norm"]), "skipped_steps": skipped,
                   **progress.report(step, loss)}
        writer.write(step, "train", scalars)
      if step % eval_every == 0 or step == train_steps:
        eval_start = time.perf_counter()
        last_eval = _evaluate(steps, state, validation(), mesh)
        progress.exclude(time.perf_counter() - eval_start)
        writer.write(step, "eval", last_eval)
        if is_main:
          print(f"eval at step {step}: loss {last_eval['loss']:.4f}, perplexity "
                f"{last_eval['perplexity']:.2f}, accuracy {last_eval['accuracy']:.3f}",
                file=stream)
      checkpointer.save(step, state, batches, force=step == train_steps)
    if stop.received is not None:
      if checkpointer.latest_step() != step:
        checkpointer.save(step, state, batches, force=True)
      if is_main:
        print(f"received signal {stop.received}: saved step {step} and stopped", file=stream)
  if step == train_steps and not last_eval:  # Already finished earlier: report it again.
    last_eval = _evaluate(steps, state, validation(), mesh)
  checkpointer.close()
  writer.close()
  return {"step": step, "model_dir": model_dir, **last_eval}
