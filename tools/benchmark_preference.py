"""DPO steps beside Hugging Face TRL's DPOTrainer (`make bench`), interleaved in one run.

The same Llama-shaped decoder on both sides (the quick-start decoder's shape over a
384-id byte vocabulary: ByT5's tokenizer for TRL, seqio's bytes for us), the same pairs
(random byte strings: prompts and completions of fixed lengths), batch and beta. Ours are
the trainer's own step functions (training/steps.py with the PreferenceOptimization
objective) on the trainer's own pair batches (data/preference.py):

  * cached reference: the reference log-probs read from the batch (what a run does: they
    are computed once, before the first step, training/reference.py);
  * live reference: the reference's scoring pass run beside every step (the design the
    cache replaces; TRL's default);
  * LoRA, cached: rank-8 adapters over the frozen base (a LoRA run's reference is its
    base with the adapters off, also cached).
TRL runs DPOTrainer.train on CPU with its reference model live (precompute_ref_log_probs
False) and precomputed (True, which TRL then does before the first step, untimed). Each
round times `--steps` steps of every variant, one after another; the medians of the
rounds after the first (compilation, TRL's setup) are reported as seconds per step and
as the ratio of TRL's time to ours.

  python tools/benchmark_preference.py [--pairs 8] [--prompt 64] [--completion 64]
      [--rounds 4] [--steps 5]
"""

from __future__ import annotations

import copy
import os
import statistics
import time

import bench_cli
import jax
import numpy as np
import optax

from t5x_lite import gin_utils
from t5x_lite.common import partitioning
from t5x_lite.data import preference
from t5x_lite.models import create_model
from t5x_lite.models.lora import LoraConfig, adapt
from t5x_lite.runs.spec import PreferenceConfig
from t5x_lite.training import objectives
from t5x_lite.training import steps as step_functions

BYTES = 384
BETA = 0.1


def model_config():
  return gin_utils.model_config(["models/quickstart_decoder.gin"]).replace(
      vocab_size=BYTES, tie_embeddings=False)


def pairs(count: int, prompt: int, completion: int) -> list[preference.TokenizedPair]:
  rng = np.random.default_rng(0)
  make = lambda n: tuple(int(t) for t in rng.integers(3, 259, n - 1)) + (1,)  # noqa: E731
  return [preference.TokenizedPair(make(prompt), make(completion), make(completion))
          for _ in range(count)]


def ours(args) -> dict:
  """{variant: one timed step} on the trainer's step functions."""
  config = model_config()
  mesh = partitioning.create_mesh((1, 1, 1, 1), partitioning.single_device())
  lengths = {"inputs": args.prompt, "targets": args.completion}
  batch = next(preference.get_pair_batches(pairs(args.pairs, args.prompt, args.completion),
                                           lengths, "train", args.pairs, "causal_decoder",
                                           shuffle=False))
  batch.pop(preference.PAIR_INDEX)
  objective = objectives.PreferenceOptimization(PreferenceConfig(beta=BETA))
  tx = optax.adamw(1e-5)
  full = step_functions.make_step_functions(config, tx, mesh, objective=objective)
  state = full.init()
  # A run's reference log-probs: the starting model's score of each row, in row order.
  scored = jax.device_get(full.score(state, partitioning.global_batch(batch, mesh)))
  cached = dict(batch, **{objectives.REFERENCE_FEATURE: np.asarray(scored)})
  cached = partitioning.global_batch(cached, mesh)
  plain = partitioning.global_batch(batch, mesh)
  reference = full.init()  # a second model's state: the live reference
  adapted = adapt(create_model(config), LoraConfig(rank=8, alpha=16.0))
  lora = step_functions.make_step_functions(config, tx, mesh, objective=objective,
                                            adapted=adapted)
  lora_state = lora.init()
  holder = {"full": state, "lora": lora_state}

  def cached_step():
    holder["full"], stats = full.train(holder["full"], cached)
    jax.block_until_ready(stats)

  def live_step():
    jax.block_until_ready(full.score(reference, plain))
    cached_step()

  def lora_step():
    holder["lora"], stats = lora.train(holder["lora"], cached)
    jax.block_until_ready(stats)

  return {"t5x_lite, cached reference": cached_step, "t5x_lite, live reference": live_step,
          "t5x_lite LoRA r8, cached reference": lora_step}


