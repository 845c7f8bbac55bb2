"""What a run directory holds and how to get a model out of it: the one loader.

A run directory (run_dir.py) is of one kind (`kind_of`):
  plain      a float model (pretraining, fine-tuning, or the output of `merge`)
  lora       adapters only; the frozen base stays in its own MODEL_DIR, named with a
             fingerprint of its parameters in MODEL_DIR/adapter.json
  quantized  integer weights written by `quantize` (models/quantization.py)

`load_model` / `newest_model` serve every kind (infer, evaluate, lm_eval, merge,
export); `lora_base` and `check_init_checkpoint` serve the trainer; `merge_adapters`
and `write_quantized` write a derived run directory (`_write_derived`: a params-only
checkpoint and the source's record, amended) that the loader reads back.

A LoRA run's base is fingerprinted: resuming, infer, evaluate and merge refuse a base
whose parameters differ from the recorded ones: adapters trained on one model are noise
on another, and a base run that trained on after the adapters were made is another model.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Optional, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite.common import files, partitioning
from t5x_lite.common.errors import ConfigError
from t5x_lite.models import lora, quantization
from t5x_lite.models.configs import TransformerConfig, contradictions
from t5x_lite.models.params import abstract_model
from t5x_lite.models.transformer import Transformer, create_model
from t5x_lite.runs import checkpoints, run_dir
from t5x_lite.runs.spec import config_from_json

ADAPTER_FILE = "adapter.json"
KINDS = ("plain", "lora", "quantized")
# Values of each parameter that the fingerprint reads, evenly strided over the tensor.
_SAMPLE = 4096


class AdapterBaseError(run_dir.RunDirError):
  """Adapters meet a base model other than the one they were trained on."""


def kind_of(record: Optional[dict]) -> str:
  """The kind (KINDS) of a run record (run_dir.read_record); no record is plain."""
  if record is not None and "lora" in record["spec"]:
    return "lora"
  if record is not None and record.get("quantization"):
    return "quantized"
  return "plain"


# ------------------------------------------------------------------------------ loading


def load_model(path: str, config: Optional[TransformerConfig] = None, *,
               base: Optional[str] = None, quantize: Optional[str] = None,
               stream: Optional[TextIO] = None) -> Transformer:
  """The model of the newest readable checkpoint in `path` (a MODEL_DIR or its
  checkpoints/ directory), on the default device.

  config: defaults to the model the run directory recorded. A LoRA run loads as its
  base (recorded, or `base` for a moved one; fingerprint-checked) with the adapters
  merged in; a quantized one as the quantized model. quantize: a mode of
  models/quantization.py to quantize a float model by as it loads.
  """
  return newest_model(path, config, base=base, quantize=quantize, stream=stream)[1]


def newest_model(path: str, config: Optional[TransformerConfig] = None, *,
                 base: Optional[str] = None, quantize: Optional[str] = None,
                 stream: Optional[TextIO] = None) -> tuple[int, Transformer]:
  """(step, model) of `load_model`."""
  record = run_dir.read_record(path)
  kind = kind_of(record)
  config = config or run_dir.model_of(record)
  if config is None:
    raise checkpoints.CheckpointError(
        f"{path} records no model configuration ({run_dir.SPEC_FILE}); pass the "
        "TransformerConfig it was trained with.")
  if quantize is not None:
    quantization.check_mode(quantize)
    if kind == "quantized":
      raise quantization.QuantizationError(
          f"{path} is already quantized ({record['quantization']['mode']}); quantize its "
          "float checkpoint instead.")
    config = config.replace(scan_layers=False)  # quantized one projection at a time
  if kind == "lora":
    step, model = _merged(path, config, base, stream)
  elif kind == "quantized":
    step, model = _quantized(path, config, record["quantization"], stream)
  else:
    graphdef, abstract_params = nnx.split(abstract_model(config), nnx.Param)
    step, restored = checkpoints.newest_params(
        path, checkpoints.on_default_device(abstract_params), stream)
    model = nnx.merge(graphdef, restored)
  return step, (model if quantize is None else quantization.quantize(model, quantize))


def _quantized(path: str, config: TransformerConfig, recorded: dict,
               stream: Optional[TextIO]) -> tuple[int, Transformer]:
  """A quantized run directory as a quantized model: the quantized structure is rebuilt
  from a fresh model, then the stored integer weights restored into it."""
  model = quantization.quantize(create_model(config.replace(scan_layers=False)),
                                recorded["mode"], output_layer=recorded["output_layer"])
  graphdef, state = nnx.split(model, nnx.Param)
  step, restored = checkpoints.newest_params(
      path, checkpoints.on_default_device(quantization.storable(state)), stream)
  return step, nnx.merge(graphdef, jax.tree.map(
      lambda value, target: jax.lax.bitcast_convert_type(value, target.dtype), restored, state))


def _merged(model_dir: str, config: TransformerConfig, base: Optional[str],
            stream: Optional[TextIO]) -> tuple[int, Transformer]:
  """The base of the LoRA run `model_dir` with its newest adapters folded in: a plain
  Transformer (over a quantized base, QLoRA, a float one: the adapters fold into the
  dequantized weights, and the layers without adapters are dequantized too)."""
  adapter_config, record = lora_config(model_dir), _read_adapter_record(model_dir)
  if record is None:
    raise run_dir.RunDirError(f"{model_dir} trained adapters but has no {ADAPTER_FILE} naming "
                              "their base; restore it from a copy.")
  base = base or record["base_checkpoint"]
  model = load_model(base, config.replace(scan_layers=False))
  _check_base(record, base, fingerprint(nnx.state(model, nnx.Param)), model_dir)
  adapted = lora.adapt(model, adapter_config)
  step, adapters = checkpoints.newest_params(
      model_dir, checkpoints.on_default_device(adapted.adapters), stream)
  merged = lora.merge_lora(nnx.merge(adapted.graphdef, adapters, adapted.base))
  return step, quantization.dequantize(merged) if quantization.quantized_mode(merged) else merged


# ------------------------------------------------------------------- the trainer's part


def check_init_checkpoint(path: str, config: TransformerConfig, allowed: Iterable[str] = (),
                          adapters: bool = False) -> None:
  """Fine-tuning: the pretrained run's recorded model must compute the same function as
  `config`, but for the knobs named in `allowed` (train.allow_changes, e.g. the
  architecture, to continue a causal decoder as a prefix decoder). Full fine-tuning
  (`adapters` False) needs a float model's run directory."""
  record = run_dir.read_record(path)
  kind = kind_of(record)
  if not adapters and kind == "lora":
    raise run_dir.RunDirError(
        f"train.init_checkpoint {path} is a LoRA run directory (adapters only); merge them "
        f"into their base first (`python -m t5x_lite.merge --adapters={path} --output=DIR`) "
        "and fine-tune DIR.")
  if not adapters and kind == "quantized":
    raise run_dir.RunDirError(
        f"train.init_checkpoint {path} holds a quantized model (integer weights), which full "
        f"fine-tuning cannot update; fine-tune its float source "
        f"{record['quantization'].get('source', '(see its spec.json)')}, or train LoRA "
        "adapters over it (gin/runs/lora.gin: QLoRA).")
  recorded = run_dir.model_of(record)
  changed = {} if recorded is None else contradictions(recorded, vars(config), allowed)
  if changed:
    raise run_dir.RunDirError(
        f"train.init_checkpoint {path} was trained with a different model: "
        f"{run_dir.format_changes(changed)}. Fine-tune with the model it was trained with.")


