"""`python -m t5x_lite.compile_check`: will this run fit a pod, and what will it cost?

  python -m t5x_lite.compile_check --gin_file=runs/pretrain.gin \
      --gin_file=models/gpt3_1_3b.gin --gin_file=meshes/fsdp.gin \
      --gin.TASK_FEATURE_LENGTHS="{'targets': 2048}" --gin.BATCH_SIZE=256 \
      --topology=v5p:4x4x4 [--mfu 0.4] [--price 4.2] [--tokens 26e9] [--json out.json]

Builds what `python -m t5x_lite.train` builds from the same gin files (model, mesh,
optimizer with μP and schedule, microbatches, pipeline stages, dtype, remat) over
compile-only devices of the topology (pods/topology.py: TPU slices as libtpu names them,
GPU clusters as <gpu>:<hosts>x<gpus>), compiles the train step and the decode step
(prefill + one token), and prints per step the memory one chip holds (parameters,
optimizer state, batch, temporaries, code) against its capacity, FITS or DOES NOT FIT,
the model FLOPs per step (models/counting.py, matmul convention), the roofline step
time at the chip's dense bf16 peak and, at --mfu, step time, tokens/s and the time,
chip-hours, energy and cost of training --tokens tokens (pods/cost.py). Nothing runs
on an accelerator and nothing is downloaded. Exit 1 (one line saying by how much and
what to change) when a step does not fit; 2 for a bad flag or binding.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from typing import Iterator, Optional, Sequence

import gin

from t5x_lite import gin_utils
from t5x_lite.common import files
from t5x_lite.common.errors import at_least, positive, run_cli
from t5x_lite.models.counting import count
from t5x_lite.pods import collectives, compiled, cost, topology
from t5x_lite.runs.spec import TrainSpec

GiB = 2**30
GPU_PREALLOCATED = 0.75  # XLA_PYTHON_CLIENT_MEM_FRACTION's default
# compile_check never writes a run directory; runs/pretrain.gin requires one.
NO_RUN_DIRECTORY = "compile_check: no run directory is written"


def parser() -> argparse.ArgumentParser:
  made = argparse.ArgumentParser(
      prog="python -m t5x_lite.compile_check", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  made.add_argument("--topology", required=True, help=topology.FORMS)
  made.add_argument("--mfu", type=positive(float), default=cost.DEFAULT_MFU,
                    help=f"model FLOPs utilisation for the time estimates "
                         f"(default {cost.DEFAULT_MFU})")
  made.add_argument("--price", type=positive(float), help="price per chip-hour ($)")
  made.add_argument("--power", type=positive(float),
                    help="board power per chip in watts (default: the datasheet's)")
  made.add_argument("--tokens", type=positive(float),
                    help="tokens to train (default: the run's TRAIN_STEPS x tokens a step)")
  made.add_argument("--decode_batch", type=at_least(1), help="default: the run's batch")
  made.add_argument("--prompt_length", type=at_least(1),
                    help="default: the task's inputs length, else half the targets length")
  made.add_argument("--max_new_tokens", type=at_least(1),
                    help="default: the targets length (decoders: the other half)")
  made.add_argument("--no_decode", action="store_true", help="only the train step")
  made.add_argument("--json", help="also write the report here")
  return made


def parse_gin(files_: Sequence[str], bindings: Sequence[str],
              search_paths: Sequence[str]) -> TrainSpec:
  """The run's TrainSpec from its gin files and bindings, as `train` builds it; a run
  directory left unbound (MODEL_DIR) is not needed here."""
  gin_utils.parse(files_, bindings, search_paths)
  if gin.get_bindings("train").get("model_dir", gin.REQUIRED) is gin.REQUIRED:
    gin.bind_parameter("train.model_dir", NO_RUN_DIRECTORY)
  return gin_utils.resolve_train_spec()


def main(argv: Sequence[str]) -> int:
  return run_cli(lambda: _main(argv))


def _main(argv: Sequence[str]) -> int:
  files_, bindings, search_paths, rest = gin_utils.rewrite_gin_args(argv)
  args = parser().parse_args(rest)
  pod = topology.parse(args.topology)
  spec = parse_gin(files_, bindings, search_paths)
  print(f"building compile-only devices for {pod.name} ({pod.num_chips:,} x "
        f"{pod.chip.description}, {pod.chip.hbm_bytes / GiB:.1f} GiB each) ...", flush=True)
  mesh = gin_utils.resolve_mesh(devices=topology.devices(pod))
  report = check(spec, mesh, pod, args)
  bench_json(args.json, report)
  failed = [step for step in report["steps"] if not step["fits"]]
  if failed:
    print(advice(failed[0], spec, mesh), file=sys.stderr)
    return 1
  return 0


def check(spec, mesh, pod: topology.Topology, args: argparse.Namespace) -> dict:
  """Compiles the steps, prints their tables and returns the report."""
  run, config = spec.run, spec.model
  mesh_text = " x ".join(f"{name} {size}" for name, size in mesh.shape.items())
  print(f"mesh {mesh_text}; {config.architecture}, {config.dtype} compute, remat "
        f"{config.remat_policy}, {'scanned' if config.scan_layers else 'unrolled'} layers")
  inputs = run.feature_lengths.get("inputs", 0)
  counts = count(config, inputs_length=inputs, targets_length=run.feature_lengths["targets"])
  tokens_per_step = run.batch_size * counts.tokens_per_sequence
  power = args.power or pod.chip.power_watts
  tokens = args.tokens or float(run.train_steps) * tokens_per_step
  steps = []
  print(f"compiling the train step (batch {run.batch_size} x {counts.tokens_per_sequence} "
        f"tokens) ...", flush=True)
  with ticking("compiling the train step"):
    train = compiled.compile_train_step(spec, mesh, pod.chip.hbm_bytes)
  flops = counts.flops_per_token * tokens_per_step
  steps.append(_describe(train, flops, tokens_per_step, pod, args.mfu, power, args.price,
                         tokens))
  if not args.no_decode:
    prompt, new = decode_lengths(config, run.feature_lengths, args)
    batch = args.decode_batch or run.batch_size
    print(f"compiling the decode step (batch {batch}, prompt {prompt}, cache for {new} new "
          "tokens) ...", flush=True)
    with ticking("compiling the decode step"):
      decode = compiled.compile_decode_step(config, mesh, batch, prompt, new,
                                            pod.chip.hbm_bytes)
    steps.append(_describe(decode, None, None, pod, args.mfu, power, args.price, None))
  print(f"host peak memory {compiled.host_memory_bytes() / GiB:.1f} GiB")
  return {"topology": pod.name, "chip": pod.chip.description, "chips": pod.num_chips,
          "mesh": dict(mesh.shape), "params": counts.params,
          "flops_per_token": counts.flops_per_token, "mfu": args.mfu, "steps": steps}


@contextlib.contextmanager
def ticking(what: str, every: float = 30.0) -> Iterator[None]:
  """Prints how long `what` has taken every `every` seconds until it ends (XLA compiles
  large steps for minutes without a word)."""
  done, start = threading.Event(), time.perf_counter()

  def tick():
    while not done.wait(every):
      print(f"  ... {what}: {time.perf_counter() - start:.0f} s", flush=True)
  thread = threading.Thread(target=tick, daemon=True)
  thread.start()
  try:
    yield
  finally:
    done.set()
    thread.join()


def decode_lengths(config, feature_lengths, args) -> tuple[int, int]:
  """(prompt length, new tokens) of the decode check."""
  targets = feature_lengths["targets"]
  if config.is_encoder_decoder or feature_lengths.get("inputs"):
    prompt, new = feature_lengths.get("inputs") or targets, targets
  else:
    prompt, new = max(1, targets // 2), max(1, targets - targets // 2)
  return args.prompt_length or prompt, args.max_new_tokens or new


def _describe(step: compiled.CompiledStep, flops: Optional[float],
              tokens_per_step: Optional[int], pod: topology.Topology, mfu: float,
              power: Optional[float], price: Optional[float],
              tokens: Optional[float]) -> dict:
  """Prints one step's table; returns it as a dict."""
  memory = step.memory
  print(f"\n{step.name} step on {pod.name}: compiled in {step.compile_seconds:.1f} s")
  rows = [("parameters", memory.parameters), ("optimizer state", memory.optimizer_state),
          ("batch", memory.batch), ("layout padding", memory.layout_padding),
          ("temporaries", memory.temporaries), ("code", memory.code),
          ("outputs", memory.outputs)]
  for name, value in rows:
    print(f"  {name:16s} {size(value):>12s}")
  verdict = "FITS" if memory.fits and step.refusal is None else "DOES NOT FIT"
  print(f"  {'total':16s} {size(memory.total):>12s} of {size(memory.capacity)} "
        f"({100 * memory.total / memory.capacity:.1f}%)  {verdict}")
  if step.refusal:
    print(f"  XLA: {step.refusal}")
  if (pod.chip.platform == "cuda" and memory.fits
      and memory.total > GPU_PREALLOCATED * memory.capacity):
    print(f"  note: JAX takes {100 * GPU_PREALLOCATED:.0f}% of a GPU's memory by default; set "
          f"XLA_PYTHON_CLIENT_MEM_FRACTION={min(0.95, memory.total / memory.capacity + 0.03):.2f}"
          " for this run")
  result = {"step": step.name, "fits": verdict == "FITS", "refusal": step.refusal,
            "compile_seconds": step.compile_seconds,
            "memory_bytes": {name: value for name, value in rows},
            "total_bytes": memory.total, "capacity_bytes": memory.capacity,
            "xla_argument_bytes": memory.xla_arguments}
  if step.hlo:
    totals = collectives.summary(collectives.read(step.hlo, pod.num_chips))
    sent = sum(row["sent_bytes"] for row in totals.values())
    # Across GPU hosts the network, not NVLink, bounds a collective spanning them.
    bandwidth = (pod.chip.scale_out_bytes_per_s if pod.hosts > 1
                 else pod.chip.interconnect_bytes_per_s)
    if totals:
      print("  collectives per step: " + ", ".join(
          f"{kind} {size(row['data_bytes'])} ({row['count']:.0f}x)"
          for kind, row in sorted(totals.items())))
      print(f"  each chip sends {size(sent)}: {sent / bandwidth:.3f} s at "
            f"{bandwidth / 1e9:.0f} GB/s if none of it overlapped compute")
    result.update(collectives=totals, sent_bytes=sent,
                  communication_seconds=sent / bandwidth)
  if flops is not None and tokens_per_step:
    roofline = flops / (pod.num_chips * pod.chip.peak_flops)
    at_mfu = roofline / mfu
    per_second = tokens_per_step / at_mfu
    print(f"  model FLOPs per step {flops:.3e} (models/counting.py, matmul convention)")
    print(f"  roofline step time {roofline:.3f} s at {pod.chip.peak_flops / 1e12:.0f} "
          "TFLOP/s dense bf16 per chip")
    print(f"  at MFU {100 * mfu:.0f}%: step {at_mfu:.3f} s, {per_second / pod.num_chips:,.0f} "
          f"tokens/s per chip, {per_second:,.0f} for the pod")
    run = cost.run_cost(flops / tokens_per_step * tokens, pod.num_chips,
                        pod.chip.peak_flops * mfu, power, price)
    print(f"  training {tokens:.3g} tokens: {cost.describe(run)}")
    result.update(flops_per_step=flops, roofline_step_seconds=roofline,
                  step_seconds=at_mfu, tokens_per_second=per_second, tokens=tokens,
                  days=run.days, chip_hours=run.chip_hours, energy_kwh=run.energy_kwh,
                  cost=run.cost)
  return result


