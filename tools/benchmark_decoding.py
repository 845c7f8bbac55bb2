"""Generation speed side by side with Hugging Face generate (`make bench`).

The quick-start decoder (gin/models/quickstart_decoder.gin: 4 x 256, SwiGLU, RoPE, tied
embeddings; random weights, speed does not depend on them) and the same model as a
transformers Llama (LlamaForCausalLM of equal shape and parameter count) continue a
16-token prompt by `--new_tokens` greedy tokens, EOS disabled so every row runs the
full length, at each batch size, the two interleaved round by round, each in a process
of its own (tools/interleave.py):
  - t5x_lite: decoding.generate (prefill once, then one decoder step per token over the
    key/value cache, inside one jitted while_loop);
  - HF generate: transformers' greedy generate with its KV cache (PyTorch eager).
Reports generated tokens/s of each and their ratio (> 1: t5x_lite is faster).

  python tools/benchmark_decoding.py [--new_tokens 256] [--batches 1 8 32] [--json out.json]
"""

from __future__ import annotations

import dataclasses

import bench_cli
import interleave
import jax
import numpy as np

from t5x_lite import gin_utils
from t5x_lite.common import cpus
from t5x_lite.inference import decoding
from t5x_lite.models import TransformerConfig
from t5x_lite.models.counting import count
from t5x_lite.models.transformer import create_model

PROMPT = 16


def hf_llama(config: TransformerConfig):
  """transformers' Llama of the quick-start decoder's shape."""
  import torch
  import transformers

  torch.manual_seed(0)
  hf = transformers.LlamaConfig(
      vocab_size=config.vocab_size, hidden_size=config.d_model,
      intermediate_size=config.d_ff, num_hidden_layers=config.num_decoder_layers,
      num_attention_heads=config.num_heads, num_key_value_heads=config.kv_heads,
      head_dim=config.resolved_head_dim, max_position_embeddings=config.max_length,
      tie_word_embeddings=config.tie_embeddings, rms_norm_eps=config.norm_epsilon)
  return transformers.LlamaForCausalLM(hf).eval()


def ours(config: TransformerConfig, prompts: dict[int, np.ndarray], new_tokens: int,
         xla_sized_pool: bool = False) -> dict:
  """{"t5x_lite b<batch>": greedy generation of that batch's prompts, with the CPU
  thread pool the commands use}; xla_sized_pool: as XLA sizes it instead, as
  "t5x_lite (XLA-sized pool) b<batch>"."""
  if not xla_sized_pool:
    cpus.size_thread_pool()  # this worker has not computed anything yet
  name = "t5x_lite (XLA-sized pool)" if xla_sized_pool else "t5x_lite"
  model = create_model(config)

  def run(prompt):
    jax.block_until_ready(decoding.generate(model, prompt, max_new_tokens=new_tokens,
                                            eos_id=-1).tokens)
  return {f"{name} b{batch}": lambda _, p=prompt: run(p) for batch, prompt in prompts.items()}


def theirs(config: TransformerConfig, prompts: dict[int, np.ndarray], new_tokens: int) -> dict:
  """{"HF generate b<batch>": transformers' greedy generate of the same prompts}."""
  import torch

  torch.set_flush_denormal(True)
  llama = hf_llama(config)
  assert sum(p.numel() for p in llama.parameters()) == count(config).params

  def run(prompt):
    with torch.no_grad():
      llama.generate(torch.tensor(prompt), attention_mask=torch.ones(prompt.shape),
                     max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                     eos_token_id=None, pad_token_id=0)
  return {f"HF generate b{batch}": lambda _, p=prompt: run(p)
          for batch, prompt in prompts.items()}


def main(argv=None) -> None:
  parser = bench_cli.parser(__doc__)
  parser.add_argument("--new_tokens", type=int, default=256)
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  config = dataclasses.replace(gin_utils.model_config(["models/quickstart_decoder.gin"]),
                               max_length=PROMPT + 1 + args.new_tokens)
  prompts = {batch: np.random.default_rng(batch).integers(2, config.vocab_size, (batch, PROMPT))
             for batch in args.batches}
  workers = [interleave.Worker(ours, config, prompts, args.new_tokens),
             interleave.Worker(theirs, config, prompts, args.new_tokens)]
  try:
    seconds = interleave.time_rounds(workers, args.rounds, warmup=1)
  finally:
    for worker in workers:
      worker.close()
  results = []
  for batch in args.batches:
    rates = {name: batch * args.new_tokens / seconds[f"{name} b{batch}"]
             for name in ("t5x_lite", "HF generate")}
    row = {"batch": batch, "new_tokens": args.new_tokens, "tokens_per_second": rates,
           "ratio": rates["t5x_lite"] / rates["HF generate"]}
    results.append(row)
    print(f"batch {batch:3d}: t5x_lite {rates['t5x_lite']:8,.0f} tok/s  HF generate "
          f"{rates['HF generate']:8,.0f} tok/s  ratio {row['ratio']:.2f}", flush=True)
  bench_cli.write_json(args.json, {"device": jax.devices()[0].device_kind, "results": results})


if __name__ == "__main__":
  main()
