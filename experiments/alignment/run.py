"""Learning from preferences and rewards, measured on two-digit addition (CPU scale).

  python experiments/alignment/run.py [--work_dir /tmp/t5x_lite_alignment] [--quick]

Every stage is the `python -m t5x_lite.train` command a user runs (gin/runs/*.gin), on
a small byte-level causal decoder; runs resume, so a stopped study picks up where it was.

1. SFT: the model learns "a+b=" -> the sum from scratch on 4,000 of the 8,100 two-digit
   sums, stopped while it still gets a fair share of the 200 held-out sums wrong
   (the room alignment needs to show).
2. Preference pairs, on-policy: for each training prompt the SFT model samples 4
   answers; chosen is the sum, rejected the first wrong sample (else a scripted error:
   off by one or ten, or the carry dropped, as data/addition.py makes them).
3. A reward model (gin/runs/reward_model.gin: scalar head, Bradley-Terry) on those
   pairs: held-out pairwise accuracy.
4. DPO (gin/runs/dpo.gin) at several betas, and RPO (DPO plus the chosen answers' NLL,
   preference.sft_weight): each run's KL to the SFT reference on its own samples
   (logged at every evaluation, preference.kl_prompts) against its greedy accuracy on
   the held-out sums and its win rate over the reference (sampled answers, judged by
   exact match); beside them the control, SFT continued on the chosen answers alone.
5. GRPO (gin/runs/grpo.gin, exact-match reward, 16 prompts x 8 samples) and PPO
   (gin/runs/ppo.gin: a value head and GAE, 32 prompts x 4) from the same SFT model, the
   same 128 sampled answers per step: held-out greedy accuracy and the sampled reward
   along training, KL to the reference at the end.

Writes results.json, results.md and alignment.png here (--quick: a smoke run into the
work directory only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from t5x_lite.common import files  # noqa: E402
from t5x_lite.data import vocabularies  # noqa: E402
from t5x_lite.inference import alignment_eval, decoding, textio  # noqa: E402
from t5x_lite.runs import loading  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VOCABULARY = vocabularies.byte_vocabulary()
LENGTHS = "{'inputs': 8, 'targets': 8}"
MODEL = ["TransformerConfig.d_model = 128", "TransformerConfig.num_decoder_layers = 4",
         "TransformerConfig.num_heads = 4", "TransformerConfig.num_kv_heads = 4",
         "TransformerConfig.d_ff = 512", "TransformerConfig.embedding_init_std = 1.0"]
COMMON = ["train.eval_steps = 2", "train.peak_flops_per_device = 1e11",
          "train.checkpoint_every = 100000"]
TRAIN_PROMPTS, HELDOUT = 4000, 200
SAMPLES_PER_PROMPT = 4
# (beta, sft_weight): DPO at three betas, and RPO (DPO plus the chosen answers' NLL).
DPO_RUNS = ((0.1, 0.0), (0.3, 0.0), (1.0, 0.0), (0.1, 1.0), (1.0, 1.0))
DPO_LEARNING_RATE = 1e-4
RL_COLORS = {"grpo": "tab:green", "ppo": "tab:red"}


class Scale:
  def __init__(self, quick: bool):
    self.sft_steps = 40 if quick else 400
    self.rm_steps = 20 if quick else 2400
    self.dpo_steps = 10 if quick else 200
    self.rl_steps = 6 if quick else 240
    self.dpo = DPO_RUNS[3:4] if quick else DPO_RUNS
    self.heldout = 40 if quick else HELDOUT


def sums() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
  """(training, held-out) operand pairs: a fixed draw from all two-digit sums."""
  everything = [(a, b) for a in range(10, 100) for b in range(10, 100)]
  order = np.random.default_rng(0).permutation(len(everything))
  chosen = [everything[i] for i in order]
  return chosen[HELDOUT:HELDOUT + TRAIN_PROMPTS], chosen[:HELDOUT]


def prompt(a: int, b: int) -> str:
  return f"{a}+{b}="


def scripted_error(a: int, b: int, rng: np.random.Generator) -> str:
  """One of the errors data/addition.py offers as distractors."""
  total = a + b
  carry_dropped = (a // 10 + b // 10) * 10 + (a % 10 + b % 10) % 10
  options = [total + 1, total - 1, total + 10, total - 10]
  if carry_dropped != total:
    options.append(carry_dropped)
  return str(int(rng.choice(options)))


def write_text(path: str, text: str) -> None:
  with files.atomic_write(path) as handle:
    handle.write(text)


def write_rows(path: str, rows: list[dict]) -> None:
  write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def train(work_dir: str, name: str, gin_files: list[str], bindings: list[str]) -> str:
  """Runs (or resumes) one training command; its output goes to <run>/train.log."""
  model_dir = os.path.join(work_dir, name)
  os.makedirs(model_dir, exist_ok=True)
  command = [sys.executable, "-m", "t5x_lite.train",
             *[f"--gin_file={f}" for f in gin_files],
             *[f"--gin.{b}" for b in [f"MODEL_DIR = '{model_dir}'", *MODEL, *COMMON,
                                      *bindings]]]
  print(f"== {name}", flush=True)
  with open(os.path.join(model_dir, "train.log"), "a") as log:
    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
  if done.returncode:
    raise RuntimeError(f"{name} failed (exit {done.returncode}); see {model_dir}/train.log")
  return model_dir


def metrics(model_dir: str, split: str) -> list[dict]:
  with open(os.path.join(model_dir, "metrics.jsonl")) as handle:
    return [r for r in map(json.loads, handle) if r["split"] == split]


def encode_prompts(pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
  return [list(VOCABULARY.encode(prompt(a, b))) + [VOCABULARY.eos_id] for a, b in pairs]


def answers(model, pairs: Sequence[tuple[int, int]], temperature: float = 0.0,
            seed: int = 0) -> list[str]:
  """The model's answer to each sum (greedy unless a temperature is given)."""
  out = decoding.generate(model, textio.padded(encode_prompts(pairs)), max_new_tokens=5,
                          temperature=temperature, seed=seed, eos_id=VOCABULARY.eos_id)
  eos = VOCABULARY.eos_id
  return [VOCABULARY.decode([t for t in (row[:row.index(eos)] if eos in row else row) if t])
          for row in out.tokens.tolist()]


