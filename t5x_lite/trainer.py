"""The training loop and its step functions.

`train(spec, mesh)` reads top to bottom: lock MODEL_DIR, build the optimizer,
the step functions (parameters created directly in their shardings) and the
data; compare the spec with the one MODEL_DIR recorded and record it; restore
the newest readable checkpoint if there is one; then step, report, evaluate and
save until TRAIN_STEPS, a signal, or a non-finite update. Everything arrives as
arguments (spec.py); gin stays in the entry point (train.py).

The train state is a plain pytree {"params", "opt_state", "step"}; steps are
pure functions of it under jax.jit with explicit shardings and donated
buffers (the model is nnx.merge'd inside the traced function).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Any, Callable, Mapping, Optional, TextIO

import jax
import jax.numpy as jnp
import optax
import seqio
from flax import nnx

from t5x_lite import (
  adapters,
  checkpoints,
  loop_controls,
  losses,
  metrics,
  optim,
  partitioning,
  quantization,
  run_dir,
)
from t5x_lite.data import check_vocabulary, get_batches, get_task, vocabularies
from t5x_lite.errors import ConfigError
from t5x_lite.loop_controls import TrainingHalted  # noqa: F401  (raised by the loop)
from t5x_lite.models import Transformer, TransformerConfig, pipeline
from t5x_lite.models.configs import functional_differences
from t5x_lite.models.lora import AdaptedModel, LoraConfig, adapt
from t5x_lite.models.params import abstract_model
from t5x_lite.scaling.counting import count
from t5x_lite.spec import TrainSpec


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


def sharded_abstract_params(config: TransformerConfig, mesh: jax.sharding.Mesh) -> Any:
  """The model's parameter placeholders with their shardings on `mesh` (restore targets)."""
  abstract_params = nnx.split(abstract_model(config), nnx.Param)[1]
  shardings = partitioning.state_shardings(abstract_params, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_params, shardings)


def make_step_functions(config: TransformerConfig, optimizer: optax.GradientTransformation,
                        mesh: jax.sharding.Mesh, seed: int = 0, microbatches: int = 1,
                        z_loss: float = 1e-4, label_smoothing: float = 0.0,
                        adapted: Optional[AdaptedModel] = None) -> StepFunctions:
  """Builds jitted init / train / eval functions with shardings from the rules table.

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

  def loss_sums(params, frozen, batch, rng):
    model = nnx.merge(graphdef, params, *([frozen] if adapted is not None else []))
    return losses.model_loss_sums(model, batch, z_loss=z_loss,
                                  label_smoothing=label_smoothing, dropout_rng=rng)

  def train_step(state, frozen, batch):
    total_tokens = jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)
    rng = jax.random.fold_in(dropout_key, state["step"])

    def normalised_loss(params, microbatch, rng):
      sums = loss_sums(params, frozen, microbatch, rng)
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
    # An update that overflows (finite loss and gradients, non-finite new parameters) is
    # as bad as a non-finite loss: either leaves the state untouched, so nothing
    # non-finite can reach a checkpoint; the loop decides what next.
    params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p))
                                       for p in jax.tree.leaves(params)]))
    finite = jnp.isfinite(sums.loss) & jnp.isfinite(grad_norm) & params_finite
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    new_state = {"params": keep(params, state["params"]),
                 "opt_state": keep(opt_state, state["opt_state"]),
                 "step": state["step"] + 1}
    stats = dict(sums._asdict(), grad_norm=grad_norm, finite=finite,
                 params_finite=params_finite)
    return new_state, stats

  def eval_step(state, frozen, batch):
    return loss_sums(state["params"], frozen, batch, None)._asdict()

  with partitioning.axis_rules(mesh):
    train = jax.jit(train_step, in_shardings=(state_shardings, frozen_shardings, batch_sharding),
                    out_shardings=(state_shardings, replicated), donate_argnums=0)
    evaluate = jax.jit(eval_step, in_shardings=(state_shardings, frozen_shardings,
                                                batch_sharding), out_shardings=replicated)

  def traced(fn):
    def run(state, batch):
      with partitioning.axis_rules(mesh):
        return fn(state, frozen, batch)
    return run

  return StepFunctions(init=init, train=traced(train), evaluate=traced(evaluate))


def abstract_state(state: Any) -> Any:
  """Shape/dtype/sharding placeholders of a state, the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


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


