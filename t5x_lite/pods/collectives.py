"""The communication a compiled step contains, read from its optimized HLO.

Every collective instruction (all-gather, reduce-scatter, all-reduce, all-to-all,
collective-permute; synchronous or as an async -start) is counted as many times as it
executes: once per execution of the computation holding it, a while loop's body its
known trip count times (a scanned layer stack), called and fused computations once per
call. Its data size is its result's bytes (for reduce-scatter, the input it reduces:
result x group); the bytes one chip sends follow the ring algorithms' volumes:
all-gather and all-to-all (g - 1) / g of the data, reduce-scatter the same of its
input, all-reduce twice that, a permute all of it.

On GPU clusters a collective whose groups stay inside one host travels over NVLink and
one whose groups span hosts over the network; `read` tells them apart from the
instruction's replica groups (device ids are positions in the mesh's process-major
device order, so device d lives on host d // devices_per_host).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Optional

import numpy as np

from t5x_lite.pods import chips, topology

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
  crosses_hosts: bool = False  # some group holds devices of two hosts

  @property
  def sent_bytes(self) -> float:
    """Bytes one chip sends over all executions (ring volumes)."""
    share = (self.group - 1) / self.group if self.group > 1 else 0.0
    factor = {"all-reduce": 2 * share, "collective-permute": 1.0}.get(self.kind, share)
    return factor * self.data_bytes * self.executions


def _array_bytes(type_text: str) -> list[int]:
  return [DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
          for dtype, dims in _ARRAY.findall(type_text)]


def _ints(text: str) -> list[int]:
  return [int(n) for n in text.split(",") if n]


def _iota(dims: list[int], order: Optional[list[int]]) -> np.ndarray:
  """XLA's iota device list "[dims]T(order)": arange reshaped to dims, transposed."""
  return np.arange(int(np.prod(dims))).reshape(dims).transpose(order or range(len(dims)))


def _groups(attributes: str) -> Optional[list[list[int]]]:
  """The device groups an instruction's replica groups (or permute pairs) name: spelled
  out, in XLA's iota form ("[G,S]<=[dims]T(order)"), or over a named mesh
  ("mesh['axis_0'=4,'axis_1'=2], device_ids=([2,4]T(1,0)) {'axis_0'}": devices that
  differ only along the listed axes); None for a form not known here."""
  if match := re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?",
                        attributes):
    ids = _iota(_ints(match.group(2)), match.group(3) and _ints(match.group(3)))
    return ids.reshape(-1, _ints(match.group(1))[-1]).tolist()
  if match := re.search(r"replica_groups=mesh\[([^\]]*)\]"
                        r"(?:, device_ids=\(\[([\d,]+)\](?:T\(([\d,]+)\))?\))? \{([^}]*)\}",
                        attributes):
    axes = re.findall(r"'(\w+)'=(\d+)", match.group(1))
    names, sizes = [name for name, _ in axes], [int(n) for _, n in axes]
    ids = (_iota(_ints(match.group(2)), match.group(3) and _ints(match.group(3)))
           if match.group(2) else np.arange(int(np.prod(sizes)))).reshape(sizes)
    grouped = [names.index(name) for name in re.findall(r"'(\w+)'", match.group(4))]
    others = [axis for axis in range(len(names)) if axis not in grouped]
    width = int(np.prod([sizes[axis] for axis in grouped]))
    return ids.transpose(others + grouped).reshape(-1, width).tolist()
  if match := re.search(r"(?:replica_groups|source_target_pairs)=\{((?:\{[\d,]*\},?)*)\}",
                        attributes):
    return [_ints(group) for group in re.findall(r"\{([\d,]*)\}", match.group(1))]
  return None


def _crosses_hosts(attributes: str, group: int, devices_per_host: Optional[int]) -> bool:
  if not devices_per_host:
    return False
  groups = _groups(attributes)
  if groups is None:  # unknown membership: only a group larger than a host must cross
    return group > devices_per_host
  return any(len({device // devices_per_host for device in members}) > 1
             for members in groups)


def _group_size(attributes: str, default: int) -> int:
  if "source_target_pairs" in attributes:
    return 2
  groups = _groups(attributes)
  return len(groups[0]) if groups and groups[0] else default


def read(hlo: str, num_devices: int,
         devices_per_host: Optional[int] = None) -> list[Collective]:
  """Every collective of an optimized HLO module with its execution count; with
  `devices_per_host`, whether each one's groups cross hosts."""
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
        found.append(Collective(kind, data, group, count,
                                _crosses_hosts(rest, group, devices_per_host)))
  return found


def of_step(hlo: str, pod: topology.Topology) -> list[Collective]:
  """The collectives of a step compiled for `pod` (crossing hosts or not)."""
  return read(hlo, pod.num_chips, pod.devices_per_host)


def seconds(found: list[Collective], chip: chips.Chip) -> float:
  """The time one chip needs to send its share of every collective, if none of it
  overlapped compute: bytes / bandwidth per direction, the network's (chip's
  scale-out figure) for collectives that cross hosts."""
  return sum(item.sent_bytes / (chip.scale_out_bytes_per_s
                                if item.crosses_hosts and chip.scale_out_bytes_per_s
                                else chip.interconnect_bytes_per_s) for item in found)


def summary(found: list[Collective]) -> dict[str, dict[str, float]]:
  """{kind: {"count", "data_bytes", "sent_bytes"}} over a step."""
  totals: dict[str, dict[str, float]] = {}
  for item in found:
    row = totals.setdefault(item.kind, {"count": 0, "data_bytes": 0.0, "sent_bytes": 0.0})
    row["count"] += item.executions
    row["data_bytes"] += item.data_bytes * item.executions
    row["sent_bytes"] += item.sent_bytes
  return totals
