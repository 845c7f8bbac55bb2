"""DPO and GRPO steps beside Hugging Face TRL's DPOTrainer and GRPOTrainer (`make bench`),
interleaved in one run.

The same Llama-shaped decoder on both sides (the quick-start decoder's shape over a
384-id byte vocabulary: ByT5's tokenizer for TRL, seqio's bytes for us), the same pairs
(random byte strings: prompts and completions of fixed lengths), batch and beta. Ours are
the trainer's own step functions (training/steps.py with the PreferenceOptimization
objective) on the trainer's own pair batches (data/preference.py):

  * cached reference: the reference log-probs read from the batch (what a run does: they
    are computed once, before the first step, training/reference.py);
  * live reference: the reference's scoring pass run beside every step (the design the
    cache replaces; TRL's default), its parameters held throughout;
  * LoRA, cached: rank-8 adapters over the frozen base (a LoRA run's reference is its
    base with the adapters off, also cached).
TRL runs DPOTrainer.train on CPU with its reference model live (precompute_ref_log_probs
False) and precomputed (True, which TRL then does before the first step, untimed). Each
round times `--steps` steps of every variant, one after another; the medians of the
rounds after the first (compilation, TRL's setup) are reported as seconds per step and
as the ratio of TRL's time to ours, with the bytes each of ours holds besides activations
(parameters and AdamW state, LoRA's frozen base, a live reference's parameters).

GRPO: `--grpo_prompts` prompts x `--group` samples of up to `--new_tokens` tokens per step
(temperature 1, KL penalty 0.04, exact-match reward), split into sampling (ours: the
KV-cache sampler of inference/decoding.py; TRL: transformers' generate, timed around
the call) and the rest (rewards, the log-probs under the sampling policy and the
reference, the training step).

  python tools/benchmark_preference.py [--pairs 8] [--prompt 64] [--completion 64]
      [--rounds 4] [--steps 5] [--grpo_prompts 4] [--group 8] [--new_tokens 16]
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time

import bench_cli
import jax
import numpy as np
import optax

from t5x_lite import gin_utils
from t5x_lite.alignment import rewards, rollouts
from t5x_lite.common import partitioning
from t5x_lite.data import preference, vocabularies
from t5x_lite.models import create_model
from t5x_lite.models.lora import LoraConfig, adapt
from t5x_lite.runs.spec import PreferenceConfig, RLConfig
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

  # What each variant holds besides activations: trained state (params and AdamW), the
  # frozen base (LoRA) and the reference's parameters (live only).
  state_bytes = _bytes(state)
  held = {"t5x_lite, cached reference": state_bytes,
          "t5x_lite, live reference": state_bytes + _bytes(reference["params"]),
          "t5x_lite LoRA r8, cached reference": _bytes(lora_state) + _bytes(adapted.base)}
  steps = {"t5x_lite, cached reference": cached_step, "t5x_lite, live reference": live_step,
           "t5x_lite LoRA r8, cached reference": lora_step}
  return steps, held


def _bytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, "nbytes"))


def _llama_config(length: int):
  """transformers' Llama with our model's shape."""
  import transformers  # noqa: PLC0415  (the peer's stack, imported only to measure it)

  config = model_config()
  return transformers.LlamaConfig(
      vocab_size=BYTES, hidden_size=config.d_model, intermediate_size=config.d_ff,
      num_hidden_layers=config.num_decoder_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_heads, head_dim=config.head_dim,
      max_position_embeddings=length, tie_word_embeddings=False)


def trl_steps(args, precompute: bool):
  """One round of `args.steps` TRL DPO steps (a fresh DPOTrainer.train call; the model
  keeps training across rounds) and its seconds per step, from TRL's own step callbacks."""
  import datasets  # noqa: PLC0415  (the peer's stack, imported only to measure it)
  import transformers  # noqa: PLC0415
  import trl  # noqa: PLC0415

  llama = _llama_config(args.prompt + args.completion)
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



