"""Post-training quantization through qwix (t5x_lite/quantization.py): quantized logits
stay within the error the quantization step allows, decoding runs unchanged, quantized
checkpoints round-trip through disk, and bad requests are one clear error."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from qwix._src.core import numerics as qwix_numerics

from t5x_lite.inference import decoding
from t5x_lite.models import TransformerConfig, create_model, losses, quantization
from t5x_lite.models.transformer import projections
from t5x_lite.runs import loading
from tests.models import standard_reference

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)

ARCHITECTURES = ("causal_decoder", "prefix_decoder", "encoder_decoder")


def tiny(architecture: str, **fields) -> TransformerConfig:
  return TransformerConfig(architecture=architecture, vocab_size=256, d_model=128,
                           num_heads=2, head_dim=64, d_ff=256, num_decoder_layers=2,
                           num_encoder_layers=2 if architecture == "encoder_decoder" else 0,
                           **fields)


def batch_for(config: TransformerConfig) -> dict:
  """Two 16-token rows with the architecture's features (the μP tests' batch)."""
  return standard_reference.batch(config)


def first_order_bound(model, levels: int) -> float:
  """Symmetric absmax quantization with `levels` steps each side moves every weight by at
  most half a step, 1 / (2 levels) of the largest magnitude in its channel; to first
  order, the logits' relative error is at most the sum of that over the quantized
  matrices (every projection and the output layer)."""
  matrices = len(list(projections(model))) + (0 if model.config.tie_embeddings else 1)
  return matrices / (2 * levels)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_quantized_logits_stay_within_the_quantization_step(architecture):
  model = create_model(tiny(architecture))
  batch = batch_for(model.config)
  reference = np.asarray(model(batch))

  def relative_error(mode):
    logits = np.asarray(quantization.quantize(model, mode)(batch))
    return np.linalg.norm(logits - reference) / np.linalg.norm(reference)

  int8, int4 = relative_error("int8_weights"), relative_error("int4_weights")
  assert int8 < first_order_bound(model, 127)  # 15 matrices: 5.9%
  assert int8 < int4 < first_order_bound(model, 7)
  assert relative_error("int8_weights_int8_activations") < 2 * first_order_bound(model, 127)
  # NF4's codes are not evenly spaced: a weight moves by at most half the widest gap
  # between neighbouring codes (of the absmax-scaled range [-1, 1]).
  widest_gap = float(np.max(np.diff(np.asarray(qwix_numerics.get_nf4_buckets()))))
  assert relative_error("nf4_weights") < first_order_bound(model, 1 / widest_gap)
  np.testing.assert_array_equal(np.asarray(model(batch)), reference)  # the float model as was


def test_every_projection_and_the_untied_output_layer_store_integers():
  model = quantization.quantize(create_model(tiny("encoder_decoder")), "int8_weights")
  state = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  integer = {path for path, value in state.items()
             if jnp.issubdtype(value.get_value().dtype, jnp.integer)}
  for owner, name in projections(model):
    assert quantization.is_quantized(getattr(owner, name))
  assert any(path[0] == "logits_dense" for path in integer)
  assert not any(path[0] == "token_embedding" for path in integer)  # a lookup stays float
  qvalues = [path for path in integer if path[-1] == "qvalue"]
  assert len(qvalues) == len(list(projections(model))) + 1  # and the output layer
  float_bytes = quantization.parameter_bytes(create_model(tiny("encoder_decoder")))
  assert quantization.parameter_bytes(model) < 0.4 * float_bytes


CYCLE = np.array([11, 23, 37, 41, 53, 67, 71, 83])  # a sequence to learn by heart


def cycle_batch(config: TransformerConfig, offsets) -> dict:
  """Rows of the repeating CYCLE from each offset, as the architecture reads them."""
  rows = np.stack([np.roll(np.tile(CYCLE, 4), -int(o))[:24] for o in offsets])
  if config.architecture == "encoder_decoder":
    inputs, targets = rows[:, :8], rows[:, 8:]
    return {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
            "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
            "decoder_loss_weights": np.ones_like(targets, np.float32)}
  batch = {"decoder_target_tokens": rows,
           "decoder_input_tokens": np.pad(rows[:, :-1], ((0, 0), (1, 0))),
           "decoder_loss_weights": np.ones_like(rows, np.float32)}
  if config.architecture == "prefix_decoder":
    batch["decoder_causal_attention"] = np.repeat((np.arange(24) < 8)[None], len(rows), 0
                                                  ).astype(np.int32)
    batch["decoder_loss_weights"][:, :8] = 0
  return batch


def confident(architecture: str):
  """A tiny model trained until it continues CYCLE with large margins."""
  model = create_model(tiny(architecture))
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, batch):
    def loss(model):
      sums = losses.model_loss_sums(model, batch)
      return sums.loss / sums.tokens
    value, grads = nnx.value_and_grad(loss)(model)
    optimizer.update(model, grads)
    return value

  for i in range(80):
    step(model, optimizer, {k: jnp.asarray(v) for k, v in cycle_batch(
        model.config, np.arange(8) + i).items()})
  return model


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_quantized_greedy_decoding_equals_the_float_model_where_margins_are_large(
    architecture):
  model = confident(architecture)
  prompts = np.stack([np.roll(np.tile(CYCLE, 2), -o)[:8] for o in (0, 3)]).astype(np.int32)
  expected = decoding.generate(model, prompts, max_new_tokens=8, eos_id=1).tokens
  # The float model continues the cycle, each token far ahead of the next best...
  np.testing.assert_array_equal(expected[0], CYCLE)
  quantized = quantization.quantize(model, "int8_weights")
  # ...and so does the quantized one, by every decoding method.
  np.testing.assert_array_equal(
      decoding.generate(quantized, prompts, max_new_tokens=8, eos_id=1).tokens, expected)
  beams = decoding.beam_search(quantized, prompts, max_new_tokens=8, beams=2, eos_id=1)
  np.testing.assert_array_equal(beams.tokens[:, 0], expected)


def test_a_quantized_checkpoint_round_trips_through_disk(tiny_run_once, tmp_path, capsys):
  from t5x_lite import quantize as tool
  output = tmp_path / "int8"
  assert tool.main([f"--checkpoint={tiny_run_once}", f"--output={output}"]) == 0
  loaded = loading.load_model(str(output))
  float_model = loading.load_model(str(tiny_run_once))
  batch = {"decoder_input_tokens": np.arange(1, 17).reshape(1, 16)}
  np.testing.assert_array_equal(
      np.asarray(loaded(batch)),
      np.asarray(quantization.quantize(float_model, "int8_weights")(batch)))
  record = json.loads((output / "spec.json").read_text())
  assert record["quantization"]["mode"] == "int8_weights"
  # Bad requests: nothing written, one clear error each.
  with pytest.raises(SystemExit) as exit_info:
    tool.main([f"--checkpoint={output}", f"--output={tmp_path / 'again'}"])
  assert exit_info.value.code == 2 and "already quantized" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    tool.main([f"--checkpoint={tiny_run_once}", f"--output={tmp_path / 'x'}", "--mode=int3"])
  assert "'int3' is not a supported mode" in capsys.readouterr().err
  assert not (tmp_path / "again").exists() and not (tmp_path / "x" / "checkpoints").exists()
  with pytest.raises(quantization.QuantizationError, match="already quantized"):
    quantization.quantize(loaded, "int4_weights")


def test_nf4_weights_store_4_bit_codes_in_groups_of_64_and_round_trip_through_disk(
    tiny_run_once, tmp_path):
  output = tmp_path / "nf4"
  loading.write_quantized(str(tiny_run_once), str(output), "nf4_weights")
  loaded = loading.load_model(str(output))
  expected = quantization.quantize(loading.load_model(str(tiny_run_once)), "nf4_weights")
  batch = {"decoder_input_tokens": np.arange(1, 17).reshape(1, 16)}
  np.testing.assert_array_equal(np.asarray(loaded(batch)), np.asarray(expected(batch)))
  wo = loaded.decoder.layers[0].mlp.wo
  leaves = {jax.tree_util.keystr(path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(wo))}
  codes = [leaf for name, leaf in leaves.items() if "qvalue" in name]
  scales = [leaf for name, leaf in leaves.items() if "scale" in name]
  assert codes[0].dtype == jnp.uint4
  assert scales[0].shape[0] == wo.kernel.array.qvalue.shape[0] // quantization.NF4_GROUP_SIZE


def test_int4_groups_share_one_scale_per_128_inputs():
  model = quantization.quantize(create_model(tiny("causal_decoder")), "int4_weights")
  wo = model.decoder.layers[0].mlp.wo  # [d_ff 256, d_model 128]: two groups per channel
  scales = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(wo))
            if "scale" in jax.tree_util.keystr(path)]
  assert scales and scales[0].shape == (2, 128)
  assert math.prod(scales[0].shape) == 256 // quantization.GROUP_SIZE * 128
