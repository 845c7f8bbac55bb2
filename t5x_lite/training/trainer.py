"""The training loop.

`train(spec, mesh)` reads top to bottom: lock MODEL_DIR, build the optimizer,
the step functions (parameters created directly in their shardings) and the
data; compare the spec with the one MODEL_DIR recorded and record it; restore
the newest readable checkpoint if there is one; then step, report, evaluate and
save until TRAIN_STEPS, a signal, or a non-finite update. Everything arrives as
arguments (runs/spec.py); gin stays in the entry point (train.py). The step
functions are training/steps.py's; what a LoRA run trains over, and whether a
fine-tuning checkpoint fits the model, the loader's (runs/loading.py).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Callable, Optional, TextIO

import jax
import seqio
from flax import nnx

from t5x_lite.common import partitioning
from t5x_lite.common.errors import ConfigError
from t5x_lite.data import (
  check_splits,
  check_vocabulary,
  data_fingerprints,
  get_batches,
  get_task,
  mixtures,
  preference,
  vocabularies,
)
from t5x_lite.models import Transformer, pipeline_parallel
from t5x_lite.models.counting import Counts, count
from t5x_lite.models.lora import adapt
from t5x_lite.runs import checkpoints, loading, run_dir
from t5x_lite.runs.spec import TrainSpec
from t5x_lite.training import forking, loop_controls, metrics, objectives, optim, reference
from t5x_lite.training.loop_controls import TrainingHalted  # noqa: F401  (raised by the loop)
from t5x_lite.training.steps import StepFunctions, abstract_state, make_step_functions

# What a preference run's evaluations add (train.py hands it over): metrics of the policy
# model, given the run's tokenized validation pairs.
PolicyEvaluation = Callable[[Transformer, list], dict[str, float]]


def _validation_batches(task, feature_lengths, batch_size, architecture, shard, eval_steps,
                        seed, pairs=None) -> list[dict]:
  """This host's first eval_steps validation batches; every evaluation uses these same ones.
  A preference run's come from its validation `pairs` (reference log-probs added)."""
  if pairs is not None:
    rows, cache = pairs
    batches = reference.WithReference(preference.get_pair_batches(
        rows, feature_lengths, "validation", batch_size, architecture, shard=shard,
        seed=seed, shuffle=False), cache)
  else:
    batches = get_batches(task, feature_lengths, "validation", batch_size, architecture,
                          shard=shard, seed=seed, shuffle=False, num_epochs=None)
  return [next(batches) for _ in range(eval_steps)]


def _validation_metrics(steps: StepFunctions, state, batches: list[dict], mesh, objective
                        ) -> dict[str, float]:
  """The objective's validation metrics (e.g. loss, accuracy, perplexity) over `batches`."""
  totals: dict[str, float] = {}
  for batch in batches:
    sums = steps.validate(state, partitioning.global_batch(batch, mesh))
    for key, value in jax.device_get(sums).items():
      totals[key] = totals.get(key, 0.0) + float(value)
  return objective.eval_scalars(totals)


def _initial_params(path: str, params: nnx.State, head: str) -> nnx.State:
  """The params of train.init_checkpoint in place of `params`; a reward model or critic
  started from a language model keeps its own (zero) scalar head, which that checkpoint
  lacks."""
  record = run_dir.read_record(path)
  saved_head = (record or {}).get("spec", {}).get("TransformerConfig", {}).get("head", "lm")
  if head != "lm" and saved_head == "lm":
    mapping = params.raw_mapping
    body = nnx.State({key: value for key, value in mapping.items() if key != "reward_head"})
    restored = checkpoints.newest_params(path, abstract_state(body))[1].raw_mapping
    return nnx.State({key: mapping[key] if key == "reward_head" else restored[key]
                      for key in mapping})
  return checkpoints.newest_params(path, abstract_state(params))[1]


