"""The seed presets, checked on pods (experiments/pods/README.md).

For each preset (GPT-3 125M-175B, LLaMA 7B-65B, T5 1.1 small-XXL) and each target (a
TPU v5p slice, nodes of 8 H100s; sized by the preset's parameters, SIZE_BANDS), run
`python -m t5x_lite.compile_check --search` at the preset's published batch and
sequence length, bf16 compute, scanned layers, and keep its report and best layout:
results/<preset>_<target>.json and gin/<preset>_<target>.gin. Each search runs in its
own process and a rerun skips those already done, so the study can be stopped and
resumed (the largest presets compile for minutes per layout on a 2-core machine).
Then the table (table.md, for the README) and the plot of per-chip memory against
model size (memory.png).

  python experiments/pods/run.py [--presets gpt3_125m llama_7b] [--targets tpu gpu]
      [--max_compiles 24] [--report_only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from t5x_lite import gin_utils  # noqa: E402
from t5x_lite.common import files  # noqa: E402
from t5x_lite.models.counting import count_params  # noqa: E402
from t5x_lite.pods import chips  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
GIN = os.path.join(HERE, "gin")
CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022
# GPU runs need XLA_PYTHON_CLIENT_MEM_FRACTION raised from JAX's 0.75; leave 10% for the
# allocator's fragmentation and the CUDA context (TPU compilers enforce HBM themselves).
GPU_MEMORY_FRACTION = 0.9

# Published batch (sequences) and lengths: GPT-3 Table 2.1 (0.5M-3.2M tokens of 2048),
# LLaMA (4M tokens of 2048), T5 (Raffel et al.: 128 sequences, inputs 512; T5's span
# corruption makes 114 targets of 512 inputs).
GPT3 = {"targets": 2048}
T5 = {"inputs": 512, "targets": 114}
PRESETS = {
    "gpt3_125m": (256, GPT3), "gpt3_350m": (256, GPT3), "gpt3_760m": (256, GPT3),
    "gpt3_1_3b": (512, GPT3), "gpt3_2_7b": (512, GPT3), "gpt3_6_7b": (1024, GPT3),
    "gpt3_13b": (1024, GPT3), "gpt3_175b": (1536, GPT3),
    "llama_7b": (2048, GPT3), "llama_13b": (2048, GPT3), "llama_33b": (2048, GPT3),
    "llama_65b": (2048, GPT3),
    "t5_1_1_small": (128, T5), "t5_1_1_base": (128, T5), "t5_1_1_large": (128, T5),
    "t5_1_1_xl": (128, T5), "t5_1_1_xxl": (128, T5),
}
# Pod sizes by parameters (upper bound, TPU slice, GPU nodes, most compiles per search):
# a slice or node count that holds the training state several times over and trains
# the Chinchilla-optimal tokens in weeks rather than years. The largest presets compile
# for minutes per layout on a 2-core machine, so their searches stop after fewer.
SIZE_BANDS = [(1.5e9, "v5p:2x2x2", "h100:1x8", 24), (15e9, "v5p:4x4x4", "h100:8x8", 12),
              (float("inf"), "v5p:8x8x16", "h100:64x8", 6)]


def band(params: int) -> tuple:
  return next(row for row in SIZE_BANDS if params <= row[0])


def target_topology(params: int, target: str) -> str:
  _, tpu, gpu, _ = band(params)
  return tpu if target == "tpu" else gpu


def preset_params(preset: str) -> int:
  config = gin_utils.model_config([f"models/{preset}.gin"])
  return count_params(config)[0]


def command(preset: str, target: str, topology: str, max_compiles: int) -> list[str]:
  batch, lengths = PRESETS[preset]
  name = f"{preset}_{target}"
  longest = max(lengths.values())
  return [sys.executable, "-m", "t5x_lite.compile_check", "--gin_file=runs/pretrain.gin",
          f"--gin_file=models/{preset}.gin", f"--gin.TASK_FEATURE_LENGTHS={lengths}",
          f"--gin.BATCH_SIZE={batch}", "--gin.TransformerConfig.dtype='bfloat16'",
          "--gin.TransformerConfig.scan_layers=True",
          f"--gin.TransformerConfig.max_length={longest}", f"--topology={topology}",
          "--search", f"--max_compiles={max_compiles}", "--top=1", "--no_decode",
          f"--memory_fraction={GPU_MEMORY_FRACTION if target == 'gpu' else 1.0}",
          f"--tokens={CHINCHILLA_TOKENS_PER_PARAM * preset_params(preset):.6g}",
          f"--write_gin={os.path.join(GIN, name + '.gin')}",
          f"--json={os.path.join(RESULTS, name + '.json')}"]


def run(presets: list[str], targets: list[str], max_compiles: Optional[int]) -> None:
  os.makedirs(RESULTS, exist_ok=True)
  os.makedirs(GIN, exist_ok=True)
  for preset in sorted(presets, key=preset_params):  # the quick ones first
    for target in targets:
      result = os.path.join(RESULTS, f"{preset}_{target}.json")
      if os.path.exists(result):
        continue
      topology = target_topology(preset_params(preset), target)
      print(f"== {preset} on {topology}", flush=True)
      start = time.perf_counter()
      log = os.path.join(RESULTS, f"{preset}_{target}.log")
      with open(log, "w") as handle:
        budget = max_compiles or band(preset_params(preset))[3]
        code = subprocess.call(command(preset, target, topology, budget),
                               stdout=handle, stderr=subprocess.STDOUT)
      print(f"   exit {code} after {time.perf_counter() - start:.0f} s (log: {log})",
            flush=True)
      if not os.path.exists(result):  # exit 1 with nothing fitting still writes a report
        raise SystemExit(f"{preset} on {topology} wrote no report; see {log}")


def best_row(report: dict) -> dict | None:
  rows = [r for r in report.get("search", []) if r["fits"]]
  return min(rows, key=lambda r: (r["estimate_seconds"], r["layout"]["microbatches"]),
             default=None)


def summarize() -> list[dict]:
  """One row per finished search."""
  rows = []
  for preset in PRESETS:
    for target in ("tpu", "gpu"):
      path = os.path.join(RESULTS, f"{preset}_{target}.json")
      if not os.path.exists(path):
        continue
      with open(path) as handle:
        report = json.load(handle)
      best = best_row(report)
      row = {"preset": preset, "target": target, "topology": report["topology"],
             "params": report.get("params") or preset_params(preset), "fits": best is not None,
             "compiles": sum(1 for r in report["search"] if r["skipped"] is None),
             "compile_seconds": sum(r["compile_seconds"] for r in report["search"])}
      if best is not None:
        train = report["steps"][0]
        chip = chips.get(report["topology"].split(":")[0])
        steps = train["tokens"] / (train["flops_per_step"] / report["flops_per_token"])
        days = steps * best["estimate_seconds"] / 86400
        energy = (report["chips"] * chip.power_watts * days * 24 / 1000
                  if chip.power_watts else None)
        row.update(layout=best["layout"], hbm_bytes=best["total_bytes"],
                   capacity_bytes=train["capacity_bytes"], step_seconds=best["estimate_seconds"],
                   mfu_bound=train["roofline_step_seconds"] / best["estimate_seconds"],
                   tokens=train["tokens"], days=days, energy_kwh=energy,
                   chips=report["chips"])
      rows.append(row)
  return rows


def table(rows: list[dict]) -> str:
  lines = ["| preset | params | pod | layout (data x fsdp x tensor x stage, remat, "
           "microbatches) | HBM per chip | step (est.) | MFU bound | days for 20 N tokens "
           "| energy (kWh) |", "|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    if not row["fits"]:
      lines.append(f"| {row['preset']} | {row['params'] / 1e9:.2f}B | {row['topology']} | "
                   "nothing fits | | | | | |")
      continue
    layout = row["layout"]
    mesh = " x ".join(map(str, layout["mesh_shape"]))
    energy = f"{row['energy_kwh']:.3g}" if row["energy_kwh"] is not None else "n/a"
    lines.append(
        f"| {row['preset']} | {row['params'] / 1e9:.2f}B | {row['topology']} | {mesh}, "
        f"{layout['remat']}, {layout['microbatches']} | "
        f"{row['hbm_bytes'] / 2**30:.1f} / {row['capacity_bytes'] / 2**30:.0f} GiB | "
        f"{row['step_seconds']:.3g} s | {100 * row['mfu_bound']:.0f}% | {row['days']:.3g} | "
        f"{energy} |")
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
  import matplotlib  # an optional extra: only the report needs it
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  figure, axis = plt.subplots(figsize=(7, 4.5))
  for target, marker in (("tpu", "o"), ("gpu", "s")):
    chosen = [r for r in rows if r["target"] == target and r["fits"]]
    if not chosen:
      continue
    axis.scatter([r["params"] for r in chosen], [r["hbm_bytes"] / 2**30 for r in chosen],
                 marker=marker, label={"tpu": "TPU v5p slice", "gpu": "H100 nodes"}[target])
    for r in chosen:
      axis.annotate(r["preset"], (r["params"], r["hbm_bytes"] / 2**30), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
  for capacity, label in ((chips.get("v5p").hbm_bytes, "v5p HBM"),
                          (chips.get("h100").hbm_bytes, "H100 HBM")):
    axis.axhline(capacity / 2**30, linestyle=":", color="grey")
    axis.annotate(label, (1e8, capacity / 2**30), fontsize=7)
  axis.set_xscale("log")
  axis.set_xlabel("parameters")
  axis.set_ylabel("per-chip memory of the best layout (GiB)")
  axis.set_title("Seed presets: per-chip memory of the layout compile_check --search chose")
  axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=120)


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(PRESETS))
  parser.add_argument("--targets", nargs="+", choices=["tpu", "gpu"], default=["tpu", "gpu"])
  parser.add_argument("--max_compiles", type=int,
                      help="per search (default: the size band's, SIZE_BANDS)")
  parser.add_argument("--report_only", action="store_true")
  return parser.parse_args(argv)


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  if not args.report_only:
    run(args.presets, args.targets, args.max_compiles)
  rows = summarize()
  with files.atomic_write(os.path.join(HERE, "table.md")) as handle:
    handle.write(table(rows))
  with files.atomic_write(os.path.join(HERE, "results.json")) as handle:
    json.dump(rows, handle, indent=1)
  if rows:
    plot(rows, os.path.join(HERE, "memory.png"))
  print(table(rows))


if __name__ == "__main__":
  main(sys.argv[1:])
