"""Imported Hugging Face weights reproduce the reference logits.

Reference models are random-weight transformers models built from config
objects (no download), saved with save_pretrained and re-loaded by
transformers itself, so the reference is exactly what a user of that
directory would get from transformers.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from t5x_lite.interop import hf
from t5x_lite.models.transformer import create_model

torch.set_num_threads(1)
TOLERANCE = 1e-4


def randomize(model: torch.nn.Module, seed: int) -> None:
  """Replaces the (tiny) default init with O(1) weights so logits differ a lot."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if "norm" in name or "ln_" in name:
        param.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
      else:
        param.copy_(noise / np.sqrt(param.shape[-1]))


def save_and_reload(model, path, model_class):
  model.save_pretrained(path)
  return model_class.from_pretrained(path).eval()


def t5_model(tmp_path, *, gated: bool, tied: bool):
  config = transformers.T5Config(
      vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
      num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
      feed_forward_proj="gated-gelu" if gated else "relu", tie_word_embeddings=tied,
      dropout_rate=0.0)
  model = transformers.T5ForConditionalGeneration(config)
  if not tied:
    # transformers 5 ties T5's lm_head at construction; a v1.1 checkpoint has its own.
    model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.shared.weight))
  randomize(model, seed=1)
  return save_and_reload(model, tmp_path, transformers.T5ForConditionalGeneration)


def t5_batch():
  rng = np.random.default_rng(0)
  encoder = rng.integers(2, 97, size=(2, 9))
  encoder[1, 5:] = 0  # padding
  decoder = rng.integers(2, 97, size=(2, 6))
  decoder[:, 0] = 0  # decoder start token
  return encoder, decoder


def max_t5_error(reference, model):
  encoder, decoder = t5_batch()
  with torch.no_grad():
    expected = reference(input_ids=torch.tensor(encoder),
                         attention_mask=torch.tensor(encoder > 0),
                         decoder_input_ids=torch.tensor(decoder)).logits.numpy()
  ours = model({"encoder_input_tokens": jnp.asarray(encoder),
                "decoder_input_tokens": jnp.asarray(decoder)})
  return float(np.max(np.abs(np.asarray(ours) - expected)))


def decoder_only_error(reference, model, vocab_size):
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, vocab_size, size=(2, 11))
  attention_mask = np.ones_like(tokens)
  attention_mask[1, 7:] = 0  # right padding
  with torch.no_grad():
    expected = reference(input_ids=torch.tensor(tokens),
                         attention_mask=torch.tensor(attention_mask)).logits.numpy()
  ours = np.asarray(model({"decoder_input_tokens": jnp.asarray(tokens)}))
  valid = attention_mask.astype(bool)
  return float(np.max(np.abs(ours[valid] - expected[valid])))


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("gated,tied", [(True, False), (False, True)],
                         ids=["t5_v1_1_untied", "t5_v1_0_tied"])
def test_t5_reproduces_reference_logits(tmp_path, gated, tied):
  reference = t5_model(tmp_path, gated=gated, tied=tied)
  model = hf.load(str(tmp_path))
  assert model.config.tie_embeddings == tied
  assert model.config.scales_decoder_outputs == tied
  assert max_t5_error(reference, model) <= TOLERANCE


def test_t5_v1_1_with_transformers4_config_loads_untied_and_unscaled(tmp_path):
  reference = t5_model(tmp_path, gated=True, tied=False)
  config_path = tmp_path / "config.json"
  config = json.loads(config_path.read_text())
  config.pop("scale_decoder_outputs")
  config["tie_word_embeddings"] = False  # as written by transformers 4
  config_path.write_text(json.dumps(config))
  model = hf.load(str(tmp_path))
  assert not model.config.tie_embeddings and not model.config.scales_decoder_outputs
  assert max_t5_error(reference, model) <= TOLERANCE


def test_gpt2_reproduces_reference_logits(tmp_path):
  config = transformers.GPT2Config(vocab_size=101, n_embd=32, n_layer=2, n_head=4,
                                   n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0)
  model = transformers.GPT2LMHeadModel(config)
  randomize(model, seed=2)
  reference = save_and_reload(model, tmp_path, transformers.GPT2LMHeadModel)
  ours = hf.load(str(tmp_path))
  assert ours.config.tie_embeddings and not ours.config.scales_decoder_outputs
  assert decoder_only_error(reference, ours, 101) <= TOLERANCE


@pytest.mark.parametrize("kv_heads", [2, 1], ids=["gqa", "mqa"])
def test_llama_reproduces_reference_logits(tmp_path, kv_heads):
  config = transformers.LlamaConfig(vocab_size=103, hidden_size=32, intermediate_size=56,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=kv_heads, rope_theta=5000.0,
                                    max_position_embeddings=64)
  model = transformers.LlamaForCausalLM(config)
  randomize(model, seed=3)
  reference = save_and_reload(model, tmp_path, transformers.LlamaForCausalLM)
  ours = hf.load(str(tmp_path), scan_layers=True)
  assert ours.config.kv_heads == kv_heads and ours.config.rope_theta == 5000.0
  assert decoder_only_error(reference, ours, 103) <= TOLERANCE


