"""The benchmark's PyTorch references are the same models as ours: same parameters, same
function (weights copied across), same FLOPs, so a time ratio compares implementations."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from t5x_lite.models import TransformerConfig, create_model
from t5x_lite.models.counting import count
from tests.scripts import load_script

reference = load_script("tools/torch_reference.py")
torch.set_num_threads(1)

SMALL = dict(vocab_size=97, d_model=32, num_heads=4, d_ff=48, num_decoder_layers=2,
             max_length=64)


def batch_of(config, batch, inputs, targets, torch_tensors=False):
  rng = np.random.default_rng(0)
  length = targets if config.is_encoder_decoder else inputs + targets
  tokens = rng.integers(1, config.vocab_size, (batch, length))
  features = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens,
              "decoder_loss_weights": np.ones((batch, length), np.float32)}
  if config.is_encoder_decoder:
    features["encoder_input_tokens"] = rng.integers(1, config.vocab_size, (batch, inputs))
  if config.architecture == "prefix_decoder":
    features["decoder_causal_attention"] = np.repeat(
        (np.arange(length) < inputs)[None].astype(np.int32), batch, 0)
  convert = torch.tensor if torch_tensors else jnp.asarray
  return {name: convert(array) for name, array in features.items()}


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("architecture,fields", [
    ("causal_decoder", {}),
    ("causal_decoder", dict(num_kv_heads=2, gated=True, activation="silu",
                            tie_embeddings=True)),
    ("prefix_decoder", {}),
])
def test_the_pytorch_decoder_is_our_model(architecture, fields):
  config = TransformerConfig(architecture=architecture, **SMALL, **fields)
  inputs, targets = (16, 16) if architecture == "prefix_decoder" else (0, 32)
  ours = create_model(config)
  theirs = reference.Decoder(config)
  assert reference.parameter_count(theirs) == count(config).params
  reference.copy_weights(theirs, ours)
  with torch.no_grad():
    expected = reference.decoder_forward(theirs)(batch_of(config, 2, inputs, targets, True))
  np.testing.assert_allclose(ours(batch_of(config, 2, inputs, targets)), expected.numpy(),
                             rtol=0, atol=1e-5)
  step = reference.TrainStep(theirs, reference.decoder_forward(theirs))
  flops = reference.counted_flops(lambda: step(batch_of(config, 2, inputs, targets, True)))
  assert flops == count(config, inputs_length=inputs, targets_length=targets
                        ).flops_per_sequence * 2


def test_hugging_face_t5_is_our_encoder_decoder_in_size_and_flops():
  config = TransformerConfig(architecture="encoder_decoder", num_encoder_layers=2,
                             position_encoding="t5_relative", gated=True,
                             scale_attention_logits=False, **SMALL)
  t5 = reference.hf_t5(config)
  assert reference.parameter_count(t5) == count(config).params
  step = reference.TrainStep(t5, reference.t5_forward(t5))
  flops = reference.counted_flops(lambda: step(batch_of(config, 2, 40, 24, True)))
  assert flops == count(config, inputs_length=40, targets_length=24).flops_per_sequence * 2