def accuracy(model, pairs) -> float:
  return float(np.mean([text.strip() == str(a + b) for text, (a, b) in
                        zip(answers(model, pairs), pairs)]))


def data_files(work_dir: str, sft_dir: str, train_pairs, heldout) -> dict[str, str]:
  """Supervised rows, and preference pairs from the SFT model's own samples."""
  paths = {name: os.path.join(work_dir, f"{name}.jsonl") for name in
           ("sft_train", "sft_validation", "pairs_train", "pairs_validation")}
  if not os.path.exists(paths["sft_train"]):
    for name, chosen in (("sft_train", train_pairs), ("sft_validation", heldout)):
      write_rows(paths[name], [{"inputs": prompt(a, b), "targets": str(a + b)}
                               for a, b in chosen])
  if sft_dir and not os.path.exists(paths["pairs_train"]):
    model = loading.load_model(sft_dir)
    rng = np.random.default_rng(1)
    for name, chosen in (("pairs_train", train_pairs), ("pairs_validation", heldout)):
      samples = [answers(model, chosen, temperature=1.0, seed=seed)
                 for seed in range(SAMPLES_PER_PROMPT)]
      rows, own = [], 0
      for i, (a, b) in enumerate(chosen):
        wrong = [s[i].strip() for s in samples if s[i].strip() != str(a + b) and s[i].strip()]
        own += bool(wrong)
        rows.append({"prompt": prompt(a, b), "chosen": str(a + b),
                     "rejected": wrong[0] if wrong else scripted_error(a, b, rng)})
      write_rows(paths[name], rows)
      print(f"{name}: {len(rows)} pairs, {own} with the SFT model's own wrong answer",
            flush=True)
  return paths