def size(num_bytes: float) -> str:
  """Bytes in the unit that reads best (KiB, MiB or GiB)."""
  for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
    if num_bytes >= scale:
      return f"{num_bytes / scale:.2f} {unit}"
  return f"{num_bytes:.0f} B"


def advice(step: dict, spec, mesh) -> str:
  """One line: by how much the step misses and what to change."""
  over = step["total_bytes"] - step["capacity_bytes"]
  amount = (f"needs {size(step['total_bytes'])} per chip, {size(over)} more than the "
            f"{size(step['capacity_bytes'])} a chip has")
  config, run = spec.model, spec.run
  changes = []
  if mesh.shape["fsdp"] < mesh.size:
    changes.append("more FSDP shards (create_mesh.shape)")
  if config.remat_policy != "full":
    changes.append("TransformerConfig.remat_policy='full'")
  changes.append(f"train.microbatches > {run.microbatches}")
  changes.append("a smaller per-chip batch (BATCH_SIZE)")
  return f"the {step['step']} step does not fit: {amount}; try {', '.join(changes)}."


def bench_json(path: Optional[str], report: dict) -> None:
  if path:
    with files.atomic_write(path) as handle:
      json.dump(report, handle, indent=1)


if __name__ == "__main__":
  start = time.perf_counter()
  code = main(sys.argv[1:])
  print(f"done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
  sys.exit(code)
