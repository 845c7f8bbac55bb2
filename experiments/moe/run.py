"""Dense vs mixture-of-experts at equal training FLOPs on this CPU.

Every model is the quick-start decoder (gin/models/quickstart_decoder.gin: 4 layers,
d_model 256, SwiGLU, 8k-piece vocabulary) trained on the embedded pydocs corpus for the
same steps and batch; every MoE model routes each token through feed-forward weights of
the dense model's size (704 hidden units), so all runs cost the same FLOPs per token
(plus the router's, 0.3%):
  dense            d_ff 704
  top2_e4/8/16     E experts of 352, top-2 (Mixtral's gates), capacity factor 1.25
  top1_e8          8 experts of 704, top-1 (Switch's gates), capacity factor 1.25
  top2_e8_no_balance   top2_e8 without the load-balancing loss
  top2_e8_g2       top2_e8 at granularity 2: 16 experts of 176, top-4
MoE layers are every layer; the load-balancing coefficient is 0.01 and the router
z-loss 0.001 (ST-MoE's).

  python experiments/moe/run.py [--steps 300] [--work_dir /tmp/t5x_lite_moe_study]

Writes results.json, results.md and moe.png (validation loss and routing over training)
beside this file; each run's directory (metrics.jsonl, TensorBoard) stays in work_dir.
Speed is measured by tools/benchmark_moe.py (interleaved, `make bench`), not here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from t5x_lite import gin_utils  # noqa: E402
from t5x_lite.models import counting  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

RUNS = {
    "dense": {},
    "top2_e4": {"num_experts": 4, "moe_top_k": 2, "d_ff": 352},
    "top2_e8": {"num_experts": 8, "moe_top_k": 2, "d_ff": 352},
    "top2_e16": {"num_experts": 16, "moe_top_k": 2, "d_ff": 352},
    "top1_e8": {"num_experts": 8, "moe_top_k": 1, "moe_router": "'switch'"},
    "top2_e8_no_balance": {"num_experts": 8, "moe_top_k": 2, "d_ff": 352,
                           "moe_aux_loss_coef": 0.0},
    "top2_e8_g2": {"num_experts": 8, "moe_top_k": 2, "d_ff": 352, "moe_granularity": 2},
}


def train(work_dir: str, name: str, knobs: dict, steps: int) -> tuple[str, float]:
  """Trains one run (resuming a finished one only reports it); (directory, seconds)."""
  model_dir = os.path.join(work_dir, name)
  os.makedirs(model_dir, exist_ok=True)
  bindings = [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {steps}",
              "train.log_every = 10", f"train.eval_every = {max(steps // 6, 1)}",
              "train.eval_steps = 8", "train.checkpoint_every = 100000",
              "TransformerConfig.moe_capacity_factor = 1.25",
              *[f"TransformerConfig.{knob} = {value}" for knob, value in knobs.items()]]
  command = [sys.executable, "-m", "t5x_lite.train", "--gin_file=runs/quickstart.gin",
             *[f"--gin.{binding}" for binding in bindings]]
  print(f"== train {name}", flush=True)
  start = time.perf_counter()
  with open(os.path.join(model_dir, "train.log"), "a") as log:
    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
  if done.returncode:
    raise RuntimeError(f"{name} failed (exit {done.returncode}); see {model_dir}/train.log")
  return model_dir, time.perf_counter() - start


def read_metrics(model_dir: str) -> dict[str, list[dict]]:
  """metrics.jsonl's records by split, the last record of each step winning."""
  by_split: dict[str, dict[int, dict]] = {}
  with open(os.path.join(model_dir, "metrics.jsonl")) as handle:
    for line in handle:
      record = json.loads(line)
      by_split.setdefault(record["split"], {})[record["step"]] = record
  return {split: [records[s] for s in sorted(records)] for split, records in by_split.items()}


def model_config(knobs: dict):
  """The TransformerConfig a run of RUNS trains."""
  return gin_utils.model_config(["models/quickstart_decoder.gin"]).replace(
      **{k: (v.strip("'") if isinstance(v, str) else v) for k, v in knobs.items()},
      **({"moe_capacity_factor": 1.25} if knobs else {}))


