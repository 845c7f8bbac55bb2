"""Generation speed with and without the KV cache (`make bench`).

The quick-start decoder (gin/models/quickstart_decoder.gin, random weights: speed
does not depend on them; max_length raised to fit) continues a 16-token prompt
by 256 greedy tokens:
  - cached: t5x_lite.decoding.generate (prefill once, then one decoder step per token
    over the key/value cache, inside one jitted while_loop);
  - uncached: a full forward pass over the whole (fixed-size, padded) sequence for
    every new token, jitted once, the argmax appended on device.
Reports generated tokens/s of each and their ratio, at batch 1 and 8.

  python tools/benchmark_decoding.py [--new_tokens 256] [--batches 1 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from t5x_lite import decoding, gin_utils
from t5x_lite.models.transformer import create_model

PROMPT = 16


@functools.partial(jax.jit, static_argnums=(0, 3))
def _uncached(graphdef, state, tokens, steps: int):
  """Greedy decoding by re-running the full forward pass for every new token."""
  model = nnx.merge(graphdef, state)

  def step(n, tokens):
    logits = model({"decoder_input_tokens": tokens})
    position = PROMPT + n  # the last filled position: BOS + the prompt + n new tokens
    token = jnp.argmax(logits[:, position], axis=-1).astype(tokens.dtype)
    return tokens.at[:, position + 1].set(token)

  return jax.lax.fori_loop(0, steps, step, tokens)


def timed(function, repeats: int = 2) -> float:
  function()  # compile
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(function())
    best = min(best, time.perf_counter() - start)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--new_tokens", type=int, default=256)
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--json", help="also write the results here")
  args = parser.parse_args()
  config = dataclasses.replace(gin_utils.model_config(["models/quickstart_decoder.gin"]),
                               max_length=PROMPT + 1 + args.new_tokens)
  model = create_model(config)
  graphdef, state = nnx.split(model)
  results = []
  for batch in args.batches:
    prompt = np.random.default_rng(0).integers(2, config.vocab_size, (batch, PROMPT))
    cached = timed(lambda: decoding.generate(model, prompt, max_new_tokens=args.new_tokens,
                                             eos_id=-1).tokens)
    buffer = jnp.zeros((batch, PROMPT + 1 + args.new_tokens), jnp.int32)
    buffer = buffer.at[:, 1:PROMPT + 1].set(prompt)
    uncached = timed(lambda: _uncached(graphdef, state, buffer, args.new_tokens), repeats=1)
    row = {"batch": batch, "new_tokens": args.new_tokens,
           "cached_tokens_per_s": batch * args.new_tokens / cached,
           "uncached_tokens_per_s": batch * args.new_tokens / uncached,
           "speedup": uncached / cached}
    results.append(row)
    print(f"batch {batch}: cached {row['cached_tokens_per_s']:,.0f} tok/s, uncached "
          f"{row['uncached_tokens_per_s']:,.0f} tok/s: the cache is {row['speedup']:.1f}x faster",
          flush=True)
  if args.json:
    with open(args.json, "w") as handle:
      json.dump({"device": jax.devices()[0].device_kind, "results": results}, handle, indent=1)


if __name__ == "__main__":
  main()
