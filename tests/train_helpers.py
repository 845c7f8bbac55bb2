"""Tiny training runs shared by the trainer tests."""

import json
import os

import numpy as np
import orbax.checkpoint as ocp

from t5x_lite import gin_utils
from t5x_lite.runs.checkpoints import item_handlers
from t5x_lite.training import trainer

# How long a test waits on a subprocess or for progress before calling it hung. Only a
# hang may trip it, never a slow machine: the longest such wait, measured on a fresh clone
# pinned to one core beside other work, was 104 s (a notebook); a shared or throttled runner
# may be several times slower still. T5X_LITE_TEST_HANG_TIMEOUT overrides it (seconds).
HANG_TIMEOUT_S = float(os.environ.get("T5X_LITE_TEST_HANG_TIMEOUT", 1800))

# architecture: (task, feature lengths); byte vocabularies fit the tiny presets' 512 ids.
TASKS = {
    "causal_decoder": ("pydocs.full_lm.byte", {"targets": 64}),
    "prefix_decoder": ("pydocs.prefix_lm.byte", {"inputs": 32, "targets": 32}),
    "encoder_decoder": ("pydocs.span_corruption.byte", {"inputs": 64, "targets": 14}),
}


def gin_files(architecture: str, mesh: str = "single_device") -> list[str]:
  return ["runs/pretrain.gin", f"models/tiny_{architecture}.gin", f"meshes/{mesh}.gin"]


def bindings(model_dir, architecture="causal_decoder", steps=6, **extra) -> list[str]:
  task, lengths = TASKS[architecture]
  values = {"MODEL_DIR": repr(str(model_dir)), "TRAIN_STEPS": steps,
            "MIXTURE_OR_TASK_NAME": repr(task), "TASK_FEATURE_LENGTHS": lengths,
            "BATCH_SIZE": 4, "WARMUP_STEPS": 2, "LEARNING_RATE": 1e-3,
            "train.log_every": 1, "train.eval_every": 1000, "train.eval_steps": 1,
            "train.checkpoint_every": 2, "train.peak_flops_per_device": 1e11}
  values.update(extra)
  return [f"{key} = {value}" for key, value in values.items()]


def run_training(model_dir, architecture="causal_decoder", mesh="single_device", stream=None,
                 **extra) -> dict:
  """Trains a tiny model configured exactly as `python -m t5x_lite.train` would be."""
  gin_utils.parse(gin_files(architecture, mesh), bindings(model_dir, architecture, **extra))
  return trainer.train(gin_utils.resolve_train_spec(), gin_utils.resolve_mesh(), stream=stream)


def command_line(model_dir, architecture="causal_decoder", **extra) -> list[str]:
  files = [f"--gin_file={f}" for f in gin_files(architecture)]
  return files + ["--gin." + b.replace(" = ", "=", 1) for b in bindings(model_dir, architecture,
                                                                          **extra)]


def train_losses(model_dir) -> dict[int, float]:
  """Per-step training losses from metrics.jsonl (the last record of each step wins)."""
  with open(os.path.join(model_dir, "metrics.jsonl")) as handle:
    records = [json.loads(line) for line in handle]
  return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def saved_state(model_dir, step=None) -> dict[str, np.ndarray]:
  """Every array of a checkpoint step as stored on disk (the newest step by default)."""
  manager = ocp.CheckpointManager(os.path.join(str(model_dir), "checkpoints"),
                                  item_handlers=item_handlers(),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step is None else step
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return {k: np.asarray(v) for k, v in state["state"].items()}


def saved_params(model_dir, step=None) -> dict[str, np.ndarray]:
  return {k: v for k, v in saved_state(model_dir, step).items() if k.startswith("params.")}