def test_export_round_trips_through_transformers(tmp_path):
  reference = t5_model(tmp_path / "t5", gated=True, tied=False)
  hf.export(hf.load(str(tmp_path / "t5")), str(tmp_path / "t5_out"))
  exported = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "t5_out")
  assert max_t5_error(exported.eval(), hf.load(str(tmp_path / "t5"))) <= TOLERANCE
  assert max_t5_error(reference, hf.load(str(tmp_path / "t5_out"))) <= TOLERANCE

  config = transformers.LlamaConfig(vocab_size=103, hidden_size=32, intermediate_size=56,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2)
  llama = transformers.LlamaForCausalLM(config)
  randomize(llama, seed=4)
  save_and_reload(llama, tmp_path / "llama", transformers.LlamaForCausalLM)
  hf.export(hf.load(str(tmp_path / "llama")), str(tmp_path / "llama_out"))
  exported = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "llama_out").eval()
  assert decoder_only_error(exported, hf.load(str(tmp_path / "llama")), 103) <= TOLERANCE


def write_config(path, **fields):
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(fields))


def test_unsupported_architecture_is_named(tmp_path):
  write_config(tmp_path, model_type="bert")
  with pytest.raises(hf.UnsupportedModelError, match="model_type 'bert'"):
    hf.load(str(tmp_path))


def test_rope_scaling_is_refused_not_approximated(tmp_path):
  write_config(tmp_path, model_type="llama", vocab_size=10, hidden_size=8,
               intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
               rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0})
  with pytest.raises(hf.UnsupportedModelError, match="rope_type='llama3'"):
    hf.load(str(tmp_path))


def test_pickled_weights_are_never_loaded(tmp_path):
  write_config(tmp_path, model_type="gpt2", vocab_size=10, n_embd=8, n_layer=1, n_head=2,
               n_positions=8)
  (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
  with pytest.raises(hf.UnsupportedModelError, match="never unpickles"):
    hf.load(str(tmp_path))


def tiny_llama(path, layers=2):
  config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                    num_hidden_layers=layers, num_attention_heads=4,
                                    num_key_value_heads=2)
  transformers.LlamaForCausalLM(config).save_pretrained(path)


def edit_config(path, **fields):
  config = json.loads((path / "config.json").read_text())
  config.update(fields)
  for field in [name for name, value in fields.items() if value is None]:
    config.pop(field)
  (path / "config.json").write_text(json.dumps(config))


def test_a_config_with_fewer_layers_than_the_weights_is_refused(tmp_path):
  tiny_llama(tmp_path, layers=3)
  edit_config(tmp_path, num_hidden_layers=2)
  with pytest.raises(hf.UnsupportedModelError, match=r"not used by config.json.*layers\.2\."):
    hf.load(str(tmp_path))


def test_a_config_with_more_layers_than_the_weights_names_the_missing_tensor(tmp_path):
  tiny_llama(tmp_path, layers=2)
  edit_config(tmp_path, num_hidden_layers=3)
  with pytest.raises(hf.UnsupportedModelError, match=r"'layers\.2\..*' is missing"):
    hf.load(str(tmp_path))


@pytest.mark.parametrize("fields", [{"num_attention_heads": 8}, {"head_dim": 4}])
def test_query_weights_that_do_not_fit_heads_times_head_dim_are_refused(tmp_path, fields):
  tiny_llama(tmp_path)
  edit_config(tmp_path, **fields)
  with pytest.raises(hf.UnsupportedModelError, match=r"tensor layers\.0\.self_attn\.[qk]_proj"
                                                     r"\.weight \(our .*\) has shape"):
    hf.load(str(tmp_path))


def test_a_missing_config_field_is_named_with_its_file(tmp_path):
  tiny_llama(tmp_path)
  edit_config(tmp_path, intermediate_size=None)
  with pytest.raises(hf.UnsupportedModelError, match=r"config.json has no field "
                                                     r"'intermediate_size'"):
    hf.load(str(tmp_path))


def test_an_unreadable_config_is_named(tmp_path):
  tiny_llama(tmp_path)
  (tmp_path / "config.json").write_text('{"model_type": "llama", ')
  with pytest.raises(hf.UnsupportedModelError, match=r"config.json cannot be read as JSON"):
    hf.load(str(tmp_path))


