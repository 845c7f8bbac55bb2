"""Counting lands on published model sizes and follows its stated conventions."""

import json
import subprocess
import sys

import pytest

from t5x_lite import gin_utils
from t5x_lite.models import TransformerConfig, counting


def preset(name: str) -> TransformerConfig:
  return gin_utils.model_config([f"gin/models/{name}.gin"])


# Published totals: GPT-3 (Brown et al. 2020, Table 2.1), LLaMA (Touvron et al.
# 2023), GPT-2 and T5 as released on the Hugging Face hub.
PUBLISHED = {
    "gpt3_125m": 125e6, "gpt3_350m": 350e6, "gpt3_760m": 760e6, "gpt3_1_3b": 1.3e9,
    "gpt3_2_7b": 2.7e9, "gpt3_6_7b": 6.7e9, "gpt3_13b": 13.0e9, "gpt3_175b": 175.0e9,
    "llama_7b": 6.7e9, "llama_13b": 13.0e9, "llama_33b": 32.5e9, "llama_65b": 65.2e9,
    "gpt2_small": 124.4e6, "gpt2_medium": 354.8e6, "gpt2_large": 774.0e6, "gpt2_xl": 1557.6e6,
    "t5_1_0_small": 60.5e6, "t5_1_0_base": 222.9e6, "t5_1_1_small": 77.0e6,
    "t5_1_1_base": 247.6e6,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_land_on_published_sizes(name):
  params, _ = counting.count_params(preset(name))
  # The papers print sizes rounded to 2-3 significant digits (GPT-3 "350M" is 355.9M).
  assert params == pytest.approx(PUBLISHED[name], rel=0.02)


def test_matmul_flops_follow_palm_formula_for_a_decoder():
  # PaLM's 6N + 12 L H Q T for an MHA decoder, N = all matmul weights incl. the
  # output layer (untied, no biases or norms counted as FLOPs).
  config = TransformerConfig(vocab_size=1000, d_model=128, num_heads=4, d_ff=512,
                             num_decoder_layers=3, max_length=64, gated=False)
  counts = counting.count(config)
  matmul_weights = 3 * (4 * 128 * 128 + 2 * 128 * 512) + 128 * 1000
  expected = 6 * matmul_weights + 12 * 3 * 4 * 32 * 64
  assert counts.flops_per_token == pytest.approx(expected)
  assert counts.flops_per_token_6n == 6 * counts.params


def test_encoder_decoder_counts_encoder_on_inputs_and_decoder_on_targets():
  config = preset("t5_1_1_small")
  short = counting.count(config, inputs_length=512, targets_length=114)
  longer_inputs = counting.count(config, inputs_length=1024, targets_length=114)
  extra_encoder_tokens = longer_inputs.flops_per_sequence - short.flops_per_sequence
  # 512 more encoder tokens: encoder projections and MLP, longer encoder
  # attention, and the decoder's cross-attention keys/values over them.
  assert extra_encoder_tokens > 0
  assert short.tokens_per_sequence == 626
  decoder_only = counting.count(config.replace(architecture="causal_decoder",
                                               num_encoder_layers=0),
                                inputs_length=0, targets_length=114)
  assert short.flops_per_sequence > decoder_only.flops_per_sequence


def test_chinchilla_convention_adds_embedding_and_softmax_terms():
  config = preset("gpt3_125m")
  matmul = counting.count(config)
  chinchilla = counting.count(config, convention="chinchilla")
  L, T, H, V, D = 12, 2048, 12, 50257, 768
  extra_forward = L * 3 * H * T * T + 2 * T * V * D
  assert chinchilla.flops_per_sequence - matmul.flops_per_sequence == pytest.approx(
      3 * extra_forward)


def test_non_embedding_params_exclude_vocabulary_and_position_tables():
  config = preset("gpt2_small")
  params, non_embedding = counting.count_params(config)
  assert params - non_embedding == 50257 * 768 + 1024 * 768


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_count_cli_prints_json():
  out = subprocess.run([sys.executable, "-m", "t5x_lite.scaling", "count",
                        "--gin_file=gin/models/llama_7b.gin", "--json"],
                       capture_output=True, text=True, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["params"] == counting.count_params(preset("llama_7b"))[0]
  assert set(result) >= {"params", "non_embedding_params", "flops_per_token"}


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("args,message", [
    (["--gin_file=gin/models/missing.gin"], "not found"),
    (["--gin_file=gin/models/gpt2_small.gin", "--gin.TransformerConfig.d_modle=3"], "d_modle"),
    (["--gin_file=gin/models/gpt2_small.gin", "--gin.TransformerConfig.num_kv_heads=5"],
     "num_kv_heads"),
])
def test_count_cli_bad_input_is_one_clear_error(args, message):
  out = subprocess.run([sys.executable, "-m", "t5x_lite.scaling", "count", *args],
                       capture_output=True, text=True)
  assert out.returncode != 0
  assert message in out.stderr and "Traceback" not in out.stderr