def sharded_abstract_params(config: TransformerConfig, mesh: jax.sharding.Mesh) -> Any:
  """The model's parameter placeholders with their shardings on `mesh` (restore targets)."""
  abstract_params = nnx.split(abstract_model(config), nnx.Param)[1]
  shardings = partitioning.state_shardings(abstract_params, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract_params, shardings)


def lora_base(path: str, config: TransformerConfig, settings: lora.LoraConfig,
              mesh: jax.sharding.Mesh) -> Transformer:
  """The frozen base of a LoRA run: float parameters sharded over the mesh, or a
  quantized run directory's integer ones (QLoRA), replicated."""
  kind = kind_of(run_dir.read_record(path))
  if kind == "quantized":
    graphdef, state = nnx.split(load_model(path, config))
    return nnx.merge(graphdef, jax.device_put(state, partitioning.replicated(mesh)))
  if kind == "lora":
    raise ConfigError(f"{path} is a LoRA run directory (adapters only); train adapters over "
                      "a full model: merge these first (`python -m t5x_lite.merge "
                      f"--adapters={path} --output=DIR`) and point CHECKPOINT_PATH at DIR.")
  if settings.quantized_base:
    raise ConfigError(f"lora.quantized_base (QLoRA) needs a quantized base, and {path} is a "
                      "float model: write one with `python -m t5x_lite.quantize --checkpoint="
                      f"{path} --output=DIR --mode=int4_weights` and point CHECKPOINT_PATH at "
                      "DIR.")
  base = checkpoints.newest_params(path, sharded_abstract_params(config, mesh))[1]
  return nnx.merge(nnx.graphdef(abstract_model(config)), base)


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