def judge_for(pairs):
  wanted = {prompt(a, b): str(a + b) for a, b in pairs}
  return lambda prompts, completions: np.array(
      [float(c.strip() == wanted[p]) for p, c in zip(prompts, completions)])


def study(work_dir: str, scale: Scale) -> dict:
  train_pairs, heldout = sums()
  heldout = heldout[:scale.heldout]
  paths = data_files(work_dir, "", train_pairs, heldout)
  supervised = [f"supervised_data.train = ['{paths['sft_train']}']",
                f"supervised_data.validation = ['{paths['sft_validation']}']"]
  sft = train(work_dir, "sft", ["runs/pretrain.gin", "models/tiny_causal_decoder.gin",
                                "meshes/single_device.gin"],
              ["MIXTURE_OR_TASK_NAME = 'supervised.byte'", f"TASK_FEATURE_LENGTHS = {LENGTHS}",
               "BATCH_SIZE = 64", f"TRAIN_STEPS = {scale.sft_steps}", "WARMUP_STEPS = 50",
               "LEARNING_RATE = 3e-3", "train.eval_every = 250", *supervised,
               "train.checkpoint_every = 250", "train.keep_checkpoints = 10"])
  paths = data_files(work_dir, sft, train_pairs, heldout)
  reference = loading.load_model(sft)
  results: dict = {"sft": {"heldout_accuracy": accuracy(reference, heldout),
                           "steps": scale.sft_steps}}
  print(f"SFT: held-out accuracy {results['sft']['heldout_accuracy']:.3f}", flush=True)
  pairs = [f"preference_data.train = ['{paths['pairs_train']}']",
           f"preference_data.validation = ['{paths['pairs_validation']}']",
           "MIXTURE_OR_TASK_NAME = 'preference.byte'", f"TASK_FEATURE_LENGTHS = {LENGTHS}",
           f"CHECKPOINT_PATH = '{sft}'"]
  finetune = ["runs/finetune.gin", "models/tiny_causal_decoder.gin",
              "meshes/single_device.gin"]

  rm = train(work_dir, "reward_model", ["runs/reward_model.gin", *finetune[1:]],
             [*pairs, "BATCH_SIZE = 32", f"TRAIN_STEPS = {scale.rm_steps}",
              "WARMUP_STEPS = 20", "LEARNING_RATE = 3e-4",
              f"train.eval_every = {max(scale.rm_steps // 8, 1)}",
              "train.eval_steps = 7"])  # every held-out pair
  results["reward_model"] = {"curve": [(r["step"], r["accuracy"]) for r in metrics(rm, "eval")]}
  results["reward_model"]["heldout_pairwise_accuracy"] = results["reward_model"]["curve"][-1][1]
  print(f"reward model: held-out pairwise accuracy "
        f"{results['reward_model']['heldout_pairwise_accuracy']:.3f}", flush=True)

  judge = judge_for(heldout)
  heldout_prompts = [prompt(a, b) for a, b in heldout]
  # The control: the SFT model trained on as many chosen answers (the correct sums) with
  # the same optimizer, no preference at all; an undertrained model gains from that alone.
  more = train(work_dir, "sft_continued", finetune,
               ["MIXTURE_OR_TASK_NAME = 'supervised.byte'", f"TASK_FEATURE_LENGTHS = {LENGTHS}",
                *supervised, f"CHECKPOINT_PATH = '{sft}'", "BATCH_SIZE = 32",
                f"TRAIN_STEPS = {scale.dpo_steps}", "WARMUP_STEPS = 10",
                f"LEARNING_RATE = {DPO_LEARNING_RATE}",
                f"train.eval_every = {max(scale.dpo_steps // 5, 1)}"])
  results["sft_continued"] = {"heldout_accuracy": accuracy(loading.load_model(more), heldout),
                              "steps": scale.dpo_steps}
  results["dpo"] = []
  for beta, sft_weight in scale.dpo:
    name = f"{'rpo' if sft_weight else 'dpo'}_beta{beta:g}"
    model_dir = train(work_dir, name, ["runs/dpo.gin", *finetune[1:]],
                      [*pairs, "BATCH_SIZE = 32", f"TRAIN_STEPS = {scale.dpo_steps}",
                       "WARMUP_STEPS = 10", f"LEARNING_RATE = {DPO_LEARNING_RATE}",
                       f"preference.beta = {beta}", f"preference.sft_weight = {sft_weight}",
                       f"train.eval_every = {max(scale.dpo_steps // 5, 1)}",
                       "preference.kl_prompts = 64", "preference.kl_max_new_tokens = 5"])
    policy = loading.load_model(model_dir)
    compared = alignment_eval.compare_policies(policy, reference, heldout_prompts, judge,
                                               VOCABULARY, max_new_tokens=5, seed=1)
    evals = metrics(model_dir, "eval")
    row = {"run": name, "beta": beta, "sft_weight": sft_weight, "kl": compared.kl,
           "kl_stderr": compared.kl_stderr, "win_rate": compared.win_rate,
           "heldout_accuracy": accuracy(policy, heldout),
           "reward_accuracy": evals[-1]["rewards/accuracies"],
           "chosen_reward": evals[-1]["rewards/chosen"],
           "kl_curve": [(r["step"], r["kl"]) for r in evals]}
    results["dpo"].append(row)
    print(f"{name}: KL {row['kl']:.3f}, win rate {row['win_rate']:.3f}, held-out "
          f"accuracy {row['heldout_accuracy']:.3f}", flush=True)

  results["rl"] = {}
  for algorithm in ("grpo", "ppo"):
    # The same 128 sampled completions per step: GRPO 16 prompts x 8, PPO 32 x 4.
    prompts_per_step = 16 if algorithm == "grpo" else 32
    model_dir = train(work_dir, algorithm, [f"runs/{algorithm}.gin", *finetune[1:]],
                      ["MIXTURE_OR_TASK_NAME = 'supervised.byte'",
                       f"TASK_FEATURE_LENGTHS = {LENGTHS}", *supervised,
                       f"CHECKPOINT_PATH = '{sft}'", f"BATCH_SIZE = {prompts_per_step}",
                       f"TRAIN_STEPS = {scale.rl_steps}", "WARMUP_STEPS = 5",
                       "LEARNING_RATE = 1e-4", "rl.max_new_tokens = 5",
                       f"rl.eval_prompts = {scale.heldout}",
                       f"train.eval_every = {max(scale.rl_steps // 6, 1)}"])
    policy = loading.load_model(model_dir)
    compared = alignment_eval.compare_policies(policy, reference, heldout_prompts, judge,
                                               VOCABULARY, max_new_tokens=5, seed=1)
    evals = metrics(model_dir, "eval")
    train_rows = metrics(model_dir, "train")
    results["rl"][algorithm] = {
        "heldout_accuracy": accuracy(policy, heldout), "kl": compared.kl,
        "win_rate": compared.win_rate,
        "solved_curve": [(r["step"], r["solved"]) for r in evals],
        "reward_curve": [(r["step"], r["reward"]) for r in train_rows if "reward" in r]}
    print(f"{algorithm.upper()}: held-out accuracy "
          f"{results['rl'][algorithm]['heldout_accuracy']:.3f}, KL {compared.kl:.3f}",
          flush=True)
  return results