def trl_steps(args, precompute: bool):
  """One round of `args.steps` TRL DPO steps (a fresh DPOTrainer.train call; the model
  keeps training across rounds) and its seconds per step, from TRL's own step callbacks."""
  import datasets  # noqa: PLC0415  (the peer's stack, imported only to measure it)
  import torch  # noqa: PLC0415
  import transformers  # noqa: PLC0415
  import trl  # noqa: PLC0415

  torch.set_num_threads(len(os.sched_getaffinity(0)))  # every core, as XLA uses
  config = model_config()
  llama = transformers.LlamaConfig(
      vocab_size=BYTES, hidden_size=config.d_model, intermediate_size=config.d_ff,
      num_hidden_layers=config.num_decoder_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_heads, head_dim=config.head_dim,
      max_position_embeddings=args.prompt + args.completion, tie_word_embeddings=False)
  tokenizer = transformers.ByT5Tokenizer()
  rng = np.random.default_rng(0)
  text = lambda n: "".join(chr(c) for c in rng.integers(97, 123, n - 1))  # noqa: E731
  rows = [{"prompt": text(args.prompt), "chosen": text(args.completion),
           "rejected": text(args.completion)}
          for _ in range(args.pairs * args.steps * (args.rounds + 1))]
  dataset = datasets.Dataset.from_list(rows)
  model = transformers.LlamaForCausalLM(llama)
  reference = copy.deepcopy(model).eval()  # the starting model, as ours
  times: list[float] = []

  class Clock(transformers.TrainerCallback):
    def on_step_begin(self, *_, **__):
      self.start = time.perf_counter()

    def on_step_end(self, *_, **__):
      times.append(time.perf_counter() - self.start)

  def run_round() -> float:
    del times[:]
    dpo = trl.DPOConfig(
        output_dir="/tmp/benchmark_preference_trl", per_device_train_batch_size=args.pairs,
        max_steps=args.steps, beta=BETA, learning_rate=1e-5, max_length=4 * (
            args.prompt + args.completion), precompute_ref_log_probs=precompute,
        use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True)
    trainer = trl.DPOTrainer(model=model, ref_model=reference, args=dpo, train_dataset=dataset,
                             processing_class=tokenizer, callbacks=[Clock()])
    trainer.train()
    return statistics.median(times)
  return run_round


def main(argv=None) -> None:
  parser = bench_cli.parser(__doc__)
  parser.add_argument("--pairs", type=int, default=8)
  parser.add_argument("--prompt", type=int, default=64)
  parser.add_argument("--completion", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args(argv)
  variants = {name: (lambda step=step: _timed(step, args.steps))
              for name, step in ours(args).items()}
  variants["TRL DPOTrainer, live reference"] = trl_steps(args, precompute=False)
  variants["TRL DPOTrainer, precomputed reference"] = trl_steps(args, precompute=True)
  times: dict[str, list[float]] = {name: [] for name in variants}
  for round_index in range(args.rounds + 1):
    for name, run_round in variants.items():
      seconds = run_round()
      if round_index:  # the first round compiles (ours) and sets up (TRL)
        times[name].append(seconds)
  medians = {name: statistics.median(values) for name, values in times.items()}
  tokens = 2 * args.pairs * (args.prompt + args.completion)
  print(f"DPO step, {args.pairs} pairs of {args.prompt} + {args.completion} tokens, "
        f"quick-start decoder shape over bytes, {args.rounds} rounds of {args.steps} steps:")
  results = []
  for name, seconds in medians.items():
    row = {"run": name, "step_seconds": seconds, "tokens_per_second": tokens / seconds}
    results.append(row)
    print(f"  {name:40s} {seconds * 1e3:8.1f} ms/step  {tokens / seconds:9,.0f} tokens/s")
  for ours_name, peer in (("t5x_lite, live reference", "TRL DPOTrainer, live reference"),
                          ("t5x_lite, cached reference",
                           "TRL DPOTrainer, precomputed reference")):
    ratio = medians[peer] / medians[ours_name]
    print(f"  {peer} / {ours_name}: {ratio:.2f}x")
    results.append({"run": f"ratio {peer} / {ours_name}", "ratio": ratio})
  bench_cli.write_json(args.json, results)


def _timed(step, count: int) -> float:
  """Median seconds of `count` calls of `step`."""
  seconds = []
  for _ in range(count):
    start = time.perf_counter()
    step()
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


if __name__ == "__main__":
  main()
