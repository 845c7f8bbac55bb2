"""Outputs of the standard parametrization for fixed seeds: tests/models/test_mup.py
compares them, within float32 round-off, with tests/testdata/standard_parametrization.npz,
written by this module (`python -m tests.models.standard_reference PATH`, under the XLA
flags that tests/conftest.py sets) before μP existed, so that adding μP provably changed
no number of the standard models beyond round-off."""

import os
import sys

import jax
import numpy as np
import optax
from flax import nnx

from t5x_lite.models import TransformerConfig, create_model
from t5x_lite.training import optim

CONFIGS = {
    "causal_decoder": dict(architecture="causal_decoder"),
    "prefix_decoder": dict(architecture="prefix_decoder"),
    "encoder_decoder": dict(architecture="encoder_decoder", num_encoder_layers=2),
    # T5: relative positions, query-folded logit scale, tied embeddings and scaled outputs.
    "t5_style": dict(architecture="encoder_decoder", num_encoder_layers=2,
                     position_encoding="t5_relative", scale_attention_logits=False,
                     tie_embeddings=True, activation="gelu", gated=True),
}


def batch(config: TransformerConfig) -> dict:
  tokens = (np.arange(1, 33).reshape(2, 16) * 7) % config.vocab_size
  features = {"decoder_input_tokens": tokens, "decoder_target_tokens": np.roll(tokens, -1, 1)}
  if config.architecture == "encoder_decoder":
    features["encoder_input_tokens"] = tokens[:, ::-1].copy()
  if config.architecture == "prefix_decoder":
    features["decoder_causal_attention"] = np.repeat((np.arange(16) < 8)[None], 2, 0).astype(
        np.int32)
  return features


def outputs(name: str) -> dict[str, np.ndarray]:
  """Initial logits and the parameters after one AdamW step, as flat arrays."""
  config = TransformerConfig(vocab_size=128, d_model=64, num_heads=2, d_ff=128,
                             num_decoder_layers=2, **CONFIGS[name])
  model = create_model(config, seed=3)
  features = batch(config)
  logits = np.asarray(model(features))
  graphdef, params = nnx.split(model, nnx.Param)
  optimizer = optim.make_optimizer(optim.OptimizerConfig(), optax.constant_schedule(1e-2))

  def loss(params):
    out = nnx.merge(graphdef, params)(features)
    return optax.softmax_cross_entropy_with_integer_labels(
        out, features["decoder_target_tokens"]).mean()

  grads = jax.grad(loss)(params)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  stepped = optax.apply_updates(params, updates)
  # Every 53rd parameter (all tensors, in order) keeps the reference file small.
  flat = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(stepped)])[::53]
  return {f"{name}/logits": logits, f"{name}/stepped_params": flat}


if __name__ == "__main__":
  from t5x_lite.train import use_training_xla_flags

  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  use_training_xla_flags()  # as tests/conftest.py
  arrays = {}
  for config_name in CONFIGS:
    arrays.update(outputs(config_name))
  np.savez_compressed(sys.argv[1], **arrays)
