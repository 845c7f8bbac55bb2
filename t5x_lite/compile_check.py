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
import dataclasses
import json
import sys
import threading
import time
from typing import Iterator, Optional, Sequence

import gin

from t5x_lite import gin_utils
from t5x_lite.common import files, partitioning
from t5x_lite.common.errors import at_least, positive, run_cli
from t5x_lite.models.counting import count
from t5x_lite.pods import chips, collectives, compiled, cost, search, topology
from t5x_lite.pods.compiled import size
from t5x_lite.runs.spec import TrainSpec

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
  made.add_argument("--memory_fraction", type=fraction, default=1.0,
                    help="the share of each chip's memory a step may use (default 1; e.g. "
                         f"{GPU_PREALLOCATED} on GPUs, where JAX preallocates that share)")
  made.add_argument("--no_decode", action="store_true", help="only the train step")
  made.add_argument("--json", help="also write the report here")
  searching = made.add_argument_group(
      "layout search", "--search compiles the train step over the layouts the pod allows "
      "(mesh data x fsdp x tensor x stage, remat none/dots/full, microbatches; the global "
      "batch stays the run's), ranks those that fit by estimated step time and writes the "
      "best as a gin file for `train` (pods/search.py says how).")
  searching.add_argument("--search", action="store_true", help="search for the best layout")
  searching.add_argument("--max_stages", type=at_least(1), default=8,
                         help="most pipeline stages to consider (default 8; 1: none)")
  searching.add_argument("--top", type=at_least(1), default=3,
                         help="layouts to rank exactly and print (default 3)")
  searching.add_argument("--max_compiles", type=at_least(1),
                         help="stop after this many compiles (default: no limit)")
  searching.add_argument("--write_gin",
                         help="where the best layout goes (default layout_<topology>.gin)")
  return made


def fraction(text: str) -> float:
  """An argparse type: a number in (0, 1]."""
  value = float(text)
  if not 0 < value <= 1:
    raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
  return value


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
  capacity = int(pod.chip.hbm_bytes * args.memory_fraction)
  spec = parse_gin(files_, bindings, search_paths)
  print(f"building compile-only devices for {pod.name} ({pod.num_chips:,} x "
        f"{pod.chip.description}, {pod.chip.hbm_bytes / chips.GiB:.1f} GiB each) ...", flush=True)
  devices = topology.devices(pod)
  if args.search:
    return _search(spec, pod, devices, capacity, args)
  mesh = gin_utils.resolve_mesh(devices=devices)
  report = check(spec, mesh, pod, capacity, args)
  bench_json(args.json, report)
  failed = [step for step in report["steps"] if not step["fits"]]
  if failed:
    print(advice(failed[0], spec, mesh), file=sys.stderr)
    return 1
  return 0


def _search(spec, pod: topology.Topology, devices, capacity: int,
            args: argparse.Namespace) -> int:
  """--search: the ranked layouts, the best one's report, and its gin file."""
  run = spec.run
  policies = "/".join(search.REMAT_POLICIES)
  print(f"searching layouts for batch {run.batch_size} on {pod.name}: mesh data x fsdp x "
        f"tensor x stage (at most {args.max_stages} stages), remat {policies}, microbatches "
        "...", flush=True)
  result = search.search(spec, pod, devices, capacity=capacity, max_stages=args.max_stages,
                         top=args.top,
                         max_compiles=args.max_compiles, watch=ticking)
  compiles = [t for t in result.trials if t.skipped is None]
  print(f"\n{len(compiles)} compiles in {sum(t.compile_seconds for t in compiles):.0f} s"
        + (f"; {result.unexplored} meshes left unexplored (--max_compiles)"
           if result.unexplored else ""))
  for trial in result.trials:
    if trial.skipped:
      print(f"  not compiled: {trial.layout.describe()}: {trial.skipped}")
  ranked = result.ranked
  if not ranked:
    smallest = min(result.trials, key=lambda t: t.total_bytes, default=None)
    needs = f"; the smallest needs {size(smallest.total_bytes)} per chip" if smallest else ""
    print(f"no layout fits {pod.name}{needs}: use more chips, a smaller batch or sequence, "
          "LoRA, or a model with fewer parameters.", file=sys.stderr)
    bench_json(args.json, {"topology": pod.name, "search": _search_rows(result, run)})
    return 1
  print(f"\n{'rank':>4s}  {'layout':72s} {'per chip':>9s} {'memory':>10s} {'step (est.)':>11s}"
        f" {'MFU bound':>9s}")
  for rank, trial in enumerate(ranked[:args.top], 1):
    print(f"{rank:4d}  {trial.layout.describe():72s} "
          f"{trial.layout.per_chip_batch(run.batch_size):9.3g} {size(trial.total_bytes):>10s} "
          f"{trial.estimate:9.3f} s {100 * result.roofline_seconds / trial.estimate:8.1f}%")
  best = ranked[0]
  path = args.write_gin or f"layout_{pod.name.replace(':', '_')}.gin"
  header = (f"# compile_check --search on {pod.name} (batch {run.batch_size}): the fastest of "
            f"{len(ranked)} fitting layouts, estimated {best.estimate:.3f} s a step "
            f"({100 * result.roofline_seconds / best.estimate:.1f}% MFU bound).\n"
            "# Pass it after the run's own gin files: --gin_file=<this file>.\n")
  with files.atomic_write(path) as handle:
    handle.write(header + best.layout.gin())
  print(f"\nbest layout written to {path}: {best.layout.describe()}")
  spec = best.layout.apply(spec)
  mesh = partitioning.create_mesh(best.layout.mesh_shape, devices)
  report = check(spec, mesh, pod, capacity, args, train=best.step)
  report["search"] = _search_rows(result, run)
  bench_json(args.json, report)
  return 0


