"""A run's train and decode steps compiled for a pod, and what they hold in each chip's memory.

The train step is the trainer's own (training.trainer.build_steps, lowered from shapes
by StepFunctions.lower_train); the decode step is decoding.prefill_and_step with the
model's parameters sharded by the same rules table. Both compile for compile-only
devices (pods/topology.py), so nothing here runs on, or needs, an accelerator.

Per-chip memory is reported in parts: parameters, optimizer state and batch are the
bytes of each input's shard on one chip (shapes and shardings: exact), temporaries
(activations, gradients, workspace) and code are XLA's own figures from the compiled
program (memory_analysis). Outputs that reuse donated inputs (the new train state) add
nothing; others (the decode cache) count as outputs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import resource
import time
import warnings
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from t5x_lite.common import partitioning
from t5x_lite.common.errors import ConfigError
from t5x_lite.inference import decoding
from t5x_lite.models import Transformer, TransformerConfig
from t5x_lite.models.layers import resolve_attention_impl
from t5x_lite.models.lora import AdaptedModel, apply_lora
from t5x_lite.models.params import abstract_model
from t5x_lite.pods import chips
from t5x_lite.runs.spec import TrainSpec
from t5x_lite.training import trainer
from t5x_lite.training.steps import StepFunctions


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes per chip of one compiled step."""
  parameters: int
  optimizer_state: int
  batch: int
  temporaries: int
  code: int
  outputs: int          # outputs that do not reuse a donated input
  xla_arguments: int    # XLA's total of the inputs (the first three, plus TPU padding)
  capacity: int

  @property
  def layout_padding(self) -> int:
    """What XLA's inputs take beyond their shapes: TPUs tile arrays (8 x 128 for 32-bit
    types), so dimensions that are not multiples of the tile are padded in HBM."""
    return max(0, self.xla_arguments - self.parameters - self.optimizer_state - self.batch)

  @property
  def total(self) -> int:
    return (self.parameters + self.optimizer_state + self.batch + self.layout_padding
            + self.temporaries + self.code + self.outputs)

  @property
  def fits(self) -> bool:
    return self.total <= self.capacity


@dataclasses.dataclass
class CompiledStep:
  """One step compiled for a pod: its memory, compile time and optimized HLO text."""
  name: str
  memory: Memory
  compile_seconds: float
  hlo: str
  refusal: Optional[str] = None  # XLA's own words when it refused (out of memory)


def as_on(config: TransformerConfig, mesh: jax.sharding.Mesh) -> TransformerConfig:
  """`config` as a process on the mesh's devices resolves it: attention_impl=None picks
  the implementation per backend (cuDNN flash attention on GPUs for 16-bit compute),
  and this process's own backend is the CPU."""
  platform = mesh.devices.flat[0].platform
  backend = "gpu" if platform in ("gpu", "cuda") else platform
  return dataclasses.replace(config,
                             attention_impl=resolve_attention_impl(config, backend))


def shard_bytes(tree: Any) -> int:
  """Bytes one chip holds of the ShapeDtypeStruct leaves of `tree` (each leaf's shard
  under its sharding; replicated leaves count whole on every chip)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def batch_shapes(config: TransformerConfig, feature_lengths: Mapping[str, int],
                 batch_size: int, pack: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
  """The shapes of one training batch as data.pipeline delivers it (seqio's converters:
  int32 features; packed batches add segment ids and positions)."""
  spec = config.architecture_spec
  encoder_length, decoder_length = spec.model_lengths(feature_lengths)
  shapes = {}
  for feature in spec.features:
    length = encoder_length if feature.startswith("encoder") else decoder_length
    shapes[feature] = jax.ShapeDtypeStruct((batch_size, length), jnp.int32)
  if pack:
    for stack, length in (("encoder", encoder_length), ("decoder", decoder_length)):
      if length:
        for extra in ("segment_ids", "positions"):
          shapes[f"{stack}_{extra}"] = jax.ShapeDtypeStruct((batch_size, length), jnp.int32)
  return shapes


def _memory(compiled: jax.stages.Compiled, parts: Mapping[str, int], capacity: int) -> Memory:
  stats = compiled.memory_analysis()
  outputs = max(0, stats.output_size_in_bytes - stats.alias_size_in_bytes)
  return Memory(parameters=parts.get("parameters", 0),
                optimizer_state=parts.get("optimizer_state", 0), batch=parts.get("batch", 0),
                temporaries=stats.temp_size_in_bytes, code=stats.generated_code_size_in_bytes,
                outputs=outputs, xla_arguments=stats.argument_size_in_bytes, capacity=capacity)


def refused_temporaries(refusal: Optional[str]) -> int:
  """The temporaries XLA's out-of-memory refusal names ("... HLO temporaries (32.50G)
  exceeds available HBM ..."), in bytes; 0 when it names none."""
  match = re.search(r"temporaries \(([\d.]+)([KMGT])\)", refusal or "")
  if not match:
    return 0
  return int(float(match.group(1)) * 2 ** (10 * "KMGT".index(match.group(2)) + 10))