def _check_init_checkpoint(path: str, config: TransformerConfig,
                           allowed: tuple[str, ...] = ()) -> None:
  """Fine-tuning: the pretrained run's recorded model must compute the same function,
  but for the knobs named in train.allow_changes (e.g. the architecture, to continue a
  causal decoder as a prefix decoder)."""
  recorded = run_dir.recorded_model(path)
  changed = {} if recorded is None else functional_differences(recorded, config)
  changed = {k: v for k, v in changed.items() if f"TransformerConfig.{k}" not in allowed}
  if changed:
    raise run_dir.RunDirError(
        f"train.init_checkpoint {path} was trained with a different model: "
        f"{run_dir.format_changes({f'TransformerConfig.{k}': v for k, v in changed.items()})}. "
        "Fine-tune with the model it was trained with.")


def _lora_base(path: str, config: TransformerConfig, lora: LoraConfig,
               mesh: jax.sharding.Mesh) -> Transformer:
  """The frozen base of a LoRA run: float parameters sharded over the mesh, or a
  quantized run directory's integer ones (QLoRA), replicated."""
  record = run_dir.read_record(path)
  if record is not None and record.get("quantization"):
    model = quantization.load(path, config)
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.device_put(state, partitioning.replicated(mesh)))
  if lora.quantized_base:
    raise ConfigError(f"lora.quantized_base (QLoRA) needs a quantized base, and {path} is a "
                      "float model: write one with `python tools/quantize.py --checkpoint="
                      f"{path} --output=DIR --mode=int4_weights` and point CHECKPOINT_PATH at "
                      "DIR.")
  base = checkpoints.restore_params(path, sharded_abstract_params(config, mesh))
  return nnx.merge(nnx.graphdef(abstract_model(config)), base)


