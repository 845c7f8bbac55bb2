"""Time, chip-hours, energy and money of a training run, from its FLOPs.

One model for every caller (compile_check's tables, `scaling optimal --topology`, the
`scaling cost` calculator): a run of F model FLOPs on n chips of peak P at model FLOPs
utilisation u takes F / (n P u) seconds; chip-hours are n times that; energy is
chip-hours x board power (accelerators only: hosts, cooling and networking are left
out, so it is a lower bound); cost is chip-hours x the price per chip-hour. The
back-of-envelope form (an effective FLOP/s per chip, i.e. P u) reproduces the figure
quoted for GPT-3 175B: 3.14e23 FLOPs at 28 TFLOP/s per V100 and $1.50 an hour is
3.1 million V100-hours, about $4.6M (Lambda Labs, 2020).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

DEFAULT_MFU = 0.4  # a well-tuned large dense model (PaLM reports 46%, MaxText 40-60%)


@dataclasses.dataclass(frozen=True)
class RunCost:
  """What a run of `flops` model FLOPs costs on `chips` chips."""
  flops: float
  chips: int
  effective_flops_per_chip: float  # peak x MFU
  seconds: float
  chip_hours: float
  energy_kwh: Optional[float]      # None where the chip's power is unknown
  cost: Optional[float]            # None without a price

  @property
  def days(self) -> float:
    return self.seconds / 86400


def run_cost(flops: float, chips: int, effective_flops_per_chip: float,
             power_watts: Optional[float] = None,
             price_per_chip_hour: Optional[float] = None) -> RunCost:
  """The run's time, chip-hours, energy and cost (see the module docstring)."""
  if flops < 0 or chips < 1 or effective_flops_per_chip <= 0:
    raise ValueError(f"need flops >= 0, chips >= 1 and a positive FLOP/s; got {flops}, "
                     f"{chips}, {effective_flops_per_chip}")
  seconds = flops / (chips * effective_flops_per_chip)
  chip_hours = chips * seconds / 3600
  return RunCost(flops=flops, chips=chips, effective_flops_per_chip=effective_flops_per_chip,
                 seconds=seconds, chip_hours=chip_hours,
                 energy_kwh=None if power_watts is None else chip_hours * power_watts / 1000,
                 cost=None if price_per_chip_hour is None else chip_hours * price_per_chip_hour)


def describe(cost: RunCost) -> str:
  """One line: wall-clock, chip-hours, energy and cost."""
  parts = [f"{_duration(cost.seconds)} on {cost.chips:,} chips",
           f"{cost.chip_hours:,.0f} chip-hours"]
  parts.append("energy unknown (give the chip's power)" if cost.energy_kwh is None else
               f"{cost.energy_kwh:,.0f} kWh (accelerators only)")
  if cost.cost is not None:
    parts.append(f"${cost.cost:,.0f}")
  return ", ".join(parts)


def _duration(seconds: float) -> str:
  if seconds < 3600:
    return f"{seconds / 60:.1f} minutes"
  if seconds < 3 * 86400:
    return f"{seconds / 3600:.1f} hours"
  return f"{seconds / 86400:,.1f} days"