# XLA:GPU picks Triton GEMM tilings by autotuning on the device; compile-only it falls
# back to heuristics that can find no tiling for some shapes ("Couldn't find output tile
# sizes", seen for the prefill's [batch x 1025, d] attention output). Those programs
# compile with cuBLAS dots instead, which changes no buffer the memory report counts.
GPU_TILING_FAILURE = "Couldn't find output tile sizes"
NO_TRITON_GEMM = {"xla_gpu_enable_triton_gemm": False}


def _compile(lowered: jax.stages.Lowered) -> tuple[Optional[jax.stages.Compiled], float,
                                                   Optional[str]]:
  """(compiled or None, seconds, XLA's refusal): TPU compilers refuse a program that
  does not fit HBM (RESOURCE_EXHAUSTED); that is an answer here, not an error."""
  start = time.perf_counter()
  options = None
  for _ in range(2):
    try:
      with warnings.catch_warnings():
        # A persistent compilation cache (tests set one) cannot hold executables of
        # compile-only devices: each lookup misses with a warning that means nothing here.
        warnings.filterwarnings("ignore", message=".*persistent compilation cache entry")
        compiled = lowered.compile(options)
      return compiled, time.perf_counter() - start, None
    except Exception as error:  # JaxRuntimeError; its type is not public API
      if GPU_TILING_FAILURE in str(error) and options is None:
        options = NO_TRITON_GEMM
        continue
      if "RESOURCE_EXHAUSTED" not in str(error):
        raise
      return None, time.perf_counter() - start, str(error).strip().splitlines()[0]
  raise AssertionError("unreachable")


def abstract_adapted(spec: TrainSpec, mesh: jax.sharding.Mesh) -> Optional[AdaptedModel]:
  """A LoRA run's adapted model in shapes (None for other runs): adapters as
  models/lora.apply_lora makes them and the frozen float base sharded over the mesh as
  runs/loading.lora_base loads it; compiling needs no checkpoint."""
  if spec.lora is None:
    return None
  if spec.lora.quantized_base:
    raise ConfigError("compile_check cannot check QLoRA yet: the quantized base's layout "
                      "comes from its run directory. Check the float LoRA run instead "
                      "(lora.quantized_base=False): its base holds more memory, an upper "
                      "bound.")
  config, seed = spec.model, spec.run.seed
  adapted = nnx.eval_shape(lambda: apply_lora(Transformer(config, rngs=nnx.Rngs(params=seed)),
                                              spec.lora, seed))
  graphdef, adapters, base = nnx.split(adapted, nnx.LoRAParam, nnx.Param)
  shardings = partitioning.state_shardings(base, mesh)
  base = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      base, shardings)
  return AdaptedModel(graphdef, adapters, base)