def _read_adapter_record(model_dir: str) -> Optional[dict]:
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
  record = _read_adapter_record(model_dir)
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
  if kind_of(record) != "lora":
    return None
  return config_from_json(lora.LoraConfig, record["spec"]["lora"])


# ----------------------------------------------------------- derived run directories


def merge_adapters(model_dir: str, output_dir: str, base: Optional[str] = None,
                   stream: Optional[TextIO] = None) -> int:
  """Writes the merged model of the LoRA run `model_dir` as a plain run directory
  `output_dir` (the run record without the lora section) that infer, evaluate and
  fine-tuning read. Returns the step."""
  _check_new_output(output_dir)
  record = run_dir.read_record(model_dir)
  if kind_of(record) != "lora":
    raise run_dir.RunDirError(f"{model_dir} is not a LoRA run directory (no lora section in "
                              f"{run_dir.SPEC_FILE}).")
  step, model = newest_model(model_dir, base=base, stream=stream)
  record["spec"].pop("lora")
  adapter = _read_adapter_record(model_dir)
  record["merged_from"] = {"adapters": os.path.abspath(model_dir), "step": step,
                           "base_checkpoint": os.path.abspath(base or adapter["base_checkpoint"]),
                           "base_fingerprint": adapter["base_fingerprint"]}
  _write_derived(output_dir, record, step, nnx.state(model, nnx.Param))
  return step


def write_quantized(model_dir: str, output_dir: str, mode: str, *,
                    output_layer: bool = True) -> int:
  """Writes the newest checkpoint of `model_dir`, quantized by `mode`, as the run
  directory `output_dir` (the run record with "quantization") that infer and evaluate
  load directly. Returns the step."""
  quantization.check_mode(mode)
  _check_new_output(output_dir)
  record = run_dir.read_record(model_dir)
  if record is None:
    raise quantization.QuantizationError(f"{model_dir} records no model ({run_dir.SPEC_FILE}); "
                                         "quantize a t5x_lite run directory.")
  if kind_of(record) == "quantized":
    raise quantization.QuantizationError(
        f"{model_dir} is already quantized ({record['quantization']['mode']}); quantize its "
        "float checkpoint instead.")
  config = run_dir.model_of(record).replace(scan_layers=False)
  step, model = newest_model(model_dir, config)
  model = quantization.quantize(model, mode, output_layer=output_layer)
  record["spec"]["TransformerConfig"]["scan_layers"] = False
  record["spec"].pop("lora", None)  # a LoRA run quantizes merged
  record["quantization"] = {"mode": mode, "output_layer": output_layer,
                            "source": os.path.abspath(model_dir), "step": step}
  _write_derived(output_dir, record, step, quantization.storable(nnx.state(model, nnx.Param)))
  return step


def _check_new_output(output_dir: str) -> None:
  """Before any work: the output of merge or quantize is a new (or empty) directory."""
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise run_dir.RunDirError(f"--output {output_dir} is an existing file; name a new "
                              "directory for the run directory to write.")
  if os.path.isdir(os.path.join(output_dir, "checkpoints")):
    raise run_dir.RunDirError(f"{output_dir} already holds checkpoints; write into a new "
                              "directory (nothing there is overwritten).")


def _write_derived(output_dir: str, record: dict, step: int, params: Any) -> None:
  """A run directory derived from another: a params-only checkpoint at `step` and the
  source's run record as amended by the caller."""
  os.makedirs(output_dir, exist_ok=True)
  checkpoints.save_params(output_dir, step, params)
  with files.atomic_write(os.path.join(output_dir, run_dir.SPEC_FILE)) as handle:
    json.dump(record, handle, indent=1)
