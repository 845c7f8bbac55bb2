"""Named pod topologies and their compile-only devices.

A topology is `<chip>:<shape>`: TPU slices as libtpu names them (`v5p:8x8x16`,
`v5e:2x2`, `v4:2x2x1`, `v6e:4x4`: chips along each ICI dimension), GPU clusters as
`<gpu>:<hosts>x<gpus per host>` or `<gpu>:<slices>x<hosts>x<gpus per host>`
(`h100:4x8` = 4 hosts of 8 H100s). `devices(topology)` returns jax devices that XLA
compiles for but that this process never runs on
(jax.experimental.topologies): libtpu for TPUs, JAX's CUDA plugin with a target
description of the GPU (`gpu_targets/*.txtpb`) for GPUs; neither needs the hardware.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Optional

import jax
from jax.experimental import topologies

from t5x_lite.common.errors import ConfigError
from t5x_lite.pods import chips

FORMS = ("TPU: v5e:2x2, v5p:4x4x4, v6e:4x4 (chips per ICI dimension, as libtpu names "
         "slices); GPU: h100:4x8, h200:1x8, a100:2x8 (hosts x GPUs per host, or slices x "
         "hosts x GPUs)")
# A slice's chips as jax names their kind, for finding the topology one runs on.
DEVICE_KINDS = {"TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
                "TPU v6 lite": "v6e", "TPU v6e": "v6e"}
# Chips per ICI dimension of the small slices a single host has (v5e/v6e: 2-D, v5p: 3-D).
HOST_SHAPES = {"v5e": {1: "1x1", 4: "2x2", 8: "2x4"}, "v6e": {1: "1x1", 4: "2x2", 8: "2x4"},
               "v5p": {1: "1x1x1", 4: "2x2x1", 8: "2x2x2"}}
TARGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets")


class TopologyError(ConfigError):
  """A topology name that does not parse, or a backend that is not installed."""


@dataclasses.dataclass(frozen=True)
class Topology:
  """A parsed topology name: the chip and the shape."""
  name: str
  chip: chips.Chip
  shape: tuple[int, ...]

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)

  @property
  def hosts(self) -> int:
    """GPU hosts (slices x hosts); TPU slices count chips, not hosts, here."""
    return math.prod(self.shape[:-1]) if self.chip.platform == "cuda" else 1

  @property
  def devices_per_host(self) -> Optional[int]:
    """GPUs per host of a multi-host GPU cluster (whose hosts talk over the network);
    None for one host or a TPU slice (one interconnect domain)."""
    return self.shape[-1] if self.hosts > 1 else None


def parse(name: str) -> Topology:
  """`name` as a Topology; TopologyError listing the accepted forms otherwise."""
  match = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+){1,2})", name.strip().lower())
  chip = chips.CHIPS.get(match.group(1)) if match else None
  if chip is None:
    raise TopologyError(f"unknown topology {name!r}; accepted forms: {FORMS}.")
  shape = tuple(int(n) for n in match.group(2).split("x"))
  if min(shape) < 1:
    raise TopologyError(f"topology {name!r} has an empty dimension; accepted forms: {FORMS}.")
  if chip.platform == "cuda" and not os.path.exists(_target_file(chip)):
    raise TopologyError(f"{chip.description} is not a compile target here (known GPU "
                        f"targets: {', '.join(_gpu_targets())}).")
  return Topology(name, chip, shape)


def _target_file(chip: chips.Chip) -> str:
  return os.path.join(TARGETS, f"{chip.name}.txtpb")


def _gpu_targets() -> list[str]:
  return sorted(f[:-len(".txtpb")] for f in os.listdir(TARGETS) if f.endswith(".txtpb"))


def devices(topology: Topology) -> list[jax.Device]:
  """Compile-only devices of `topology`, in jax's process-major order."""
  # libtpu allows one process per machine unless told otherwise (a lock file in /tmp);
  # compile-only devices touch no chip, so parallel checks (and test workers) may share it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    if topology.chip.platform == "tpu":
      shape = "x".join(map(str, topology.shape))
      # Slices smaller than a host's default chip count need the host bounds spelled out.
      bounds = ({"chips_per_host_bounds": [*topology.shape, 1, 1][:3]}
                if topology.num_chips < 4 else {})
      description = topologies.get_topology_desc(
          topology_name=f"{topology.chip.libtpu_name}:{shape}", platform="tpu", **bounds)
    else:
      shape = (1, *topology.shape) if len(topology.shape) == 2 else topology.shape
      with open(_target_file(topology.chip)) as handle:
        target = handle.read()
      description = topologies.get_topology_desc(
          platform="cuda", topology="x".join(map(str, shape)), target_config=target)
  except (RuntimeError, ValueError, ImportError) as error:
    extra = "jax[tpu]" if topology.chip.platform == "tpu" else "jax-cuda12-plugin"
    raise TopologyError(
        f"cannot build compile-only devices for {topology.name}: {error}. Compile checks "
        f"need {extra} (`pip install -e .[pods]` or `make install`).") from error
  found = list(description.devices)
  if len(found) != topology.num_chips:  # e.g. TPU v4, described per TensorCore
    raise TopologyError(f"libtpu describes {topology.name} as {len(found)} devices for "
                        f"{topology.num_chips} chips; compile checks support {FORMS}.")
  return found


def of_devices(devices: list[jax.Device]) -> Optional[str]:
  """The topology name of a single host's TPU devices (a Colab or one-host TPU VM), or
  None when they are not TPUs this module knows."""
  chip = DEVICE_KINDS.get(devices[0].device_kind) if devices else None
  shape = HOST_SHAPES.get(chip, {}).get(len(devices))
  return f"{chip}:{shape}" if shape else None
