"""Which JAX backends a process starts: the CPU alone on a machine without accelerators.

`make install` brings libtpu and JAX's CUDA plugin for compile checks of pods
(compile_check builds TPU and GPU programs on a CPU machine). Installed, JAX tries to
start them in every process, and on a machine without the hardware each start fails
loudly (a CUDA traceback, libtpu's worker-hostname errors) before falling back to the
CPU. So where no accelerator device exists, t5x_lite asks JAX for the CPU backend only;
an explicit JAX_PLATFORMS always wins, and machines with TPUs or GPUs are left alone.
"""

from __future__ import annotations

import glob
import os
import sys

# Device files the kernel drivers create: TPU chips (/dev/accel*, or VFIO on newer
# TPU VMs, as jax's own hardware_utils looks for), NVIDIA GPUs, AMD GPUs (ROCm).
ACCELERATOR_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*",
                            "/dev/kfd")


def has_accelerator(root: str = "/") -> bool:
  """Whether this machine exposes a TPU, NVIDIA or AMD accelerator device."""
  return any(glob.glob(os.path.join(root, pattern.lstrip("/")))
             for pattern in ACCELERATOR_DEVICE_FILES)


def cpu_only_without_accelerators() -> bool:
  """Restricts JAX to its CPU backend when no accelerator exists and JAX_PLATFORMS is
  unset; returns whether it did. Effective until JAX starts its first backend."""
  if os.environ.get("JAX_PLATFORMS") or has_accelerator():
    return False
  os.environ["JAX_PLATFORMS"] = "cpu"
  if "jax" in sys.modules:  # jax read the environment when it was imported
    sys.modules["jax"].config.update("jax_platforms", "cpu")
  return True
