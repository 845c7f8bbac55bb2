"""LoRA runs on disk: the base they adapt, loading them merged, and merging them out.

A LoRA run (`lora.*` bound: gin/runs/lora.gin) checkpoints only its adapters and their
optimizer state; the frozen base stays in its own MODEL_DIR (train.init_checkpoint).
MODEL_DIR/adapter.json names that base and a fingerprint of its parameters. Resuming,
infer, evaluate and merge fingerprint the base they load and refuse one that differs:
adapters trained on one model are noise on another, and a base run that trained on
after the adapters were made is another model.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite import checkpoints, files, quantization, run_dir
from t5x_lite.models import lora
from t5x_lite.models.configs import TransformerConfig
from t5x_lite.models.transformer import Transformer
from t5x_lite.spec import config_from_json

ADAPTER_FILE = "adapter.json"
# Values of each parameter that the fingerprint reads, evenly strided over the tensor.
_SAMPLE = 4096


class AdapterBaseError(run_dir.RunDirError):
  """Adapters meet a base model other than the one they were trained on."""


def fingerprint(params: Any) -> str:
  """sha256 of every parameter's name, shape and an evenly strided sample of its values
  rounded to bfloat16, so one checkpoint loaded in float32 or bfloat16 agrees with itself
  while a model trained any further (or another model) does not."""
  digest = hashlib.sha256()
  for name, value in sorted(checkpoints.on_disk(checkpoints.flatten_state(params)).items()):
    stride = max(1, value.size // _SAMPLE)
    sample = jnp.ravel(value)[::stride].astype(jnp.bfloat16)
    digest.update(f"{name}{tuple(value.shape)}".encode())
    digest.update(np.asarray(jax.device_get(sample)).view(np.uint16).tobytes())
  return digest.hexdigest()


def _read(model_dir: str) -> Optional[dict]:
  path = os.path.join(model_dir, ADAPTER_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as handle:
      record = json.load(handle)
    if {"base_checkpoint", "base_fingerprint"} <= set(record):
      return record
  except (OSError, ValueError):
    pass
  raise run_dir.RunDirError(f"{path} is unreadable or not an adapter record; restore it from a "
                            "copy (it names the base model the adapters belong to).")


def _check_base(record: dict, base_path: str, base_fingerprint: str, model_dir: str) -> None:
  if record["base_fingerprint"] != base_fingerprint:
    raise AdapterBaseError(
        f"the adapters in {model_dir} were trained on the base {record['base_checkpoint']} "
        f"(fingerprint {record['base_fingerprint'][:12]}), but {base_path} holds other "
        f"parameters (fingerprint {base_fingerprint[:12]}). Point CHECKPOINT_PATH (or --base) "
        "at the base they were trained on, or train new adapters in a new MODEL_DIR.")


def record_base(model_dir: str, base_path: str, base_params: Any, resuming: bool) -> None:
  """A new LoRA run records its base; a resumed one must have loaded that same base."""
  base_fingerprint = fingerprint(base_params)
  record = _read(model_dir)
  if record is not None:
    _check_base(record, base_path, base_fingerprint, model_dir)
    return
  if resuming:
    raise run_dir.RunDirError(
        f"{model_dir} holds adapter checkpoints but no {ADAPTER_FILE} naming their base; "
        "restore it from a copy, or train new adapters in a new MODEL_DIR.")
  with files.atomic_write(os.path.join(model_dir, ADAPTER_FILE)) as handle:
    json.dump({"base_checkpoint": os.path.abspath(base_path),
               "base_fingerprint": base_fingerprint}, handle, indent=1)


def lora_config(model_dir: str) -> Optional[lora.LoraConfig]:
  """The LoraConfig a run directory trained with, or None for a run without adapters."""
  record = run_dir.read_record(model_dir)
  if record is None or "lora" not in record["spec"]:
    return None
  return config_from_json(lora.LoraConfig, record["spec"]["lora"])


def load_merged(model_dir: str, config: Optional[TransformerConfig] = None,
                base: Optional[str] = None, stream: Optional[TextIO] = None) -> Transformer:
  """The base of the LoRA run `model_dir` with its newest adapters folded in: a plain
  Transformer (for infer, evaluate, export). `base` overrides the recorded base path
  (a moved base); either way its parameters must match the recorded fingerprint."""
  return _load_merged(model_dir, config, base, stream)[1]


def _load_merged(model_dir: str, config: Optional[TransformerConfig], base: Optional[str],
                 stream: Optional[TextIO]) -> tuple[int, Transformer]:
  adapter_config = lora_config(model_dir)
  record = _read(model_dir)
  if adapter_config is None or record is None:
    raise run_dir.RunDirError(f"{model_dir} is not a LoRA run directory (no lora section in "
                              f"{run_dir.SPEC_FILE} or no {ADAPTER_FILE}).")
  config = (config or run_dir.recorded_model(model_dir)).replace(scan_layers=False)
  base = base or record["base_checkpoint"]
  model = checkpoints.load_model(base, config)
  _check_base(record, base, fingerprint(nnx.state(model, nnx.Param)), model_dir)
  adapted = lora.adapt(model, adapter_config)
  step, adapters = checkpoints.newest_params(
      model_dir, checkpoints.on_default_device(adapted.adapters), stream)
  # Over a quantized base (QLoRA) the merged model is float: the adapters fold into the
  # dequantized weights, and the layers without adapters are dequantized too.
  merged = lora.merge_lora(nnx.merge(adapted.graphdef, adapters, adapted.base))
  return step, quantization.dequantize(merged) if quantization.quantized_mode(merged) else merged


def merge(model_dir: str, output_dir: str, base: Optional[str] = None,
          stream: Optional[TextIO] = None) -> int:
  """Writes the merged model of the LoRA run `model_dir` as a plain run directory
  `output_dir` (params-only checkpoint at the adapters' step, and the run record without
  the lora section) that infer, evaluate and fine-tuning read. Returns the step."""
  if os.path.isdir(os.path.join(output_dir, "checkpoints")):
    raise run_dir.RunDirError(f"{output_dir} already holds checkpoints; merge into a new "
                              "directory (nothing there is overwritten).")
  step, model = _load_merged(model_dir, None, base, stream)
  record = run_dir.read_record(model_dir)
  record["spec"].pop("lora")
  adapter = _read(model_dir)
  record["merged_from"] = {"adapters": os.path.abspath(model_dir), "step": step,
                           "base_checkpoint": os.path.abspath(base or adapter["base_checkpoint"]),
                           "base_fingerprint": adapter["base_fingerprint"]}
  os.makedirs(output_dir, exist_ok=True)
  checkpoints.save_params(output_dir, step, nnx.state(model, nnx.Param))
  with files.atomic_write(os.path.join(output_dir, run_dir.SPEC_FILE)) as handle:
    json.dump(record, handle, indent=1)
  return step