def our_grpo(args):
  """One GRPO step of ours: a rollout (sampling, then scoring: rewards, advantages, the
  sampling policy's and the reference's log-probs) and the training step on it, as an
  RL run makes them (alignment/rollouts.py, training/steps.py); (sampling, rest) seconds."""
  config = model_config()
  mesh = partitioning.create_mesh((1, 1, 1, 1), partitioning.single_device())
  rl = RLConfig(group_size=args.group, max_new_tokens=args.new_tokens, kl_beta=0.04)
  objective = objectives.PolicyGradient(rl.clip_epsilon, rl.kl_beta, rl.kl_estimator)
  steps = step_functions.make_step_functions(config, optax.adamw(1e-5), mesh,
                                             objective=objective)
  holder = {"state": steps.init()}
  reference = create_model(config)
  vocabulary = vocabularies.byte_vocabulary()
  prompts, answers = _grpo_prompts(args)
  lengths = {"inputs": args.prompt + 1, "targets": args.new_tokens + 1}
  calls = [0]

  def step() -> tuple[float, float]:
    calls[0] += 1
    start = time.perf_counter()
    made = rollouts.rollout(steps.model(holder["state"]["params"]), reference, prompts,
                            answers, rewards.exact_match, vocabulary, lengths, rl,
                            seed=calls[0])
    holder["state"], stats = steps.train(holder["state"],
                                         partitioning.global_batch(made.features, mesh))
    jax.block_until_ready(stats)
    sampling = made.stats["sampling_seconds"]
    return sampling, time.perf_counter() - start - sampling
  return step


def _grpo_prompts(args) -> tuple[list[str], list[str]]:
  rng = np.random.default_rng(1)
  prompts = ["".join(chr(c) for c in rng.integers(97, 123, args.prompt))
             for _ in range(args.grpo_prompts)]
  return prompts, ["x"] * len(prompts)


def trl_grpo(args):
  """One round of TRL GRPO steps and its median (sampling, rest) seconds per step: the
  policy's generate is timed apart from the rest of TRL's step."""
  import datasets  # noqa: PLC0415  (the peer's stack, imported only to measure it)
  import transformers  # noqa: PLC0415
  import trl  # noqa: PLC0415

  # GRPOTrainer builds its reference from the policy's path: both load from here.
  path = tempfile.mkdtemp(prefix="benchmark_preference_")
  transformers.LlamaForCausalLM(_llama_config(args.prompt + args.new_tokens + 2)
                                ).save_pretrained(path)
  transformers.ByT5Tokenizer().save_pretrained(path)
  prompts, _ = _grpo_prompts(args)
  dataset = datasets.Dataset.from_list(
      [{"prompt": p} for p in prompts * (args.steps * (args.rounds + 1))])
  sampling: list[float] = []
  totals: list[float] = []

  def timed(generate):
    def timed_generate(*a, **k):
      start = time.perf_counter()
      out = generate(*a, **k)
      sampling.append(time.perf_counter() - start)
      return out
    return timed_generate

  class Clock(transformers.TrainerCallback):
    def on_step_begin(self, *_, **__):
      self.start = time.perf_counter()

    def on_step_end(self, *_, **__):
      totals.append(time.perf_counter() - self.start)

  def exact_match(completions, **_):
    return [float(c.strip() == "x") for c in completions]

  def run_round() -> tuple[float, float]:
    del sampling[:], totals[:]
    config = trl.GRPOConfig(
        output_dir="/tmp/benchmark_preference_trl", per_device_train_batch_size=(
            args.grpo_prompts * args.group), num_generations=args.group,
        max_completion_length=args.new_tokens, temperature=1.0, beta=0.04,
        learning_rate=1e-5, max_steps=args.steps, use_cpu=True, report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=True)
    trainer = trl.GRPOTrainer(model=path, reward_funcs=exact_match, args=config,
                              train_dataset=dataset, callbacks=[Clock()],
                              processing_class=transformers.ByT5Tokenizer())
    trainer.model.generate = timed(trainer.model.generate)
    trainer.train()
    # A step may generate in several calls; its sampling is their sum.
    per_step = sum(sampling) / max(len(totals), 1)
    return per_step, statistics.median(totals) - per_step
  return run_round