def assert_no_near_ties(scores) -> None:
  """Greedy tokens compared across two libraries are a property of the code only if no
  step's best two logits are closer than the libraries' logits may differ (the parity
  tests above bound that by TOLERANCE): a margin over 2 x TOLERANCE cannot flip, on any
  processor; a smaller one would make the comparison a test of the machine."""
  top2 = torch.topk(torch.stack(scores), 2, dim=-1).values
  margin = float((top2[..., 0] - top2[..., 1]).min())
  assert margin > 2 * TOLERANCE, f"a near-tie ({margin:.2e}) makes this comparison fragile"


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_greedy_decoding_of_imported_models_equals_transformers_generate(tmp_path):
  from t5x_lite.inference import decoding

  new_tokens = 8
  config = transformers.GPT2Config(vocab_size=101, n_embd=32, n_layer=2, n_head=4,
                                   n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0, bos_token_id=0, eos_token_id=1)
  gpt2 = transformers.GPT2LMHeadModel(config)
  randomize(gpt2, seed=3)
  reference = save_and_reload(gpt2, tmp_path / "gpt2", transformers.GPT2LMHeadModel)
  ours = hf.load(str(tmp_path / "gpt2"))
  prompts = np.random.default_rng(4).integers(2, 101, size=(3, 6))
  with torch.no_grad():  # our decoders read BOS (0) before the prompt
    expected = reference.generate(torch.tensor(np.pad(prompts, ((0, 0), (1, 0)))),
                                  attention_mask=torch.ones(3, 7, dtype=torch.long),
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  do_sample=False, pad_token_id=0, eos_token_id=None,
                                  output_scores=True, return_dict_in_generate=True)
  assert_no_near_ties(expected.scores)
  decoded = decoding.generate(ours, prompts, max_new_tokens=new_tokens, eos_id=-1)
  np.testing.assert_array_equal(decoded.tokens, expected.sequences[:, 7:].numpy())

  t5 = t5_model(tmp_path / "t5", gated=True, tied=False)
  ours = hf.load(str(tmp_path / "t5"))
  encoder, _ = t5_batch()
  with torch.no_grad():
    expected = t5.generate(input_ids=torch.tensor(encoder),
                           attention_mask=torch.tensor(encoder > 0),
                           max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                           decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                           # transformers sizes its cache by the encoder's depth (2), not
                           # the decoder's (3); the uncached reference is the plainer one.
                           use_cache=False, output_scores=True, return_dict_in_generate=True)
  assert_no_near_ties(expected.scores)
  decoded = decoding.generate(ours, encoder, max_new_tokens=new_tokens)
  expected = expected.sequences[:, 1:].numpy()  # drop the decoder start token
  np.testing.assert_array_equal(decoded.tokens[:, :expected.shape[1]], expected)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("mode,levels", [("int8_weights", 127), ("int4_weights", 7)])
def test_an_imported_model_quantizes_within_the_quantization_step(tmp_path, mode, levels):
  from t5x_lite.models import quantization
  from t5x_lite.models.transformer import projections

  config = transformers.LlamaConfig(vocab_size=103, hidden_size=64, intermediate_size=128,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, tie_word_embeddings=False)
  model = transformers.LlamaForCausalLM(config)
  randomize(model, seed=5)
  model.save_pretrained(tmp_path)
  ours = hf.load(str(tmp_path))
  quantized = quantization.quantize(ours, mode)
  tokens = {"decoder_input_tokens": np.arange(1, 33).reshape(2, 16) % 103}
  reference, logits = np.asarray(ours(tokens)), np.asarray(quantized(tokens))
  # As for t5x_lite's own models (tests/test_quantization.py): at most half a step of
  # each matrix's channel maximum per weight, summed over the quantized matrices.
  bound = (len(list(projections(ours))) + 1) / (2 * levels)
  assert np.linalg.norm(logits - reference) / np.linalg.norm(reference) < bound


def tiny_mixtral(path, seed=5):
  config = transformers.MixtralConfig(vocab_size=103, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, num_local_experts=4,
                                      num_experts_per_tok=2, max_position_embeddings=64,
                                      rope_theta=5000.0)
  model = transformers.MixtralForCausalLM(config)
  randomize(model, seed=seed)
  return save_and_reload(model, path, transformers.MixtralForCausalLM)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unscanned", "scanned"])
def test_mixtral_reproduces_reference_logits(tmp_path, scan_layers):
  reference = tiny_mixtral(tmp_path)
  ours = hf.load(str(tmp_path), scan_layers=scan_layers)
  config = ours.config
  assert (config.num_experts, config.moe_top_k, config.moe_router) == (4, 2, "mixtral")
  assert config.moe_capacity_factor is None  # transformers never drops a token
  assert decoder_only_error(reference, ours, 103) <= TOLERANCE


def test_mixtral_export_round_trips_through_transformers(tmp_path):
  tiny_mixtral(tmp_path / "mixtral")
  ours = hf.load(str(tmp_path / "mixtral"))
  hf.export(ours, str(tmp_path / "mixtral_out"))
  exported = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "mixtral_out").eval()
  assert decoder_only_error(exported, ours, 103) <= TOLERANCE
  # A model Mixtral's layout cannot hold (an MoE layer every other layer) is refused.
  config = ours.config.replace(moe_decoder_interval=2)
  with pytest.raises(hf.UnsupportedModelError, match="cannot express"):
    hf.export(create_model(config), str(tmp_path / "refused"))