def train(spec: TrainSpec, mesh: jax.sharding.Mesh, *, operative_config: Optional[str] = None,
          stream: Optional[TextIO] = None) -> dict[str, Any]:
  """Trains `spec.model` on `spec.run.task` over `mesh`; returns the final eval metrics.

  MODEL_DIR (spec.run.model_dir) is locked for the life of the call; its recorded
  spec is compared and updated (run_dir.py); `operative_config` (the gin text that
  produced `spec`) is written there as config.gin.
  """
  stream = stream or sys.stdout
  run = spec.run
  data_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if run.batch_size % data_shards or (run.batch_size // run.microbatches) % data_shards:
    raise ConfigError(f"BATCH_SIZE {run.batch_size} (/{run.microbatches} microbatches) does not "
                      f"split over the mesh's {data_shards} data x fsdp shards; use a multiple.")
  pipeline.check_mesh(spec.model, mesh, run.batch_size // run.microbatches)
  lock = run_dir.RunLock(run.model_dir)
  if jax.process_index() == 0:  # hosts share MODEL_DIR; one of them holds the lock
    lock.acquire()
  try:
    if lock.previous_holder:
      holder = lock.previous_holder
      print(f"note: the previous trainer of {run.model_dir} (pid {holder.get('pid')} on "
            f"{holder.get('host')}) did not exit cleanly; resuming from its last checkpoint.",
            file=stream)
    return _train_locked(spec, mesh, operative_config, stream)
  finally:
    lock.release()


def make_optimizer(spec: TrainSpec, schedule: optax.Schedule) -> optax.GradientTransformation:
  """The run's optimizer: under μP with per-tensor learning rates (models/mup.py), except
  for LoRA, whose adapters are new low-rank matrices trained at the plain rate."""
  if spec.lora is None:
    return optim.model_optimizer(spec.model, spec.optimizer, schedule)
  return optim.make_optimizer(spec.optimizer, schedule)


def _train_locked(spec: TrainSpec, mesh: jax.sharding.Mesh, operative_config: Optional[str],
                  stream: TextIO) -> dict[str, Any]:
  run, config = spec.run, spec.model
  is_main = jax.process_index() == 0
  shard = seqio.ShardInfo(jax.process_index(), jax.process_count())
  check_vocabulary(run.task, config.vocab_size)  # also names an unknown task
  vocabulary = vocabularies.describe(get_task(run.task).output_features["targets"].vocabulary)
  schedule = optim.make_schedule(spec.schedule, run.train_steps)
  checkpointer = checkpoints.Checkpointer(os.path.join(run.model_dir, "checkpoints"),
                                          run.checkpoint_every, run.keep_checkpoints)
  resuming = checkpointer.latest_step() is not None
  adapted = None
  if spec.lora is not None:  # the base is frozen and loaded every time, resumed or not
    _check_init_checkpoint(run.init_checkpoint, config, run.allow_changes)
    base_model = _lora_base(run.init_checkpoint, config, spec.lora, mesh)
    if is_main:
      adapters.record_base(run.model_dir, run.init_checkpoint,
                           nnx.state(base_model, nnx.Param), resuming)
    adapted = adapt(base_model, spec.lora, seed=run.seed)
  steps = make_step_functions(config, make_optimizer(spec, schedule), mesh,
                              run.seed, run.microbatches, run.z_loss, run.label_smoothing,
                              adapted)
  first_batches = [get_batches(run.task, run.feature_lengths, "train", run.batch_size,
                               config.architecture, shard=shard, seed=run.seed)]

  def make_batches():  # the iterator built above first (a seqio pipeline takes seconds)
    return first_batches.pop() if first_batches else get_batches(
        run.task, run.feature_lengths, "train", run.batch_size, config.architecture,
        shard=shard, seed=run.seed)

  if is_main:
    run_dir.check_and_record(run.model_dir, spec, vocabulary, resuming, operative_config,
                             stream)
  state = steps.init()
  start, restored, batches = checkpointer.restore_latest(abstract_state(state), make_batches)
  if start is not None:
    state = restored
    print(f"resumed from {checkpointer.directory} step {start}", file=stream)
  else:
    batches = make_batches()
    if run.init_checkpoint and adapted is None:
      _check_init_checkpoint(run.init_checkpoint, config, run.allow_changes)
      state["params"] = checkpoints.restore_params(run.init_checkpoint,
                                                   abstract_state(state["params"]))
      print(f"initialised params from {run.init_checkpoint}", file=stream)
  start = int(jax.device_get(state["step"]))
  if is_main:
    dropped = run_dir.trim_metrics(run.model_dir, start)
    if dropped:
      print(f"dropped {dropped} metric records and TensorBoard events past step {start} "
            "(written after the checkpoint resumed from)", file=stream)

  encoder_length, decoder_length = config.architecture_spec.model_lengths(run.feature_lengths)
  counts = count(config, inputs_length=encoder_length, targets_length=decoder_length)
  peak, peak_source = metrics.job_peak_flops(config.dtype, run.peak_flops_per_device)
  writer = metrics.MetricsWriter(run.model_dir, enabled=is_main)
  # A step is forward + backward = 3 forwards; over a frozen base, the backward computes
  # activation gradients but no weight gradients, so 2 forwards (the adapters' own FLOPs
  # are negligible at low rank).
  flops_per_token = counts.flops_per_token * (2 / 3 if adapted is not None else 1)
  stages = mesh.shape.get(pipeline.STAGE_AXIS, 1)
  bubble = (pipeline.bubble_fraction(stages, config.pipeline_microbatches,
                                     config.pipeline_repeats) if stages > 1 else None)
  progress = metrics.Progress(run.train_steps, start, flops_per_token, peak,
                              stream=stream if is_main else None, bubble=bubble)
  if is_main:
    print(f"{config.architecture}: {counts.params / 1e6:.2f}M params, "
          f"{flops_per_token / 1e6:.1f} MFLOP/token; mesh {dict(mesh.shape)}; "
          f"MFU against {peak_source}", file=stream)
    if bubble is not None:
      schedule_name = "GPipe" if config.pipeline_repeats == 1 else "circular"
      print(f"pipeline: {stages} stages x {config.pipeline_microbatches} microbatches x "
            f"{config.pipeline_repeats} repeats ({schedule_name} schedule); idle fraction "
            f"(bubble) (S - 1) / (R M + S - 1) = {bubble:.1%}", file=stream)
    if adapted is not None:
      trained = sum(int(x.size) for x in jax.tree.leaves(adapted.adapters))
      print(f"LoRA rank {spec.lora.rank} on {list(spec.lora.targets)}: {trained:,} trainable "
            f"parameters ({trained / counts.params:.2%}); the base {run.init_checkpoint} is "
            "frozen", file=stream)

  # Read once, at the first evaluation: building a seqio pipeline takes seconds.
  validation = functools.cache(lambda: _validation_batches(
      run.task, run.feature_lengths, run.batch_size, config.architecture, shard,
      run.eval_steps, run.seed))
  guard = loop_controls.UpdateGuard(run.nan_policy, run.max_consecutive_skips, checkpointer,
                       stream if is_main else None)
  step = start
  last_eval: dict[str, float] = {}
  # Each step's statistics are read one step late, while the next step runs, so the host
  # never waits on the step it has just dispatched; a step that must be logged, evaluated
  # or saved is read at once (a checkpoint never holds a step not yet checked).
  pending: Optional[tuple[int, Any]] = None
  profiler = loop_controls.StepProfiler(run, stream if is_main else None)
  try:
    with loop_controls.StopSignal() as stop:
      while step < run.train_steps and stop.received is None:
        profiler.before(step)
        state, stats = steps.train(state, partitioning.global_batch(next(batches), mesh))
        step += 1
        profiler.after(step, stats)
        progress.add_tokens(run.batch_size * counts.tokens_per_sequence)
        if pending is not None:
          guard.check(*pending)
        pending = (step, stats)
        logs, evaluates = step % run.log_every == 0, step % run.eval_every == 0
        last = step == run.train_steps or stop.received is not None
        if not (logs or evaluates or last or checkpointer.should_save(step)):
          continue
        stats, pending = guard.check(*pending), None
        if logs or last:
          tokens = max(float(stats["tokens"]), 1.0)
          loss = float(stats["cross_entropy"]) / tokens
          scalars = {"loss": loss, "z_loss": float(stats["z_loss"]) / tokens,
                     "accuracy": float(stats["correct"]) / tokens,
                     "grad_norm": float(stats["grad_norm"]), "skipped_steps": guard.skipped,
                     **progress.report(step, loss)}
          writer.write(step, "train", scalars)
        if evaluates or step == run.train_steps:
          eval_start = time.perf_counter()
          last_eval = _evaluate(steps, state, validation(), mesh)
          progress.exclude(time.perf_counter() - eval_start)
          writer.write(step, "eval", last_eval)
          if is_main:
            print(f"eval at step {step}: loss {last_eval['loss']:.4f}, perplexity "
                  f"{last_eval['perplexity']:.2f}, accuracy {last_eval['accuracy']:.3f}",
                  file=stream)
        checkpointer.save(step, state, batches, force=last)
      if stop.received is not None:  # it may have come after the last step's check
        if pending is not None:
          guard.check(*pending)
        if checkpointer.latest_step() != step:
          checkpointer.save(step, state, batches, force=True)
        if is_main:
          print(f"received signal {stop.received}: saved step {step} and stopped", file=stream)
    if step >= run.train_steps and not last_eval:  # Finished earlier: report it again.
      last_eval = _evaluate(steps, state, validation(), mesh)
  except BaseException:
    profiler.close()
    # Let a save in flight finish (or fail) before the error ends the run; a second
    # error here (e.g. the same full disk) must not hide the first.
    for close in (checkpointer.close, writer.close):
      try:
        close()
      except Exception:  # noqa: BLE001
        pass
    raise
  profiler.close()
  checkpointer.close()
  writer.close()
  return {"step": step, "model_dir": run.model_dir, "skipped_steps": guard.skipped,
          **last_eval}