def main(argv=None) -> None:
  parser = bench_cli.parser(__doc__)
  parser.add_argument("--pairs", type=int, default=8)
  parser.add_argument("--prompt", type=int, default=64)
  parser.add_argument("--completion", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=4)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--grpo_prompts", type=int, default=4)
  parser.add_argument("--group", type=int, default=8)
  parser.add_argument("--new_tokens", type=int, default=16)
  args = parser.parse_args(argv)
  import torch  # noqa: PLC0415  (the peer's stack, imported only to measure it)
  torch.set_num_threads(len(os.sched_getaffinity(0)))  # every core, as XLA uses
  our_steps, held = ours(args)
  variants = {name: (lambda step=step: _timed(step, args.steps))
              for name, step in our_steps.items()}
  variants["TRL DPOTrainer, live reference"] = trl_steps(args, precompute=False)
  variants["TRL DPOTrainer, precomputed reference"] = trl_steps(args, precompute=True)
  grpo_step = our_grpo(args)
  variants["t5x_lite GRPO"] = lambda: _split(grpo_step, args.steps)
  variants["TRL GRPOTrainer"] = trl_grpo(args)
  times: dict[str, list] = {name: [] for name in variants}
  for round_index in range(args.rounds + 1):
    for name, run_round in variants.items():
      seconds = run_round()
      if round_index:  # the first round compiles (ours) and sets up (TRL)
        times[name].append(seconds)
  results = []
  tokens = 2 * args.pairs * (args.prompt + args.completion)
  print(f"DPO step, {args.pairs} pairs of {args.prompt} + {args.completion} tokens, "
        f"quick-start decoder shape over bytes, {args.rounds} rounds of {args.steps} steps:")
  medians = {}
  for name, values in times.items():
    if "GRPO" in name:
      continue
    medians[name] = seconds = statistics.median(values)
    results.append({"run": name, "step_seconds": seconds, "tokens_per_second": tokens / seconds,
                    "state_bytes": held.get(name)})
    memory = (f"  holds {held[name] / 2**20:6.1f} MiB (state, frozen base, reference)"
              if name in held else "")
    print(f"  {name:40s} {seconds * 1e3:8.1f} ms/step  {tokens / seconds:9,.0f} tokens/s"
          + memory)
  for ours_name, peer in (("t5x_lite, live reference", "TRL DPOTrainer, live reference"),
                          ("t5x_lite, cached reference",
                           "TRL DPOTrainer, precomputed reference")):
    ratio = medians[peer] / medians[ours_name]
    print(f"  {peer} / {ours_name}: {ratio:.2f}x")
    results.append({"run": f"ratio {peer} / {ours_name}", "ratio": ratio})
  print(f"GRPO step, {args.grpo_prompts} prompts of {args.prompt} tokens x {args.group} "
        f"samples of up to {args.new_tokens} tokens:")
  for name in ("t5x_lite GRPO", "TRL GRPOTrainer"):
    sampling = statistics.median(s for s, _ in times[name])
    rest = statistics.median(r for _, r in times[name])
    medians[name] = sampling + rest
    results.append({"run": name, "sampling_seconds": sampling, "training_seconds": rest})
    print(f"  {name:40s} sampling {sampling * 1e3:8.1f} ms + scoring and training "
          f"{rest * 1e3:8.1f} ms = {(sampling + rest) * 1e3:8.1f} ms/step")
  ratio = medians["TRL GRPOTrainer"] / medians["t5x_lite GRPO"]
  print(f"  TRL GRPOTrainer / t5x_lite GRPO: {ratio:.2f}x")
  results.append({"run": "ratio TRL GRPOTrainer / t5x_lite GRPO", "ratio": ratio})
  bench_cli.write_json(args.json, results)


def _split(step, count: int) -> tuple[float, float]:
  """Median (sampling, rest) seconds of `count` GRPO steps."""
  measured = [step() for _ in range(count)]
  return (statistics.median(s for s, _ in measured), statistics.median(r for _, r in measured))


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
