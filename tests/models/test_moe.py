"""Mixture-of-experts layers: one expert is the dense model, routing and dropping follow
their definition token by token, padding is never routed, the auxiliary losses are
their formulas, every layout and expert-parallel mesh computes the same model, and bad
settings are one clear error each."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from t5x_lite import gin_utils
from t5x_lite.common import partitioning
from t5x_lite.common.errors import ConfigError
from t5x_lite.inference import decoding
from t5x_lite.models import TransformerConfig, counting, lora, moe, quantization
from t5x_lite.models.params import count_initialized_params, flat_params, model_from_params
from t5x_lite.models.transformer import create_model, forward
from t5x_lite.runs.spec import OptimizerConfig, RunConfig, ScheduleConfig, TrainSpec
from t5x_lite.training import trainer
from t5x_lite.training.steps import make_step_functions

ACTIVATION = {"relu": lambda x: np.maximum(x, 0), "silu": lambda x: x / (1 + np.exp(-x))}


def tiny(architecture="causal_decoder", **overrides):
  settings = dict(architecture=architecture, vocab_size=64, d_model=16, num_heads=2, d_ff=32,
                  num_decoder_layers=4, max_length=32, num_experts=4, moe_top_k=2,
                  num_encoder_layers=4 if architecture == "encoder_decoder" else 0)
  settings.update(overrides)
  return TransformerConfig(**settings)


def lm_batch(rows=4, length=12, seed=0, vocab=64):
  tokens = np.random.default_rng(seed).integers(2, vocab, (rows, length)).astype(np.int32)
  return {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens,
          "decoder_loss_weights": np.ones(tokens.shape, np.float32)}


def reference_moe(layer, x, routable):
  """models/moe.py's docstring, one token at a time in numpy: (output, kept assignments,
  stats)."""
  config = layer.config
  router = np.asarray(layer.router.kernel[...], np.float64)
  w0, wo = np.asarray(layer.wi_0.kernel[...]), np.asarray(layer.wo.kernel[...])
  experts, k = config.routed_experts, config.experts_per_token
  batch, length, _ = x.shape
  out = np.zeros_like(x, np.float64)
  kept = np.zeros((batch, length, experts), bool)
  logits = x.astype(np.float64) @ router
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  for b in range(batch):
    slots = moe.capacity(config, int(routable[b].sum()))  # the row's tokens, not its padding
    used = np.zeros(experts, int)
    choices = [np.argsort(-probs[b, t], kind="stable")[:k] for t in range(length)]
    for choice in range(k):  # all first choices, then the second ones
      for t in range(length):
        if not routable[b, t]:
          continue
        e = choices[t][choice]
        chosen = probs[b, t, choices[t]]
        gate = (chosen / chosen.sum() if config.moe_router == "mixtral" else chosen)[choice]
        if used[e] < slots:
          used[e] += 1
          kept[b, t, e] = True
          hidden = ACTIVATION[config.activation](x[b, t] @ w0[e])
          out[b, t] += gate * (hidden @ wo[e])
  valid = routable.astype(bool)
  tokens = valid.sum()
  assignments = np.zeros(experts)
  for b, t in zip(*np.nonzero(valid)):
    assignments[np.argsort(-probs[b, t], kind="stable")[:k]] += 1
  mean_prob = probs[valid].mean(0)
  log_z = np.log(np.exp(logits).sum(-1))
  stats = {"aux_loss": experts * np.sum(assignments / (k * tokens) * mean_prob),
           "z_loss": np.mean(log_z[valid] ** 2), "dropped": k * tokens - kept.sum(),
           "expert_assignments": assignments, "routed_tokens": tokens}
  return out, kept, stats


def test_one_expert_top_1_without_dropping_is_the_dense_model_bit_for_bit():
  dense = tiny(num_experts=0)
  routed = tiny(num_experts=1, moe_top_k=1, moe_capacity_factor=1.0)
  dense_params = flat_params(create_model(dense, seed=3))
  moe_params = {path: value for path, value in flat_params(create_model(routed)).items()
                if "router" in path}
  for path, value in dense_params.items():
    if "mlp" in path:  # the dense block's weights as the one expert's
      moe_params[path] = value[None]
    else:
      moe_params[path] = value
  batch = {key: jnp.asarray(value) for key, value in lm_batch().items()}
  expected = forward(model_from_params(dense, dense_params), batch)
  got = forward(model_from_params(routed, moe_params), batch)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


@pytest.mark.parametrize("router", ["mixtral", "switch"])
@pytest.mark.parametrize("top_k, capacity_factor", [(1, 1.0), (2, 0.5), (2, None)])
def test_routing_and_dropping_follow_the_definition_token_by_token(router, top_k,
                                                                   capacity_factor):
  config = tiny(moe_top_k=top_k, moe_capacity_factor=capacity_factor, moe_router=router,
                activation="relu", num_experts=4)
  layer = moe.MoeMlp(config, rngs=nnx.Rngs(params=1))
  # A router that prefers expert 0 strongly, so capacity binds and tokens are dropped.
  layer.router.kernel[...] = layer.router.kernel[...] + jnp.asarray([[2.0, 0, 0, 0]])
  x = np.random.default_rng(2).normal(size=(3, 10, 16)).astype(np.float32)
  routable = np.ones((3, 10), bool)
  routable[1, 7:] = False
  out, stats = layer(jnp.asarray(x), routable=jnp.asarray(routable))
  expected, kept, reference = reference_moe(layer, x, routable)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
  assert float(stats["dropped"]) == reference["dropped"]
  if capacity_factor is None:
    assert reference["dropped"] == 0
  elif top_k == 2:
    assert reference["dropped"] > 0  # the case this test is about
  np.testing.assert_allclose(np.asarray(stats["expert_assignments"]),
                             reference["expert_assignments"])
  assert float(stats["routed_tokens"]) == reference["routed_tokens"] == 27
  np.testing.assert_allclose(float(stats["aux_loss"]), reference["aux_loss"], rtol=1e-5)
  np.testing.assert_allclose(float(stats["z_loss"]), reference["z_loss"], rtol=1e-5)


def test_capacity_is_the_switch_formula():
  config = tiny(num_experts=8, moe_top_k=2, moe_capacity_factor=1.25)
  assert moe.capacity(config, 64) == math.ceil(1.25 * 64 * 2 / 8) == 20
  assert moe.capacity(config.replace(moe_capacity_factor=100.0), 64) == 64  # at most L
  assert moe.capacity(config.replace(moe_capacity_factor=None), 64) == 64  # dropless


def test_balance_loss_is_one_for_uniform_routing_and_e_when_collapsed():
  config = tiny(num_experts=4, moe_top_k=1)
  layer = moe.MoeMlp(config, rngs=nnx.Rngs(params=0))
  x = np.random.default_rng(0).normal(size=(2, 8, 16)).astype(np.float32)
  layer.router.kernel[...] = jnp.zeros_like(layer.router.kernel[...])
  _, stats = layer(jnp.asarray(x))
  # Equal probabilities: P_e = 1/4 for every expert whatever the tie-broken choices.
  assert float(stats["aux_loss"]) == pytest.approx(1.0)
  assert float(stats["z_loss"]) == pytest.approx(math.log(4) ** 2, rel=1e-6)
  layer.router.kernel[...] = jnp.zeros_like(layer.router.kernel[...]).at[:, 0].set(100.0)
  _, stats = layer(jnp.asarray(np.abs(x)))  # every token's logit for expert 0 is huge
  assert float(stats["aux_loss"]) == pytest.approx(4.0, rel=1e-4)


def test_padding_is_never_routed_nor_takes_capacity():
  config = tiny(num_experts=4, moe_top_k=2, moe_capacity_factor=0.5)
  layer = moe.MoeMlp(config, rngs=nnx.Rngs(params=0))
  x = np.random.default_rng(0).normal(size=(2, 12, 16)).astype(np.float32)
  routable = np.ones((2, 12), bool)
  routable[:, 3:6] = False  # padding in the middle (a packed row's gap) ...
  out, stats = layer(jnp.asarray(x), routable=jnp.asarray(routable))
  other = x.copy()
  other[:, 3:6] = 100.0  # ... whatever it holds
  out_other, stats_other = layer(jnp.asarray(other), routable=jnp.asarray(routable))
  np.testing.assert_array_equal(np.asarray(out)[:, 3:6], 0.0)  # no expert output there
  np.testing.assert_array_equal(np.asarray(out)[routable], np.asarray(out_other)[routable])
  # Padding at the end instead, as far as the buffer allows: the same routing.
  shifted = np.concatenate([x[:, :3], x[:, 6:], x[:, 3:6]], axis=1)
  out_end, stats_end = layer(jnp.asarray(shifted),
                             routable=jnp.asarray(np.arange(12) < 9)[None].repeat(2, 0))
  np.testing.assert_allclose(np.asarray(out_end)[:, :9], np.asarray(out)[routable].reshape(
      2, 9, 16), atol=1e-6)
  assert float(stats_end["dropped"]) == float(stats["dropped"])
  for name in ("aux_loss", "z_loss", "dropped", "expert_assignments", "routed_tokens"):
    np.testing.assert_array_equal(np.asarray(stats[name]), np.asarray(stats_other[name]))
  assert float(stats["routed_tokens"]) == 18


def test_packed_rows_route_only_positions_of_a_segment():
  config = tiny(moe_capacity_factor=None)
  model = create_model(config)
  batch = {key: jnp.asarray(value) for key, value in lm_batch(rows=2, length=12).items()}
  segments = np.array([[1] * 5 + [2] * 4 + [0] * 3] * 2, np.int32)
  packed = dict(batch, decoder_segment_ids=jnp.asarray(segments),
                decoder_positions=jnp.asarray(np.array([list(range(5)) + list(range(4))
                                                        + [0] * 3] * 2, np.int32)))
  with moe.collect() as reports:
    model(packed)
  assert float(reports[0]["routed_tokens"]) == 2 * 9 * config.moe_layers("decoder")
  # Each segment alone gives the same logits as packed (dropless routing is per token).
  alone = {"decoder_input_tokens": batch["decoder_input_tokens"][:, 5:9],
           "decoder_target_tokens": batch["decoder_target_tokens"][:, 5:9]}
  np.testing.assert_allclose(np.asarray(forward(model, packed))[:, 5:9],
                             np.asarray(forward(model, alone)), atol=1e-5)


@pytest.mark.parametrize("architecture", ["causal_decoder", "prefix_decoder", "encoder_decoder"])
def test_every_kth_layer_and_the_scanned_groups_compute_the_same_model(architecture):
  config = tiny(architecture, moe_decoder_interval=2, moe_encoder_interval=4,
                moe_shared_experts=1, moe_granularity=2, gated=True, use_bias=True)
  model = create_model(config, seed=0)
  moe_layers = [i for i, block in enumerate(model.decoder.layers) if block.moe_layer]
  assert moe_layers == [1, 3]
  scanned = create_model(config.replace(scan_layers=True), seed=0)
  # Same parameters in the on-disk (per-layer) layout, and the same function.
  unscanned_params, scanned_params = flat_params(model), flat_params(scanned)
  assert unscanned_params.keys() == scanned_params.keys()
  for path, value in unscanned_params.items():
    np.testing.assert_array_equal(value, scanned_params[path])
  batch = {key: jnp.asarray(value) for key, value in lm_batch(rows=2).items()}
  if architecture != "causal_decoder":
    batch["decoder_causal_attention"] = jnp.ones_like(batch["decoder_input_tokens"])
  if architecture == "encoder_decoder":
    batch["encoder_input_tokens"] = batch["decoder_input_tokens"]
  np.testing.assert_allclose(np.asarray(forward(model, batch)),
                             np.asarray(forward(scanned, batch)), atol=1e-5)
  # The count of parameters is what the model holds.
  assert counting.count_params(config)[0] == count_initialized_params(model)


def test_decoding_with_the_cache_is_the_full_forward_and_batch_1_equals_8():
  config = tiny(moe_capacity_factor=None, num_kv_heads=1, moe_shared_experts=1)
  model = create_model(config, seed=0)
  prompts = np.random.default_rng(0).integers(2, 64, (8, 6))
  prompts[3, 4:] = 0
  continuation = np.random.default_rng(1).integers(2, 64, (8, 4))
  cached = decoding.cached_logits(model, prompts, continuation)
  for row in (0, 3):
    prompt = prompts[row][prompts[row] > 0]
    tokens = [0, *prompt, *continuation[row]]
    full = np.asarray(forward(model, {"decoder_input_tokens": jnp.asarray([tokens])}))
    np.testing.assert_allclose(cached[row], full[0, len(prompt):len(tokens)], atol=1e-5)
  together = decoding.generate(model, prompts, max_new_tokens=5).tokens
  one_by_one = [decoding.generate(model, prompts[i:i + 1], max_new_tokens=5).tokens[0]
                for i in range(8)]
  np.testing.assert_array_equal(np.asarray(together), np.asarray(one_by_one))


def _train_losses(config, mesh_shape, steps=3):
  mesh = partitioning.create_mesh(mesh_shape, jax.devices()[:math.prod(mesh_shape)])
  functions = make_step_functions(config, optax.adam(1e-2), mesh)
  state = functions.init()
  batch = lm_batch(rows=8, length=16)
  losses = []
  for _ in range(steps):
    state, stats = functions.train(state, partitioning.global_batch(batch, mesh))
    losses.append({key: np.asarray(value) for key, value in stats.items()})
  return losses, functions, batch


def test_expert_parallel_on_8_devices_equals_one_device():
  config = tiny(num_experts=8, moe_decoder_interval=2, scan_layers=True)
  single, _, _ = _train_losses(config, (1, 1, 1, 1, 1))
  for shape in [(1, 1, 1, 1, 8), (2, 1, 1, 1, 4), (1, 2, 2, 1, 2)]:
    sharded, functions, batch = _train_losses(config, shape)
    for one, many in zip(single, sharded):
      for key in ("loss", "moe/aux_loss", "moe/z_loss", "moe/dropped", "grad_norm"):
        np.testing.assert_allclose(many[key], one[key], rtol=1e-5, atol=1e-5)
  # The tokens reach their experts by all-to-all (the expert axis is the last one here).
  compiled = functions.lower_train(batch).compile().as_text()
  assert "all-to-all" in compiled


def test_pipeline_stages_compute_the_same_model_and_routing():
  # The stages see microbatches: the load-balancing loss (a product of two batch means)
  # is the mean of the microbatches' there, so the total loss differs slightly; the
  # model's cross-entropy, the router z-loss and the routing itself do not.
  config = tiny(scan_layers=True, pipeline_microbatches=2, moe_capacity_factor=None)
  single, _, _ = _train_losses(config, (1, 1, 1, 1, 1), steps=1)
  staged, _, _ = _train_losses(config, (2, 1, 1, 2, 2), steps=1)
  for key in ("cross_entropy", "moe/z_loss", "moe/dropped", "moe/assignments",
              *[f"moe/expert_{e}" for e in range(4)]):
    np.testing.assert_allclose(staged[0][key], single[0][key], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(staged[0]["loss"], single[0]["loss"], rtol=1e-3)


@pytest.mark.parametrize("overrides, message", [
    (dict(num_experts=2, moe_top_k=3), "moe_top_k=3 is more than the num_experts=2"),
    (dict(moe_capacity_factor=0.0), "moe_capacity_factor must be positive, or None"),
    (dict(moe_capacity_factor=-1.0), "moe_capacity_factor must be positive, or None"),
    (dict(moe_granularity=3), "does not split into moe_granularity=3"),
    (dict(moe_decoder_interval=0), "no stack has MoE layers"),
    (dict(scan_layers=True, moe_decoder_interval=3), "moe_decoder_interval=3"),
])
def test_bad_settings_are_one_clear_error(overrides, message):
  with pytest.raises(ConfigError, match=message):
    tiny(**overrides)


def test_experts_that_do_not_split_over_the_expert_axis_are_refused():
  spec = TrainSpec(model=tiny(num_experts=6), optimizer=OptimizerConfig(),
                   schedule=ScheduleConfig(), run=RunConfig(
      model_dir="unused", train_steps=1, task="unused", feature_lengths={"targets": 16},
      batch_size=8))
  mesh = partitioning.create_mesh((1, 1, 1, 1, 4), jax.devices()[:4])
  with pytest.raises(ConfigError, match="num_experts=6 .* is not a multiple of 4"):
    trainer.check_layout(spec, mesh)


# Published sizes: Switch (Fedus et al. 2022, Table 9 and the released checkpoints),
# Mixtral (Jiang et al. 2024: 46.7B parameters, 12.9B active).
PRESETS = {"switch_base_8": (619e6, 223e6), "switch_base_128": (7.4e9, 223e6),
           "mixtral_8x7b": (46.7e9, 12.9e9)}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_land_on_published_total_and_active_parameters(name):
  config = gin_utils.model_config([f"gin/models/{name}.gin"])
  total, active = PRESETS[name]
  counts = counting.count(config)
  assert counts.params == pytest.approx(total, rel=0.01)
  assert counts.active_params == pytest.approx(active, rel=0.01)
  # Training FLOPs per token follow the active parameters: the dense model of the same
  # shape plus the routers' matmuls and the k - 1 further experts of each MoE layer.
  dense = counting.count(config.replace(num_experts=0, moe_top_k=1))
  d, width, k = config.d_model, config.expert_d_ff, config.experts_per_token
  per_moe_layer = 2 * (d * config.routed_experts + (k - 1) * (3 if config.gated else 2)
                       * d * width)
  # Encoder-decoder: each stack runs on max_length of the 2 max_length tokens.
  moe_layers = config.moe_layers("decoder") + config.moe_layers("encoder")
  share = 0.5 if config.is_encoder_decoder else 1.0
  assert counts.flops_per_token == pytest.approx(
      dense.flops_per_token + 3 * per_moe_layer * moe_layers * share, rel=1e-9)


def test_lora_adapts_every_expert_and_merges_into_the_adapter_model():
  config = tiny(gated=True, moe_shared_experts=1, moe_capacity_factor=None)
  model = create_model(config)
  batch = {key: jnp.asarray(value) for key, value in lm_batch(rows=2).items()}
  base = np.asarray(forward(model, batch))
  adapted = lora.apply_lora(nnx.clone(model), lora.LoraConfig(rank=2))
  np.testing.assert_array_equal(np.asarray(forward(adapted, batch)), base)  # B starts at 0
  expert_adapters = [path for path, _ in nnx.to_flat_state(nnx.state(adapted, nnx.LoRAParam))
                     if "wi_0" in path and "shared" not in path and path[-1] == "lora_a"]
  assert expert_adapters  # one [E, in, rank] A per MoE layer's wi_0
  for path, variable in nnx.to_flat_state(nnx.state(adapted, nnx.LoRAParam)):
    variable.set_value(0.3 * jax.random.normal(jax.random.key(len(path)),
                                               variable.get_value().shape))
  with_adapters = np.asarray(forward(adapted, batch))
  assert np.max(np.abs(with_adapters - base)) > 0.1
  merged = np.asarray(forward(lora.merge_lora(adapted), batch))
  np.testing.assert_allclose(merged, with_adapters, atol=1e-4)


def test_experts_quantize_per_expert_and_output_channel():
  config = tiny(moe_capacity_factor=None)
  model = create_model(config)
  quantized = quantization.quantize(model, "int8_weights")
  block = next(block for block in quantized.decoder.layers if block.moe_layer)
  assert quantization.is_quantized(block.mlp.wi_0)
  assert quantization.is_quantized(block.mlp.wo)
  batch = {key: jnp.asarray(value) for key, value in lm_batch(rows=2).items()}
  base = np.asarray(forward(model, batch))
  error = np.max(np.abs(np.asarray(forward(quantized, batch)) - base))
  assert 0 < error < 0.02 * np.max(np.abs(base))


def test_scanned_groups_decode_with_the_cache_for_the_encoder_decoder():
  config = tiny("encoder_decoder", moe_capacity_factor=None, scan_layers=True,
                moe_decoder_interval=2, moe_encoder_interval=2)
  model = create_model(config, seed=0)
  unscanned = create_model(config.replace(scan_layers=False), seed=0)
  prompts = np.random.default_rng(0).integers(2, 64, (2, 6))
  continuation = np.random.default_rng(1).integers(2, 64, (2, 4))
  np.testing.assert_allclose(decoding.cached_logits(model, prompts, continuation),
                             decoding.cached_logits(unscanned, prompts, continuation),
                             atol=1e-5)
  full = np.asarray(forward(unscanned, {
      "encoder_input_tokens": jnp.asarray(prompts),
      "decoder_input_tokens": jnp.asarray(np.concatenate(
          [np.zeros((2, 1), int), continuation], axis=1))}))
  np.testing.assert_allclose(decoding.cached_logits(model, prompts, continuation), full,
                             atol=1e-5)
