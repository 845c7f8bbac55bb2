"""The communication a compiled step contains, read from its optimized HLO.

Every collective instruction (all-gather, reduce-scatter, all-reduce, all-to-all,
collective-permute; synchronous or as an async -start) is counted as many times as it
executes: once per execution of the computation holding it, a while loop's body its
known trip count times (a scanned layer stack), called and fused computations once per
call. Its data size is its result's bytes (for reduce-scatter, the input it reduces:
result x group); the bytes one chip sends follow the ring algorithms' volumes:
all-gather and all-to-all (g - 1) / g of the data, reduce-scatter the same of its
input, all-reduce twice that, a permute all of it.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
               "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
               "f8e4m3fn": 1, "f8e5m2": 1}
_HEADER = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = (.*?) ([\w\-]+)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)"
                    r"|branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


@dataclasses.dataclass(frozen=True)
class Collective:
  """One collective instruction of a step."""
  kind: str
  data_bytes: int      # per execution (see the module docstring)
  group: int           # chips taking part in each group
  executions: int

  @property
  def sent_bytes(self) -> float:
    """Bytes one chip sends over all executions (ring volumes)."""
    share = (self.group - 1) / self.group if self.group > 1 else 0.0
    factor = {"all-reduce": 2 * share, "collective-permute": 1.0}.get(self.kind, share)
    return factor * self.data_bytes * self.executions


def _array_bytes(type_text: str) -> list[int]:
  return [DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
          for dtype, dims in _ARRAY.findall(type_text)]


def _group_size(attributes: str, default: int) -> int:
  if match := re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attributes):
    return int(match.group(2))
  if match := re.search(r"replica_groups=\{\{([\d,]*)\}", attributes):
    return len(match.group(1).split(","))
  if match := re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", attributes):
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", match.group(1)))
    return math.prod(int(sizes[name]) for name in re.findall(r"'(\w+)'", match.group(2)))
  if "source_target_pairs" in attributes:
    return 2
  return default


def read(hlo: str, num_devices: int) -> list[Collective]:
  """Every collective of an optimized HLO module with its execution count."""
  computations: dict[str, list[str]] = {}
  entry, current = None, None
  for line in hlo.splitlines():
    if header := _HEADER.match(line):
      current = header.group(1)
      computations[current] = []
      if line.startswith("ENTRY"):
        entry = current
    elif current is not None and line.strip() == "}":
      current = None
    elif current is not None:
      computations[current].append(line)
  # Callers: computation -> [(caller, multiplier)].
  callers = collections.defaultdict(list)
  for name, lines in computations.items():
    for line in lines:
      trip = _TRIP.search(line)
      for single, several in _CALLS.findall(line):
        for callee in re.findall(r"%?([\w.\-]+)", single or several):
          if callee in computations:
            body = f"body=%{callee}" in line
            callers[callee].append((name, int(trip.group(1)) if body and trip else 1))
  memo: dict[str, int] = {}

  def executions(name: str, seen: frozenset = frozenset()) -> int:
    if name == entry:
      return 1
    if name not in memo:
      memo[name] = sum(executions(caller, seen | {name}) * times
                       for caller, times in callers.get(name, ()) if caller not in seen)
    return memo[name]

  found = []
  for name, lines in computations.items():
    for line in lines:
      match = _INSTRUCTION.match(line)
      if not match:
        continue
      type_text, op, rest = match.groups()
      kind = op.removesuffix("-start")
      if kind not in KINDS or op.endswith("-done"):
        continue
      sizes = _array_bytes(type_text)
      if op.endswith("-start") and type_text.startswith("(("):
        sizes = sizes[len(sizes) // 2:]  # ((inputs...), (outputs...)): the outputs
      group = _group_size(rest, num_devices)
      data = sum(sizes) * (group if kind == "reduce-scatter" else 1)
      count = executions(name)
      if count and data:
        found.append(Collective(kind, data, group, count))
  return found


def summary(found: list[Collective]) -> dict[str, dict[str, float]]:
  """{kind: {"count", "data_bytes", "sent_bytes"}} over a step."""
  totals: dict[str, dict[str, float]] = {}
  for item in found:
    row = totals.setdefault(item.kind, {"count": 0, "data_bytes": 0.0, "sent_bytes": 0.0})
    row["count"] += item.executions
    row["data_bytes"] += item.data_bytes * item.executions
    row["sent_bytes"] += item.sent_bytes
  return totals