def _preference_pairs(run, vocab_size: int, stream: TextIO) -> dict[str, list]:
  """A preference run's tokenized pairs per split (bad rows reported on `stream`)."""
  if not preference.is_preference_task(run.task):
    raise ConfigError(f"preference.* trains on preference pairs: set MIXTURE_OR_TASK_NAME to "
                      f"one of {list(preference.TASKS)} (got {run.task!r}) and bind "
                      "preference_data.train.")
  vocabulary = preference.vocabulary(run.task)
  if vocabulary.vocab_size > vocab_size:
    raise ConfigError(f"task {run.task!r} uses {vocabulary.vocab_size} token ids but "
                      f"TransformerConfig.vocab_size is {vocab_size}; use a task whose "
                      "vocabulary fits (preference.byte for byte-level models).")
  pairs = {}
  for split in ("train", "validation"):
    pairs[split], report = preference.read_pairs(preference.registered(), split, vocabulary,
                                                 run.feature_lengths)
    report.print(split, stream, what="preference data")
  return pairs


def _print_start(spec: TrainSpec, mesh: jax.sharding.Mesh, counts: Counts,
                 flops_per_token: float, peak_source: str, bubble: Optional[float], adapted,
                 stream: TextIO) -> None:
  """The start-of-run lines: model size and FLOPs, mesh, MFU's peak, pipeline, LoRA."""
  config = spec.model
  params = counts.params
  # Routed experts as the router sees them: granularity G makes E x G experts, top k x G.
  routed = (f" ({counts.active_params / 1e6:.2f}M active: {config.routed_experts} experts, top-"
            f"{config.experts_per_token})" if config.num_experts else "")
  print(f"{config.architecture}: {params / 1e6:.2f}M params{routed}, "
        f"{flops_per_token / 1e6:.1f} MFLOP/token; mesh {dict(mesh.shape)}; "
        f"MFU against {peak_source}", file=stream)
  if bubble is not None:
    schedule_name = "GPipe" if config.pipeline_repeats == 1 else "circular"
    print(f"pipeline: {mesh.shape[pipeline_parallel.STAGE_AXIS]} stages x "
          f"{config.pipeline_microbatches} microbatches x {config.pipeline_repeats} repeats "
          f"({schedule_name} schedule); idle fraction (bubble) (S - 1) / (R M + S - 1) = "
          f"{bubble:.1%}", file=stream)
  if adapted is not None:
    trained = sum(int(x.size) for x in jax.tree.leaves(adapted.adapters))
    print(f"LoRA rank {spec.lora.rank} on {list(spec.lora.targets)}: {trained:,} trainable "
          f"parameters ({trained / params:.2%}); the base {spec.run.init_checkpoint} is "
          "frozen", file=stream)