def _state_parts(steps: StepFunctions, adapted: Optional[AdaptedModel] = None
                 ) -> dict[str, int]:
  """Parameters (a LoRA run's frozen base included) and optimizer state per chip."""
  state = steps.abstract_state()
  frozen = shard_bytes(adapted.base) if adapted is not None else 0
  return {"parameters": shard_bytes(state["params"]) + frozen,
          "optimizer_state": shard_bytes(state["opt_state"]) + shard_bytes(state["step"])}


def state_bytes(spec: TrainSpec, mesh: jax.sharding.Mesh) -> int:
  """Bytes of parameters and optimizer state one chip holds in `spec`'s training over
  `mesh`, from shapes and shardings alone (nothing compiled)."""
  spec = dataclasses.replace(spec, model=as_on(spec.model, mesh))
  adapted = abstract_adapted(spec, mesh)
  return sum(_state_parts(trainer.build_steps(spec, mesh, adapted), adapted).values())


def compile_train_step(spec: TrainSpec, mesh: jax.sharding.Mesh,
                       capacity: int) -> CompiledStep:
  """The trainer's step for `spec` over `mesh`, compiled; memory per chip of it."""
  spec = dataclasses.replace(spec, model=as_on(spec.model, mesh))
  trainer.check_layout(spec, mesh)
  adapted = abstract_adapted(spec, mesh)
  steps = trainer.build_steps(spec, mesh, adapted)
  batch = batch_shapes(spec.model, spec.run.feature_lengths, spec.run.batch_size)
  lowered = steps.lower_train(batch)
  sharding = partitioning.batch_sharding(mesh)
  parts = {**_state_parts(steps, adapted),
           "batch": shard_bytes({k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding)
                                 for k, v in batch.items()})}
  compiled, seconds, refusal = _compile(lowered)
  if compiled is None:
    return CompiledStep("train", Memory(**parts, temporaries=refused_temporaries(refusal),
                                        code=0, outputs=0, xla_arguments=0,
                                        capacity=capacity),
                        seconds, "", refusal)
  return CompiledStep("train", _memory(compiled, parts, capacity), seconds,
                      compiled.as_text() or "")


def compile_decode_step(config: TransformerConfig, mesh: jax.sharding.Mesh, batch_size: int,
                        prompt_length: int, max_new_tokens: int,
                        capacity: int) -> CompiledStep:
  """Prefill of `batch_size` prompts of `prompt_length` tokens and one new token over a
  cache for `max_new_tokens`, with parameters sharded as in training, compiled."""
  config = as_on(config, mesh)
  graphdef, abstract = nnx.split(abstract_model(config))
  # Outside axis_rules, as the trainer resolves them (inside, the names would be mapped
  # to mesh axes twice and everything would replicate).
  shardings = partitioning.state_shardings(abstract, mesh)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       abstract, shardings)
  inputs = jax.ShapeDtypeStruct((batch_size, prompt_length), jnp.int32,
                                sharding=partitioning.batch_sharding(mesh))
  with partitioning.axis_rules(mesh):
    step = jax.jit(decoding.prefill_and_step, static_argnums=(0,),
                   static_argnames=("max_new_tokens",))
    lowered = step.lower(graphdef, state, inputs, max_new_tokens=max_new_tokens)
  parts = {"parameters": shard_bytes(state), "batch": shard_bytes(inputs)}
  compiled, seconds, refusal = _compile(lowered)
  if compiled is None:
    return CompiledStep("decode", Memory(**parts, optimizer_state=0,
                                         temporaries=refused_temporaries(refusal), code=0,
                                         outputs=0, xla_arguments=0, capacity=capacity),
                        seconds, "", refusal)
  return CompiledStep("decode", _memory(compiled, parts, capacity), seconds,
                      compiled.as_text() or "")


def size(num_bytes: float) -> str:
  """Bytes in the unit that reads best (KiB, MiB or GiB)."""
  for unit, scale in (("GiB", chips.GiB), ("MiB", 2**20), ("KiB", 2**10)):
    if num_bytes >= scale:
      return f"{num_bytes / scale:.2f} {unit}"
  return f"{num_bytes:.0f} B"


def host_memory_bytes() -> int:
  """This process's peak resident memory (what the compile needed on the host)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