def summarise(name: str, knobs: dict, metrics: dict[str, list[dict]]) -> dict:
  """One run's row: final validation loss, its parameters, FLOPs and routing at the end."""
  config = model_config(knobs)
  counts = counting.count(config, targets_length=256)
  train, evaluation = metrics["train"], metrics["eval"]
  late = train[-10:]  # the last 100 steps' routing
  mean = lambda key: sum(r[key] for r in late) / len(late) if key in late[0] else None  # noqa: E731
  return {"run": name, "params": counts.params, "active_params": counts.active_params,
          "flops_per_token": counts.flops_per_token, "steps": train[-1]["step"],
          "validation_loss": evaluation[-1]["loss"],
          "validation_curve": [(r["step"], r["loss"]) for r in evaluation],
          "tokens_per_second": sum(r["tokens_per_second"] for r in late) / len(late),
          "aux_loss": mean("moe/aux_loss"), "z_loss": mean("moe/z_loss"),
          "dropped_fraction": mean("moe/dropped_fraction"), "max_load": mean("moe/max_load"),
          "routing_curve": [(r["step"], r.get("moe/max_load"), r.get("moe/dropped_fraction"))
                            for r in train]}


def markdown(rows: list[dict]) -> str:
  dense = next(row for row in rows if row["run"] == "dense")
  lines = ["| run | params | active | FLOPs/token | validation loss | vs dense | "
           "balance loss | dropped | max load |", "|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    routing = ("| - | - | - |" if row["aux_loss"] is None else
               f"| {row['aux_loss']:.3f} | {100 * row['dropped_fraction']:.1f}% | "
               f"{row['max_load']:.2f}x |")
    lines.append(f"| {row['run']} | {row['params'] / 1e6:.2f}M | "
                 f"{row['active_params'] / 1e6:.2f}M | {row['flops_per_token'] / 1e6:.1f}M | "
                 f"{row['validation_loss']:.4f} | "
                 f"{row['validation_loss'] - dense['validation_loss']:+.4f} {routing}")
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
  figure, (loss, load, dropped) = plt.subplots(1, 3, figsize=(16, 4.5))
  for index, row in enumerate(rows):
    color = f"C{index}"  # one colour per run in every panel
    steps, values = zip(*row["validation_curve"])
    loss.plot(steps, values, marker="o", label=row["run"], color=color,
              linestyle="--" if row["run"] == "dense" else "-")
    if row["aux_loss"] is not None:
      steps, loads, drops = zip(*row["routing_curve"])
      load.plot(steps, loads, label=row["run"], color=color)
      dropped.plot(steps, [100 * d for d in drops], label=row["run"], color=color)
  loss.set(xlabel="step", ylabel="validation loss (nats/token)",
           title="equal FLOPs per token: validation loss")
  load.set(xlabel="step", ylabel="busiest expert's share x E",
           title="load balance (1 = uniform)")
  dropped.set(xlabel="step", ylabel="% of assignments dropped",
              title="capacity factor 1.25: dropped assignments")
  loss.legend(fontsize=8)
  load.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--work_dir", default="/tmp/t5x_lite_moe_study")
  parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset")
  parser.add_argument("--output_dir", default=HERE)
  parser.add_argument("--report", action="store_true",
                      help="only rewrite results.md and moe.png from results.json")
  return parser.parse_args(argv)


def write_report(rows: list[dict], output_dir: str) -> None:
  with open(os.path.join(output_dir, "results.md"), "w") as handle:
    handle.write(markdown(rows))
  plot(rows, os.path.join(output_dir, "moe.png"))
  print(markdown(rows))


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.report:
    with open(os.path.join(args.output_dir, "results.json")) as handle:
      write_report(json.load(handle), args.output_dir)
    return
  rows = []
  for name in args.runs.split(","):
    model_dir, seconds = train(args.work_dir, name, RUNS[name], args.steps)
    row = summarise(name, RUNS[name], read_metrics(model_dir))
    row["train_seconds"] = seconds
    rows.append(row)
    print(f"   {name}: validation loss {row['validation_loss']:.4f}", flush=True)
  with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
    json.dump(rows, handle, indent=1)
  write_report(rows, args.output_dir)


if __name__ == "__main__":
  main()