def check_layout(spec: TrainSpec, mesh: jax.sharding.Mesh) -> None:
  """The run's batch, LoRA and pipeline settings agree with the mesh (ConfigError naming
  what to change otherwise); train and compile_check both ask before building anything."""
  run = spec.run
  data_shards = partitioning.batch_shards(mesh)
  if run.batch_size % data_shards or (run.batch_size // run.microbatches) % data_shards:
    raise ConfigError(f"BATCH_SIZE {run.batch_size} (/{run.microbatches} microbatches) does not "
                      f"split over the mesh's {data_shards} data x fsdp x expert shards; use a "
                      "multiple.")
  experts = mesh.shape.get("expert", 1)
  if experts > 1 and spec.model.num_experts and spec.model.routed_experts % experts:
    raise ConfigError(f"the mesh's expert axis of {experts} needs a model whose routed experts "
                      f"split evenly over it: TransformerConfig.num_experts="
                      f"{spec.model.num_experts} (x moe_granularity "
                      f"{spec.model.moe_granularity}) is not a multiple of {experts}. Change "
                      "num_experts or the expert entry of create_mesh.shape.")
  if spec.lora is not None and mesh.shape.get(pipeline_parallel.STAGE_AXIS, 1) > 1:
    raise ConfigError("LoRA runs cannot use pipeline stages: adapters wrap each layer of the "
                      "unscanned layout, and stages split the scanned one. Use a mesh without "
                      "a stage axis (data, FSDP, tensor: e.g. gin/meshes/fsdp.gin).")
  pipeline_parallel.check_mesh(spec.model, mesh, run.batch_size // run.microbatches)


def build_steps(spec: TrainSpec, mesh: jax.sharding.Mesh, adapted=None) -> StepFunctions:
  """The run's optimizer and step functions: the one builder `train` and compile_check
  share (μP learning rates, LoRA adapters, microbatches, z-loss, label smoothing)."""
  run = spec.run
  schedule = optim.make_schedule(spec.schedule, run.train_steps)
  optimizer = optim.make_optimizer(spec.optimizer, schedule, spec.model,
                                   adapters_only=spec.lora is not None)
  return make_step_functions(spec.model, optimizer, mesh, run.seed, run.microbatches,
                             run.z_loss, run.label_smoothing, adapted,
                             objectives.for_spec(spec, run.z_loss, run.label_smoothing))


def train(spec: TrainSpec, mesh: jax.sharding.Mesh, *, operative_config: Optional[str] = None,
          stream: Optional[TextIO] = None,
          batches_factory: Optional[Callable[[], Any]] = None,
          evaluate_policy: Optional[PolicyEvaluation] = None) -> dict[str, Any]:
  """Trains `spec.model` on `spec.run.task` over `mesh`; returns the final eval metrics.

  `batches_factory` makes the batches of a run whose data depend on the policy (an
  `rl.*` run: alignment/rl_data.py, handed over by train.py). Such batches are given the
  parameters before each step (`set_params`), may add their own scalars to the logged
  ones (`stats`), and evaluate the policy themselves (`evaluate(params)`).
  `evaluate_policy(model, validation_pairs)` adds its metrics of the policy to each
  evaluation of a preference run, given the run's tokenized validation pairs (train.py:
  the KL to the reference, alignment/policy_kl.py).

  MODEL_DIR (spec.run.model_dir) is locked for the life of the call; its recorded
  spec is compared and updated (run_dir.py); `operative_config` (the gin text that
  produced `spec`) is written there as config.gin.
  """
  stream = stream or sys.stdout
  run = spec.run
  check_layout(spec, mesh)
  new = not os.path.isdir(run.model_dir) or not os.listdir(run.model_dir)
  lock = run_dir.RunLock(run.model_dir)
  if jax.process_index() == 0:  # hosts share MODEL_DIR; one of them holds the lock
    lock.acquire()
  try:
    if lock.previous_holder:
      holder = lock.previous_holder
      print(f"note: the previous trainer of {run.model_dir} (pid {holder.get('pid')} on "
            f"{holder.get('host')}) did not exit cleanly; resuming from its last checkpoint.",
            file=stream)
    return _train_locked(spec, mesh, operative_config, stream, batches_factory,
                         evaluate_policy)
  except BaseException:
    lock.release()
    if new and jax.process_index() == 0:
      run_dir.remove_unstarted(run.model_dir)  # a failed start leaves no trace
    raise
  finally:
    lock.release()


def _train_locked(spec: TrainSpec, mesh: jax.sharding.Mesh, operative_config: Optional[str],
                  stream: TextIO, batches_factory: Optional[Callable[[], Any]],
                  evaluate_policy: Optional[PolicyEvaluation]) -> dict[str, Any]:
  run, config = spec.run, spec.model
  is_main = jax.process_index() == 0
  shard = seqio.ShardInfo(jax.process_index(), jax.process_count())
  objective = objectives.for_spec(spec, run.z_loss, run.label_smoothing)
  if (spec.rl is not None) != (batches_factory is not None):
    raise ConfigError("an RL run (rl.*) samples its own batches: start it with "
                      "`python -m t5x_lite.train`, which builds them.")
  pairs = _preference_pairs(run, config.vocab_size, stream) if spec.preference else None
  if pairs is None:
    check_vocabulary(run.task, config.vocab_size)  # also names an unknown task
    check_splits(run.task)  # e.g. an empty validation split: now, not at the first evaluation
    vocabulary = vocabularies.describe(get_task(run.task).output_features["targets"].vocabulary)
  else:
    vocabulary = vocabularies.describe(preference.vocabulary(run.task))
  checkpointer = checkpoints.Checkpointer(os.path.join(run.model_dir, "checkpoints"),
                                          run.checkpoint_every, run.keep_checkpoints,
                                          keep_steps=run.keep_steps)
  resuming = checkpointer.latest_step() is not None
  if run.init_checkpoint and spec.lora is None and not resuming:
    loading.check_init_checkpoint(run.init_checkpoint, config, run.allow_changes)
  adapted = base_model = None
  if spec.lora is not None:  # the base is frozen and loaded every time, resumed or not
    loading.check_init_checkpoint(run.init_checkpoint, config, run.allow_changes,
                                  adapters=True)
    base_model = loading.lora_base(run.init_checkpoint, config, spec.lora, mesh)
    if is_main:
      loading.record_base(run.model_dir, run.init_checkpoint,
                           nnx.state(base_model, nnx.Param), resuming)
    adapted = adapt(base_model, spec.lora, seed=run.seed)
  steps = build_steps(spec, mesh, adapted)
  # A preference run's reference log-probs, filled before its first batch is drawn.
  reference_logps: dict[str, Any] = {}
  first_batches = [] if pairs is not None or batches_factory else [
      get_batches(run.task, run.feature_lengths, "train", run.batch_size, config.architecture,
                  shard=shard, seed=run.seed)]

  def make_batches():  # the iterator built above first (a seqio pipeline takes seconds)
    if batches_factory is not None:
      return batches_factory()
    if pairs is not None:
      return reference.WithReference(preference.get_pair_batches(
          pairs["train"], run.feature_lengths, "train", run.batch_size, config.architecture,
          shard=shard, seed=run.seed), reference_logps.get("train"))
    return first_batches.pop() if first_batches else get_batches(
        run.task, run.feature_lengths, "train", run.batch_size, config.architecture,
        shard=shard, seed=run.seed)

  data = (data_fingerprints(run.task) if pairs is None else
          {f"preference/{split}": preference.fingerprint(rows) for split, rows in pairs.items()})
  run_record = (run_dir.check_spec(run.model_dir, spec, vocabulary, resuming, stream,
                                   data=data) if is_main else None)
  if run.fork_from and not resuming:
    forking.check_parent(spec, vocabulary, data)
  state = steps.init()
  needs_reference = spec.preference is not None and spec.preference.needs_reference

  def reference_identity(reference_params) -> dict[str, str]:
    return reference.identity(loading.fingerprint(reference_params), pairs, run.feature_lengths,
                              config.architecture)

  if needs_reference and resuming:  # read back (and checked) before the data is restored
    reference_params = (nnx.state(base_model, nnx.Param) if base_model is not None else
                        checkpoints.newest_params(run.init_checkpoint,
                                                  abstract_state(state["params"]))[1])
    reference_logps.update(reference.load_or_compute(
        run.model_dir, reference_identity(reference_params), None, resuming=True).logps)
    del reference_params
  start, restored, batches = checkpointer.restore_latest(abstract_state(state), make_batches)
  if start is not None:
    state = restored
    print(f"resumed from {checkpointer.directory} step {start}", file=stream)
  elif run.fork_from:
    state, batches = checkpoints.restore_step(run.fork_from, run.fork_step,
                                              abstract_state(state), make_batches)
    print(f"cooldown branch: continuing {run.fork_from} from its step {run.fork_step}",
          file=stream)
  else:
    if run.init_checkpoint and adapted is None:
      state["params"] = _initial_params(run.init_checkpoint, state["params"], config.head)
      print(f"initialised params from {run.init_checkpoint}", file=stream)
    if needs_reference:  # the policy is still the reference (LoRA: adapters at zero)
      def score_all():
        unshuffled = {split: preference.get_pair_batches(
            rows, run.feature_lengths, split, run.batch_size, config.architecture,
            shard=shard, seed=run.seed, shuffle=False) for split, rows in pairs.items()}
        return reference.compute(
            lambda batch: jax.device_get(steps.score(state, partitioning.global_batch(batch,
                                                                                     mesh))),
            unshuffled, {split: len(rows) for split, rows in pairs.items()})
      reference_params = (nnx.state(base_model, nnx.Param) if base_model is not None
                          else state["params"])
      reference_logps.update(reference.load_or_compute(
          run.model_dir, reference_identity(reference_params), score_all, resuming=False,
          write=is_main).logps)
      print(f"reference log-probabilities of {len(pairs['train'])} training and "
            f"{len(pairs['validation'])} validation pairs: {run.model_dir}/{reference.FILE}",
            file=stream)
    batches = make_batches()
  if is_main:  # only now: a start that failed above left the record as it was
    run_dir.record(run.model_dir, run_record, operative_config)
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
  flops_per_token = counts.step_flops_per_token(frozen_base=adapted is not None)
  stages = mesh.shape.get(pipeline_parallel.STAGE_AXIS, 1)
  bubble = (pipeline_parallel.bubble_fraction(stages, config.pipeline_microbatches,
                                              config.pipeline_repeats) if stages > 1 else None)
  progress = metrics.Progress(run.train_steps, start, flops_per_token, peak,
                              stream=stream if is_main else None, bubble=bubble)
  if is_main:
    _print_start(spec, mesh, counts, flops_per_token, peak_source, bubble, adapted, stream)
  # A pair is two rows; an RL prompt, group_size rows.
  rows_per_step = run.batch_size * (2 if pairs is not None else
                                    spec.rl.group_size if spec.rl is not None else 1)
  tokens_per_step = rows_per_step * counts.tokens_per_sequence
  planned = mixtures.accounting(run.task, run.feature_lengths,
                                run.train_steps * tokens_per_step)
  if planned and is_main:
    print(mixtures.format_accounting(
        planned, f"data mix over the planned {run.train_steps * tokens_per_step:.4g} tokens:"),
        file=stream)

  # Read once, at the first evaluation: building a seqio pipeline takes seconds.
  validation = functools.cache(lambda: _validation_batches(
      run.task, run.feature_lengths, run.batch_size, config.architecture, shard,
      run.eval_steps, run.seed,
      None if pairs is None else (pairs["validation"], reference_logps.get("validation"))))
  def evaluate(state) -> dict[str, float]:  # batches sampled from the policy score it
    if hasattr(batches, "evaluate"):
      return batches.evaluate(state["params"])
    measured = _validation_metrics(steps, state, validation(), mesh, objective)
    if evaluate_policy is not None and pairs is not None:
      measured.update(evaluate_policy(steps.model(state["params"]), pairs["validation"]))
    return measured

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
        if hasattr(batches, "set_params"):  # batches sampled from the policy (RL)
          batches.set_params(state["params"])
        state, stats = steps.train(state, partitioning.global_batch(next(batches), mesh))
        step += 1
        profiler.after(step, stats)
        progress.add_tokens(tokens_per_step)
        if pending is not None:
          guard.check(*pending)
        pending = (step, stats)
        logs, evaluates = step % run.log_every == 0, step % run.eval_every == 0
        last = step == run.train_steps or stop.received is not None
        if not (logs or evaluates or last or checkpointer.should_save(step)):
          continue
        stats, pending = guard.check(*pending), None
        if logs or last:
          scalars = objective.scalars({key: value for key, value in stats.items()
                                       if key not in ("grad_norm", "finite",
                                                      "params_finite")})
          scalars.update(getattr(batches, "stats", {}))
          scalars.update(grad_norm=float(stats["grad_norm"]), skipped_steps=guard.skipped,
                         **progress.report(step, scalars["loss"],
                                           objectives.describe_routing(scalars)))
          writer.write(step, "train", scalars)
        if evaluates or step == run.train_steps:
          eval_start = time.perf_counter()
          last_eval = evaluate(state)
          progress.exclude(time.perf_counter() - eval_start)
          writer.write(step, "eval", last_eval)
          if is_main:
            print(f"eval at step {step}: " + ", ".join(
                f"{name} {value:.4f}" for name, value in last_eval.items()
                if name != "tokens") if hasattr(batches, "evaluate") else
                f"eval at step {step}: {objective.describe_eval(last_eval)}", file=stream)
        checkpointer.save(step, state, batches, force=last)
      if stop.received is not None:  # it may have come after the last step's check
        if pending is not None:
          guard.check(*pending)
        if checkpointer.latest_step() != step:
          checkpointer.save(step, state, batches, force=True)
        if is_main:
          print(f"received signal {stop.received}: saved step {step} and stopped", file=stream)
    if step >= run.train_steps and not last_eval:  # Finished earlier: report it again.
      last_eval = evaluate(state)
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
  seen = mixtures.accounting(run.task, run.feature_lengths, step * tokens_per_step)
  if seen:
    writer.write(step, "data", {f"epochs/{row.task}": row.epochs for row in seen
                                if row.epochs is not None})
    if is_main:
      print(mixtures.format_accounting(seen, f"data mix seen in {step * tokens_per_step:.4g} "
                                             f"tokens ({step} steps):"), file=stream)
  writer.close()
  return {"step": step, "model_dir": run.model_dir, "skipped_steps": guard.skipped,
          **last_eval}
