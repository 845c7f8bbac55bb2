"""The main job: `python -m t5x_lite.train --gin_file=... --gin.KEY=VALUE ...`.

Flags follow T5X: repeatable --gin_file, --gin.KEY=VALUE (e.g.
--gin.MODEL_DIR="'/tmp/run'"), --gin_search_paths. gin/runs/pretrain.gin
defines the macros MODEL_DIR, TRAIN_STEPS, MIXTURE_OR_TASK_NAME,
TASK_FEATURE_LENGTHS and BATCH_SIZE. A user mistake (bad binding, missing
file, mesh that does not fit, mismatched checkpoint, non-finite loss) ends
in one message on stderr and exit status 2 (errors.UserError); a bug keeps its
traceback. SIGTERM/SIGINT finish the step, save a checkpoint and exit 0.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

import gin
import jax

from t5x_lite import gin_utils
from t5x_lite.alignment import policy_kl, rl_data
from t5x_lite.common.errors import run_cli
from t5x_lite.data import get_task, preference
from t5x_lite.training import trainer

# XLA:CPU's YNNPACK/XNNPACK dot fusions made the training step of the 6 x 512 causal
# decoder at length 512 (vocabulary 32k) 15% slower than its default dots (5.98 s vs
# 5.05 s a step, interleaved in one run on 2 cores; the 3+3 encoder-decoder: 3.47 s vs
# 3.42 s), while they make small-batch decoding faster (1.0 vs 1.3 ms a token at batch 1).
# So training processes turn them off and inference keeps XLA's defaults.
TRAINING_XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",
                          "--xla_cpu_use_xnnpack=false")


def use_training_xla_flags() -> None:
  """Adds TRAINING_XLA_CPU_FLAGS to XLA_FLAGS (a flag the user already set wins). Only
  CPU compilations read them, and only when set before JAX's first computation."""
  current = os.environ.get("XLA_FLAGS", "")
  added = [flag for flag in TRAINING_XLA_CPU_FLAGS if flag.split("=")[0] not in current]
  if added:
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()


@gin.configurable
def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           cpu_collectives: str = "gloo") -> None:
  """Joins a multi-process job via jax.distributed (before anything touches devices).

  Unbound, nothing happens on one host; on clusters jax detects the
  coordinator itself (SLURM, TPU pods, Open MPI) when `coordinator_address`
  is bound to "auto". CPU processes talk over gloo.
  """
  if coordinator_address is None:
    return
  # Only CPU devices use this setting; it must be set before the backend starts.
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  if coordinator_address == "auto":
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def main(argv: Sequence[str]) -> int:
  return run_cli(lambda: _main(argv))


def _main(argv: Sequence[str]) -> int:
  use_training_xla_flags()
  gin_utils.parse_flags(argv)
  gin_utils.register_tasks()
  spec = gin_utils.resolve_train_spec()  # before jax.distributed: a bad binding fails fast
  initialize_distributed()
  mesh = gin_utils.resolve_mesh()
  batches_factory = evaluate_policy = None
  if spec.rl is not None:  # an RL run samples its batches from the policy it trains
    vocabulary = get_task(spec.run.task).output_features["targets"].vocabulary
    batches_factory = rl_data.factory(spec, vocabulary)
  # A preference run's KL to the reference, on the policy's samples.
  if spec.preference is not None and preference.is_preference_task(spec.run.task):
    evaluate_policy = policy_kl.evaluator(spec, preference.vocabulary(spec.run.task))
  result = trainer.train(spec, mesh, operative_config=gin.operative_config_str(),
                         batches_factory=batches_factory, evaluate_policy=evaluate_policy)
  if jax.process_index() == 0:
    model_dir = result["model_dir"]
    print(f"finished at step {result['step']}"
          + (f": validation loss {result['loss']:.4f}" if "loss" in result else "")
          + (f", perplexity {result['perplexity']:.2f}" if "perplexity" in result else "")
          + (f": validation reward {result['reward']:.4f}, solved {result['solved']:.3f}"
             if "reward" in result and "loss" not in result else ""))
    if result["skipped_steps"]:
      print(f"warning: {result['skipped_steps']} non-finite updates were skipped in this run "
            "(train.nan_policy='skip'); see the console above and metrics.jsonl.")
    print(f"checkpoints: {model_dir}/checkpoints\nmetrics: {model_dir}/metrics.jsonl\n"
          f"TensorBoard: tensorboard --logdir {model_dir}/tensorboard")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
