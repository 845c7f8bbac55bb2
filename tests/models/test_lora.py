"""LoRA as a user relies on it: an adapter with zero B is exactly the base model, a
training step changes only adapters, merged weights compute what the adapter model
computes, and a target that matches nothing is one clear error."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from t5x_lite.common.errors import ConfigError
from t5x_lite.models import TransformerConfig, create_model, forward
from t5x_lite.models.lora import (
  LoraConfig,
  LoraProjection,
  apply_lora,
  merge_lora,
  optimizer_state_bytes,
  parameter_counts,
)

ARCHITECTURES = ["causal_decoder", "prefix_decoder", "encoder_decoder"]


def tiny(architecture: str, **overrides) -> TransformerConfig:
  fields = dict(architecture=architecture, vocab_size=64, d_model=32, num_heads=4,
                num_kv_heads=2, d_ff=48, num_decoder_layers=2, max_length=16, gated=True,
                num_encoder_layers=2 if architecture == "encoder_decoder" else 0)
  return TransformerConfig(**{**fields, **overrides})


def batch(config: TransformerConfig) -> dict:
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(1, config.vocab_size, (2, 12)))
  features = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens,
              "decoder_loss_weights": jnp.ones((2, 12))}
  if config.architecture == "prefix_decoder":
    features["decoder_causal_attention"] = jnp.asarray([[1] * 4 + [0] * 8] * 2)
  if config.is_encoder_decoder:
    features["encoder_input_tokens"] = tokens[:, ::-1]
  return features


def randomise_b(model, seed=1):
  """Non-zero B everywhere, so the adapters change the function."""
  key = jax.random.key(seed)
  for _, module in nnx.iter_modules(model):
    if isinstance(module, LoraProjection):
      key, sub = jax.random.split(key)
      b = module.lora.lora_b
      b[...] = 0.05 * jax.random.normal(sub, b.shape, b.dtype)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_zero_b_adapters_leave_the_model_exactly_unchanged(architecture):
  config = tiny(architecture)
  base = create_model(config)
  adapted = apply_lora(nnx.clone(base), LoraConfig(rank=4))
  features = batch(config)
  np.testing.assert_array_equal(forward(adapted, features), forward(base, features))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_merged_weights_reproduce_the_adapter_model(architecture):
  config = tiny(architecture)
  adapted = apply_lora(create_model(config), LoraConfig(rank=4, alpha=8.0))
  randomise_b(adapted)
  features = batch(config)
  with_adapters = forward(adapted, features)
  merged = merge_lora(adapted)
  assert not any(isinstance(m, LoraProjection) for _, m in nnx.iter_modules(merged))
  plain = create_model(config)  # the same structure as a never-adapted model
  nnx.update(plain, nnx.state(merged))
  np.testing.assert_allclose(forward(plain, features), with_adapters, atol=1e-5)
  assert not np.allclose(forward(create_model(config), features), with_adapters, atol=1e-3)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_a_training_step_changes_only_the_adapters():
  config = tiny("causal_decoder")
  model = apply_lora(create_model(config), LoraConfig(rank=4))
  features = batch(config)
  base_before = jax.tree.map(np.array, nnx.state(model, nnx.Not(nnx.LoRAParam)))
  adapters_before = jax.tree.map(np.array, nnx.state(model, nnx.LoRAParam))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.LoRAParam)

  def loss(model):
    logits = model(features)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, features["decoder_target_tokens"]).mean()

  def step():
    grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
    optimizer.update(model, grads)

  def moved(kind: str) -> list[bool]:
    now = nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))
    before = nnx.to_flat_state(adapters_before)
    return [not np.array_equal(np.asarray(before[i][1][...]), np.asarray(value[...]))
            for i, (path, value) in enumerate(now) if path[-1] == kind]

  step()
  # While B is zero, A gets no gradient: the first step moves every B and no A ...
  assert all(moved("lora_b")) and not any(moved("lora_a"))
  step()
  # ... the second moves every A too; the base never moves.
  assert all(moved("lora_a"))
  jax.tree.map(np.testing.assert_array_equal, base_before,
               jax.tree.map(np.array, nnx.state(model, nnx.Not(nnx.LoRAParam))))


def test_trainable_parameters_and_optimizer_state_are_the_adapters_only():
  config = tiny("causal_decoder")
  full_state = optimizer_state_bytes(create_model(config), optax.adam(1e-3), wrt=nnx.Param)
  model = apply_lora(create_model(config), LoraConfig(rank=2, targets=("query", "value")))
  counts = parameter_counts(model)
  # query: [32 -> 4 heads x 8]; value: [32 -> 2 kv heads x 8]; rank 2; 2 layers.
  assert counts["adapter"] == 2 * (2 * (32 + 32) + 2 * (32 + 16))
  assert counts["base"] == sum(int(x.size) for x in jax.tree.leaves(
      nnx.state(create_model(config), nnx.Param)))
  # Adam keeps two moments per trainable parameter (plus a step count).
  adapter_state = optimizer_state_bytes(model, optax.adam(1e-3))
  assert adapter_state == 2 * 4 * counts["adapter"] + 4
  assert full_state == 2 * 4 * counts["base"] + 4


def test_bad_targets_and_layouts_are_one_clear_error():
  with pytest.raises(ConfigError, match="are not projections"):
    LoraConfig(targets=("qkv",))
  ungated = create_model(tiny("causal_decoder", gated=False))
  with pytest.raises(ConfigError, match=r"\['wi_1'\] match no layer"):
    apply_lora(ungated, LoraConfig(targets=("query", "wi_1")))
  with pytest.raises(ConfigError, match="scan_layers=False"):
    apply_lora(create_model(tiny("causal_decoder", scan_layers=True)), LoraConfig())