def report(results: dict, output_dir: str) -> str:
  sft = results["sft"]["heldout_accuracy"]
  lines = ["| model | held-out accuracy (greedy) | KL to SFT (nats per answer) | "
           "win rate vs SFT (sampled) |", "|---|---|---|---|",
           f"| SFT ({results['sft']['steps']} steps) | {sft:.3f} | 0 | 0.5 |",
           f"| SFT continued ({results['sft_continued']['steps']} steps on the chosen "
           f"answers) | {results['sft_continued']['heldout_accuracy']:.3f} | | |"]
  for row in results["dpo"]:
    name = (f"RPO (DPO + chosen NLL x {row['sft_weight']:g}) beta {row['beta']:g}"
            if row["sft_weight"] else f"DPO beta {row['beta']:g}")
    lines.append(f"| {name} | {row['heldout_accuracy']:.3f} | "
                 f"{row['kl']:.3f} +- {row['kl_stderr']:.3f} | {row['win_rate']:.3f} |")
  for algorithm, row in results["rl"].items():
    lines.append(f"| {algorithm.upper()} | {row['heldout_accuracy']:.3f} | {row['kl']:.3f} | "
                 f"{row['win_rate']:.3f} |")
  lines += ["", f"Reward model: held-out pairwise accuracy "
                f"{results['reward_model']['heldout_pairwise_accuracy']:.3f}."]
  text = "\n".join(lines) + "\n"
  write_text(os.path.join(output_dir, "results.md"), text)
  write_text(os.path.join(output_dir, "results.json"), json.dumps(results, indent=1) + "\n")
  plot(results, os.path.join(output_dir, "alignment.png"))
  return text