def _search_rows(result: search.Result, run) -> list[dict]:
  return [{"layout": dataclasses.asdict(t.layout), "per_chip_batch":
           t.layout.per_chip_batch(run.batch_size), "total_bytes": t.total_bytes,
           "fits": t.fits, "compile_seconds": t.compile_seconds,
           "compute_seconds": t.compute_seconds,
           "communication_seconds": t.communication_seconds, "estimate_seconds": t.estimate,
           "skipped": t.skipped} for t in result.trials]


def check(spec, mesh, pod: topology.Topology, capacity: int, args: argparse.Namespace,
          train: Optional[compiled.CompiledStep] = None) -> dict:
  """Compiles the steps (the train step unless given), prints their tables and returns
  the report."""
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
  if train is None:
    print(f"compiling the train step (batch {run.batch_size} x {counts.tokens_per_sequence} "
          f"tokens) ...", flush=True)
    with ticking("compiling the train step"):
      train = compiled.compile_train_step(spec, mesh, capacity)
  flops_per_token = counts.step_flops_per_token(frozen_base=spec.lora is not None)
  flops = flops_per_token * tokens_per_step
  steps.append(_describe(train, flops, tokens_per_step, pod, args.mfu, power, args.price,
                         tokens))
  if not args.no_decode:
    prompt, new = decode_lengths(config, run.feature_lengths, args)
    batch = args.decode_batch or run.batch_size
    print(f"compiling the decode step (batch {batch}, prompt {prompt}, cache for {new} new "
          "tokens) ...", flush=True)
    with ticking("compiling the decode step"):
      decode = compiled.compile_decode_step(config, mesh, batch, prompt, new, capacity)
    steps.append(_describe(decode, None, None, pod, args.mfu, power, args.price, None))
  print(f"host peak memory {compiled.host_memory_bytes() / chips.GiB:.1f} GiB")
  return {"topology": pod.name, "chip": pod.chip.description, "chips": pod.num_chips,
          "mesh": dict(mesh.shape), "params": counts.params,
          "flops_per_token": flops_per_token, "mfu": args.mfu, "steps": steps}


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
      and memory.total > GPU_PREALLOCATED * pod.chip.hbm_bytes):
    share = min(0.95, memory.total / pod.chip.hbm_bytes + 0.03)
    print(f"  note: JAX takes {100 * GPU_PREALLOCATED:.0f}% of a GPU's memory by default; set "
          f"XLA_PYTHON_CLIENT_MEM_FRACTION={share:.2f} for this run")
  result = {"step": step.name, "fits": verdict == "FITS", "refusal": step.refusal,
            "compile_seconds": step.compile_seconds,
            "memory_bytes": {name: value for name, value in rows},
            "total_bytes": memory.total, "capacity_bytes": memory.capacity,
            "xla_argument_bytes": memory.xla_arguments}
  if step.hlo:
    found = collectives.of_step(step.hlo, pod)
    totals = collectives.summary(found)
    sent = sum(row["sent_bytes"] for row in totals.values())
    across = sum(item.sent_bytes for item in found if item.crosses_hosts)
    communication = collectives.seconds(found, pod.chip)
    if totals:
      print("  collectives per step: " + ", ".join(
          f"{kind} {size(row['data_bytes'])} ({row['count']:.0f}x)"
          for kind, row in sorted(totals.items())))
      links = f"{pod.chip.interconnect_bytes_per_s / 1e9:.0f} GB/s"
      if across:
        links += (f" ({size(across)} of it between hosts at "
                  f"{pod.chip.scale_out_bytes_per_s / 1e9:.0f} GB/s)")
      print(f"  each chip sends {size(sent)}: {communication:.3f} s at {links} if none "
            "of it overlapped compute")
    result.update(collectives=totals, sent_bytes=sent, sent_between_hosts_bytes=across,
                  communication_seconds=communication)
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
