"""Steps compiled for pods: the trainer's own step, per-chip memory as the shapes and
shardings say, on compile-only TPU and GPU devices (no accelerator needed)."""

import jax
import numpy as np
import pytest

from t5x_lite import compile_check, gin_utils
from t5x_lite.common import partitioning
from t5x_lite.common.errors import ConfigError
from t5x_lite.models.counting import count_params
from t5x_lite.pods import collectives, compiled, topology
from t5x_lite.training import trainer
from tests import train_helpers

V5E = topology.parse("v5e:2x2")


def tiny_spec(tmp_path, architecture="causal_decoder", mesh="fsdp", **extra):
  gin_utils.parse(train_helpers.gin_files(architecture, mesh),
                  train_helpers.bindings(tmp_path / "unused", architecture,
                                         **{"BATCH_SIZE": 8, **extra}))
  return gin_utils.resolve_train_spec()


@pytest.fixture(scope="module")
def v5e_devices():
  return topology.devices(V5E)


def compile_train(spec, devices, shape):
  mesh = partitioning.create_mesh(shape, devices)
  return compiled.compile_train_step(spec, mesh, V5E.chip.hbm_bytes)


def test_the_compiled_step_is_the_trainers(tmp_path):
  """lower_train compiles the very function the trainer runs: on CPU devices its
  executable and the trainer's step give the same new state, bit for bit."""
  spec = tiny_spec(tmp_path)
  mesh = partitioning.create_mesh((1, -1, 1))
  steps = trainer.build_steps(spec, mesh)
  shapes = compiled.batch_shapes(spec.model, spec.run.feature_lengths, spec.run.batch_size)
  rng = np.random.default_rng(0)
  batch = {k: rng.integers(1, 300, v.shape).astype(np.int32) for k, v in shapes.items()}
  batch["decoder_loss_weights"] = np.ones_like(batch["decoder_loss_weights"])
  batch["decoder_segment_ids"] = np.ones_like(batch["decoder_segment_ids"])
  batch["decoder_positions"] = np.broadcast_to(np.arange(shapes["decoder_positions"].shape[1]),
                                               shapes["decoder_positions"].shape).copy()
  device_batch = partitioning.global_batch(batch, mesh)
  executable = steps.lower_train(shapes).compile()
  ours, _ = executable(steps.init(), {}, device_batch)
  theirs, _ = steps.train(steps.init(), device_batch)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_per_chip_state_is_the_analytic_figure_and_halves_with_twice_the_shards(tmp_path):
  """On GPUs (no tiling of arrays in memory) XLA's own total of the step's inputs equals
  parameters x 4 bytes / shards, twice that for AdamW's moments, and the batch's share."""
  pod = topology.parse("h100:1x4")
  devices = topology.devices(pod)
  spec = tiny_spec(tmp_path)
  params = count_params(spec.model)[0]
  by_fsdp = {fsdp: compiled.compile_train_step(
      spec, partitioning.create_mesh((4 // fsdp, fsdp, 1), devices), pod.chip.hbm_bytes).memory
             for fsdp in (2, 4)}
  for fsdp, memory in by_fsdp.items():
    assert memory.parameters == 4 * params // fsdp  # float32, every tensor sharded
    # AdamW's two moments shard like their parameters; its counters and the step are
    # int32 scalars on every chip.
    assert 0 < memory.optimizer_state - 2 * 4 * params // fsdp <= 4 * 4
    assert memory.batch == 5 * 4 * 8 * 64 // 4  # 5 int32 features, batch over 4 chips
    assert memory.xla_arguments == memory.parameters + memory.optimizer_state + memory.batch
    assert memory.layout_padding == 0 and memory.fits and memory.temporaries > 0
  assert by_fsdp[2].parameters == 2 * by_fsdp[4].parameters


def test_tpu_memory_counts_the_padding_of_tiled_arrays(tmp_path, v5e_devices):
  memory = compile_train(tiny_spec(tmp_path), v5e_devices, (1, 4, 1)).memory
  assert memory.xla_arguments == (memory.parameters + memory.optimizer_state + memory.batch
                                  + memory.layout_padding)
  assert memory.layout_padding > 0  # d_model 64 and head_dim 16 pad to TPU tiles
  assert memory.total >= memory.xla_arguments + memory.code


def test_remat_trades_temporaries_for_recomputation(tmp_path, v5e_devices):
  temporaries = {}
  for policy in ("none", "full"):
    # Deep and long enough that the layers' saved activations outweigh the logits.
    spec = tiny_spec(tmp_path, **{"TransformerConfig.remat_policy": repr(policy),
                                  "TransformerConfig.scan_layers": True,
                                  "TransformerConfig.num_decoder_layers": 8,
                                  "TASK_FEATURE_LENGTHS": {"targets": 128},
                                  "BATCH_SIZE": 64})
    temporaries[policy] = compile_train(spec, v5e_devices, (1, 4, 1)).memory.temporaries
  assert temporaries["full"] < 0.7 * temporaries["none"]


@pytest.mark.parametrize("architecture, mesh, shape", [
    ("encoder_decoder", "fsdp", (1, 4, 1)),
    ("prefix_decoder", "fsdp_tensor", (1, 2, 2)),
    ("causal_decoder", "pipeline", (2, 1, 1, 2)),
])
def test_every_architecture_and_a_pipeline_compile(tmp_path, v5e_devices, architecture, mesh,
                                                   shape):
  extra = {"TransformerConfig.pipeline_microbatches": 2} if mesh == "pipeline" else {}
  spec = tiny_spec(tmp_path, architecture, mesh, **extra)
  step = compile_train(spec, v5e_devices, shape)
  assert step.refusal is None and step.memory.fits and "all-" in step.hlo
  decode = compiled.compile_decode_step(spec.model, partitioning.create_mesh(shape, v5e_devices),
                                        4, 16, 8, V5E.chip.hbm_bytes)
  assert decode.memory.fits
  if mesh != "pipeline":  # decoding shards the parameters as training does
    assert decode.memory.parameters == step.memory.parameters


def test_gpu_topology_compiles_without_a_gpu(tmp_path):
  pod = topology.parse("h100:1x2")
  devices = topology.devices(pod)
  assert len(devices) == 2 and "H100" in devices[0].device_kind
  spec = tiny_spec(tmp_path)
  step = compiled.compile_train_step(spec, partitioning.create_mesh((1, 2, 1), devices),
                                     pod.chip.hbm_bytes)
  assert step.memory.fits and step.memory.temporaries > 0 and "all-gather" in step.hlo


def test_attention_is_chosen_for_the_target_not_for_this_cpu(tmp_path):
  """attention_impl=None resolves as a process on the pod would (cuDNN for 16-bit compute
  on GPUs, XLA's on TPUs), not as this CPU process would (einsum)."""
  config = tiny_spec(tmp_path, **{"TransformerConfig.dtype": "'bfloat16'"}).model
  gpus = partitioning.create_mesh((1, 2, 1), topology.devices(topology.parse("h100:1x2")))
  tpus = partitioning.create_mesh((1, 1, 1), topology.devices(topology.parse("v5e:1x1")))
  assert compiled.as_on(config, gpus).attention_impl == "cudnn"
  assert compiled.as_on(config, tpus).attention_impl == "xla"
  assert compiled.as_on(config.replace(attention_impl="einsum"), gpus).attention_impl == "einsum"


def test_fsdp_collective_volume_is_the_analytic_one(tmp_path):
  """FSDP over 4 GPUs (float32, scanned layers, no remat): XLA all-gathers each layer's
  weights for the forward pass and again for the backward, the output layer and final
  norm once (and the batch's token ids), and reduce-scatters every gradient but the
  embedding table's, whose rows travel by all-to-all instead."""
  spec = tiny_spec(tmp_path, **{"TransformerConfig.scan_layers": True})
  devices = topology.devices(topology.parse("h100:1x4"))
  step = compiled.compile_train_step(spec, partitioning.create_mesh((1, 4, 1), devices),
                                     80 * 10**9)
  config = spec.model
  params = count_params(config)[0]
  embedding = config.vocab_size * config.d_model
  output_and_norm = config.vocab_size * config.d_model + config.d_model
  layers = params - embedding - output_and_norm
  totals = collectives.summary(collectives.read(step.hlo, 4))
  token_ids = 4 * 8 * 64  # int32 [batch, length]
  assert totals["reduce-scatter"]["data_bytes"] == pytest.approx(
      4 * (params - embedding), rel=0.1)
  assert totals["all-gather"]["data_bytes"] == pytest.approx(
      4 * (2 * layers + output_and_norm) + token_ids, rel=0.1)
  # Each chip sends 3/4 of what is gathered or scattered (ring volumes).
  assert totals["reduce-scatter"]["sent_bytes"] == pytest.approx(
      0.75 * totals["reduce-scatter"]["data_bytes"])


def lora_spec(**extra):
  bindings = {"CHECKPOINT_PATH": "'/no/checkpoint/needed'", "BATCH_SIZE": 8,
              "TASK_FEATURE_LENGTHS": "{'targets': 64}", **extra}
  return compile_check.parse_gin(["runs/lora.gin", "models/tiny_causal_decoder.gin"],
                                 [f"{k}={v}" for k, v in bindings.items()], [])


def test_a_lora_run_compiles_over_its_frozen_base_without_a_checkpoint():
  """Every chip holds the frozen base and the adapters; AdamW's two moments cover the
  adapters only, and only their gradients travel between data-parallel chips."""
  spec = lora_spec()
  mesh = partitioning.create_mesh((2, 1, 1), topology.devices(topology.parse("h100:1x2")))
  step = compiled.compile_train_step(spec, mesh, 80 * 10**9)
  adapted = compiled.abstract_adapted(spec, mesh)
  adapters = sum(x.size for x in jax.tree.leaves(adapted.adapters))
  base = sum(x.size for x in jax.tree.leaves(adapted.base))
  assert base == count_params(spec.model)[0] and adapters < base / 5
  assert step.memory.parameters == 4 * (base + adapters)
  assert step.memory.optimizer_state == pytest.approx(2 * 4 * adapters, abs=64)
  totals = collectives.summary(collectives.read(step.hlo, 2))
  assert totals["all-reduce"]["data_bytes"] == pytest.approx(4 * adapters, rel=0.01)


def test_qlora_is_refused_by_name():
  spec = lora_spec(**{"lora.quantized_base": True})
  mesh = partitioning.create_mesh((1, 1, 1), topology.devices(topology.parse("h100:1x1")))
  with pytest.raises(ConfigError, match="QLoRA"):
    compiled.compile_train_step(spec, mesh, 80 * 10**9)


def test_an_expert_parallel_moe_step_compiles_with_the_analytic_memory(tmp_path):
  """Tiny MoE decoder on 4 GPUs, experts over the expert axis: each chip holds every
  dense parameter and a quarter of each MoE layer's experts (float32), and the tokens
  reach their experts by all-to-all."""
  pod = topology.parse("h100:1x4")
  gin_utils.parse(["runs/pretrain.gin", "models/tiny_moe_decoder.gin",
                   "meshes/expert_parallel.gin"],
                  train_helpers.bindings(tmp_path / "unused", BATCH_SIZE=8))
  spec = gin_utils.resolve_train_spec()
  mesh = partitioning.create_mesh((1, 1, 1, 1, 4), topology.devices(pod))
  step = compiled.compile_train_step(spec, mesh, pod.chip.hbm_bytes)
  config = spec.model
  experts = config.moe_layers("decoder") * (
      config.routed_experts * 3 * config.d_model * config.expert_d_ff)
  dense = count_params(config)[0] - experts
  assert step.refusal is None and step.memory.fits
  assert step.memory.parameters == 4 * (dense + experts // 4)
  assert "all-to-all" in step.hlo