def plot(results: dict, path: str) -> None:
  import matplotlib  # noqa: PLC0415  (plots only)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
  steps, accuracy_rm = zip(*results["reward_model"]["curve"])
  axes[0].plot(steps, accuracy_rm, marker="o")
  axes[0].axhline(0.5, color="grey", lw=0.5)
  axes[0].set(title="reward model: held-out pairwise accuracy", xlabel="step",
              ylabel="accuracy", ylim=(0.4, 1.02))
  sft = results["sft"]["heldout_accuracy"]
  for label, rows, marker, color in (
      ("DPO", [r for r in results["dpo"] if not r["sft_weight"]], "o", "tab:blue"),
      ("RPO (DPO + NLL)", [r for r in results["dpo"] if r["sft_weight"]], "^", "tab:orange")):
    axes[1].errorbar([r["kl"] for r in rows], [r["heldout_accuracy"] for r in rows],
                     xerr=[r["kl_stderr"] for r in rows], marker=marker, ls="", label=label,
                     color=color)
    for r in rows:
      axes[1].annotate(f"beta {r['beta']:g}", (r["kl"], r["heldout_accuracy"]), fontsize=8)
  for algorithm, r in results["rl"].items():
    axes[1].scatter([r["kl"]], [r["heldout_accuracy"]], marker="s", label=algorithm.upper(),
                    color=RL_COLORS[algorithm])
  axes[1].axhline(sft, color="grey", ls="--", label="SFT")
  axes[1].axhline(results["sft_continued"]["heldout_accuracy"], color="grey", ls=":",
                  label="SFT continued")
  axes[1].set(title="held-out accuracy vs KL to SFT", xlabel="KL(policy || SFT), nats "
              "per answer", ylabel="greedy accuracy (200 held-out sums)")
  axes[1].legend(fontsize=8)
  for algorithm, r in results["rl"].items():
    if r["solved_curve"]:
      steps, solved = zip(*r["solved_curve"])
      axes[2].plot(steps, solved, marker="o", label=f"{algorithm.upper()}: greedy, held out",
                   color=RL_COLORS[algorithm])
    if r["reward_curve"]:
      steps, reward = zip(*r["reward_curve"])
      axes[2].plot(steps, reward, alpha=0.35, label=f"{algorithm.upper()}: sampled reward",
                   color=RL_COLORS[algorithm])
  axes[2].axhline(sft, color="grey", ls="--", label="SFT (greedy)")
  axes[2].set(title="on-policy RL (exact-match reward)", xlabel="step", ylabel="accuracy")
  axes[2].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--work_dir", default="/tmp/t5x_lite_alignment")
  parser.add_argument("--quick", action="store_true", help="a smoke run (minutes)")
  parser.add_argument("--report_only", action="store_true",
                      help="rebuild results.md and the plot from results.json")
  return parser.parse_args(argv)


def main() -> None:
  args = parse_args()
  os.makedirs(args.work_dir, exist_ok=True)
  if args.report_only:
    with open(os.path.join(HERE, "results.json")) as handle:
      results = json.load(handle)
  else:
    results = study(args.work_dir, Scale(args.quick))
  print(report(results, args.work_dir if args.quick else HERE))


if __name__ == "__main__":
  main()
