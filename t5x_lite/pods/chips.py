"""Accelerator chips as their datasheets give them: memory, dense bfloat16 peak, board
power and interconnect, the figures compile_check and the cost model divide by.

Sources (stated so a reader can check them): Google Cloud TPU system-architecture pages
for v4, v5e, v5p and v6e (HBM per chip, bf16 peak, ICI bandwidth per chip); TPU v4's
power from Jouppi et al. 2023 ("TPU v4", ISCA: 192 W maximum per chip; Google publishes
no per-chip power for later TPUs, so energy needs --power there); NVIDIA's datasheets for
the A100 80GB SXM, H100 SXM5, H200 SXM and V100 SXM2 (dense tensor-core bf16/fp16 peak,
i.e. without sparsity; max board power; NVLink bandwidth). Interconnect figures here are
per direction, half the totals the vendors quote (both directions summed), since a
ring collective sends and receives at once and is bound by one direction.
Scale-out bandwidth of GPU nodes: one 400 Gb/s InfiniBand NIC per GPU (DGX H100/H200,
DGX A100 with 200 Gb/s); TPU slices here are single ICI domains.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip.

  Attributes:
    name: our short name (the prefix of a topology: v5p, h100, ...).
    platform: "tpu" or "cuda" (the compile-only backend that builds for it).
    hbm_bytes: memory per chip.
    peak_flops: dense bfloat16 (V100: float16) matmul peak per chip, FLOP/s.
    power_watts: maximum board power per chip, None where unpublished.
    interconnect_bytes_per_s: per chip and direction within a slice or node (ICI, NVLink).
    scale_out_bytes_per_s: per chip between GPU nodes (InfiniBand); None for TPUs.
    libtpu_name: the prefix libtpu's topology names use (TPUs only).
    description: the datasheet's product name.
  """
  name: str
  platform: str
  hbm_bytes: int
  peak_flops: float
  power_watts: Optional[float]
  interconnect_bytes_per_s: float
  scale_out_bytes_per_s: Optional[float] = None
  libtpu_name: Optional[str] = None
  description: str = ""


CHIPS: dict[str, Chip] = {chip.name: chip for chip in (
    Chip("v4", "tpu", 32 * GiB, 275e12, 192.0, 2400e9 / 16, libtpu_name="v4",
         description="Cloud TPU v4"),
    Chip("v5e", "tpu", 16 * GiB, 197e12, None, 1600e9 / 16, libtpu_name="v5e",
         description="Cloud TPU v5e"),
    Chip("v5p", "tpu", 95 * GiB, 459e12, None, 4800e9 / 16, libtpu_name="v5p",
         description="Cloud TPU v5p"),
    Chip("v6e", "tpu", 32 * GiB, 918e12, None, 3584e9 / 16, libtpu_name="v6e",
         description="Cloud TPU v6e (Trillium)"),
    Chip("a100", "cuda", 80 * 10**9, 312e12, 400.0, 300e9, 200e9 / 8,
         description="NVIDIA A100 80GB SXM"),
    Chip("h100", "cuda", 80 * 10**9, 989e12, 700.0, 450e9, 400e9 / 8,
         description="NVIDIA H100 SXM5 80GB"),
    Chip("h200", "cuda", 141 * 10**9, 989e12, 700.0, 450e9, 400e9 / 8,
         description="NVIDIA H200 SXM 141GB"),
    # Not a compile target (XLA no longer builds for Volta's compute capability 7.0 in
    # this jaxlib); here for the cost model and the GPT-3 estimate it reproduces.
    Chip("v100", "cuda", 32 * 10**9, 125e12, 300.0, 150e9, 100e9 / 8,
         description="NVIDIA V100 SXM2 32GB"),
)}


def get(name: str) -> Chip:
  """The chip called `name` (KeyError listing the known ones otherwise)."""
  if name not in CHIPS:
    raise KeyError(f"unknown chip {name!r}; known: {', '.join(CHIPS)}")
  return CHIPS[name]
