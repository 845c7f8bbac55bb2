"""The costliest ops of a jax.profiler trace (a train run's MODEL_DIR/profile, or any
trace directory), summed over the traced steps.

  python tools/top_ops.py MODEL_DIR/profile [--top 25] [--hlo XLA_DUMP_DIR]

Reads the newest *.xplane.pb under the directory through xprof (pip install xprof).
Prints every XLA op (fusion) by total time, then the same grouped by kind (the fusion
name without its number: ynn_fusion = matmuls on CPU, copy/transpose fusions = layout
changes, ...). With --hlo pointing at an XLA dump of the same program
(XLA_FLAGS="--xla_dump_to=DIR --xla_dump_hlo_as_text"), each op also gets its output
shape and the JAX operation it came from.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys

# Runtime bookkeeping events, not ops.
NOT_OPS = ("$", "Thunk", "Threadpool", "Slinky", "PjitFunction", "ExecuteHelper")


def op_times(trace_dir: str) -> tuple[collections.Counter, collections.Counter]:
  """({op name: total microseconds}, {op name: calls}) of the newest trace in trace_dir."""
  try:
    from xprof.convert import raw_to_tool_data
  except ImportError:
    sys.exit("tools/top_ops.py needs xprof: pip install xprof")
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    sys.exit(f"no *.xplane.pb under {trace_dir}: profile a run first "
             "(--gin.train.profile_start_step=N)")
  data, _ = raw_to_tool_data.xspace_to_tool_data([paths[-1]], "trace_viewer", {})
  total, calls = collections.Counter(), collections.Counter()
  for event in json.loads(data)["traceEvents"]:
    if event.get("ph") == "X" and not event["name"].startswith(NOT_OPS):
      total[event["name"]] += event["dur"]
      calls[event["name"]] += 1
  return total, calls


def hlo_annotations(dump_dir: str) -> dict[str, tuple[str, str]]:
  """{op name: (output shape, JAX op_name)} from optimized HLO text dumps."""
  found: dict[str, tuple[str, str]] = {}
  pattern = re.compile(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name="([^"]*)"')
  for path in glob.glob(os.path.join(dump_dir, "*after_optimizations.txt")):
    with open(path) as handle:
      for line in handle:
        match = pattern.match(line)
        if match:
          found.setdefault(match.group(1), (match.group(2), match.group(3)))
  return found


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("trace_dir")
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--hlo", help="an XLA dump directory of the same program")
  args = parser.parse_args(argv)
  total, calls = op_times(args.trace_dir)
  annotations = hlo_annotations(args.hlo) if args.hlo else {}
  overall = sum(total.values())
  print(f"{overall / 1e3:,.1f} ms in {sum(calls.values())} op executions")
  for name, micros in total.most_common(args.top):
    shape, origin = annotations.get(name, ("", ""))
    print(f"{micros / 1e3:9.1f} ms {100 * micros / overall:5.1f}% {calls[name]:6d}x  "
          f"{name:34s} {shape[:36]:36s} {origin[-60:]}")
  kinds: collections.Counter = collections.Counter()
  for name, micros in total.items():
    kinds[re.sub(r"\.\d+$", "", name)] += micros
  print("\nby kind:")
  for kind, micros in kinds.most_common(args.top):
    print(f"{micros / 1e3:9.1f} ms {100 * micros / overall:5.1f}%  {kind}")


if __name__ == "__main__":
  main()
