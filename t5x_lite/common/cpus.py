"""How many CPUs this process may really use, and XLA's CPU thread pool sized to it.

XLA's CPU client sizes its intra-op (Eigen) thread pool once, when the backend starts,
from the PJRT_NPROC or NPROC environment variable if set, else from the CPUs in the
process's affinity mask. A container's CPU quota (docker --cpus, Kubernetes limits,
CI runners) is not an affinity mask: there the pool gets a thread per host core while
the kernel lets the container run only `quota` cores' worth of time per period, and
the pool's workers, which spin while they wait for one another, burn that time and get
the whole process throttled. Measured on a 2-core machine with a 1-CPU quota, the 6 x
512 decoder's training step took 8.66 s with the default pool of 2 threads, 9.98 s
with 8 (a larger host) and 7.43 s with 1 (docs/performance.md). No XLA flag or
variable turns the spinning off, so the pool is sized to what the process may use.
"""

from __future__ import annotations

import math
import os
from typing import Optional

# Read by XLA's CPU client in this order (xla/pjrt/utils.cc, DefaultThreadPoolSize).
POOL_VARIABLES = ("PJRT_NPROC", "NPROC")


def cgroup_mounts(mountinfo: str) -> list[tuple[int, str, str]]:
  """(cgroup version, root of the hierarchy mounted, mount point) of every cgroup
  mount that can hold a CPU quota: cgroup2, or cgroup v1 with the cpu controller."""
  mounts = []
  for line in mountinfo.splitlines():
    fields = line.split()
    if " - " not in line or len(fields) < 5:
      continue
    after = line.split(" - ", 1)[1].split()
    kind, options = after[0], after[2].split(",") if len(after) > 2 else []
    if kind == "cgroup2":
      mounts.append((2, fields[3], fields[4]))
    elif kind == "cgroup" and "cpu" in options:
      mounts.append((1, fields[3], fields[4]))
  return mounts


def process_cgroups(cgroup: str) -> dict[int, str]:
  """{cgroup version: this process's path in that hierarchy} from /proc/self/cgroup
  (v1: the line naming the cpu controller; v2: the line with hierarchy id 0)."""
  paths = {}
  for line in cgroup.splitlines():
    parts = line.split(":", 2)
    if len(parts) != 3:
      continue
    hierarchy, controllers, path = parts
    if hierarchy == "0" and not controllers:
      paths[2] = path
    elif "cpu" in controllers.split(","):
      paths[1] = path
  return paths


def _read(path: str) -> Optional[str]:
  try:
    with open(path) as handle:
      return handle.read().strip()
  except OSError:
    return None


def _quota_in(directory: str, version: int) -> Optional[float]:
  """The CPU quota set on one cgroup directory, in CPUs (None: unlimited or unreadable)."""
  if version == 2:
    text = _read(os.path.join(directory, "cpu.max"))
    if not text or text.split()[0] == "max":
      return None
    quota, period = (text.split() + ["100000"])[:2]
  else:
    quota = _read(os.path.join(directory, "cpu.cfs_quota_us"))
    period = _read(os.path.join(directory, "cpu.cfs_period_us"))
    if not quota or not period or int(quota) <= 0:
      return None
  return int(quota) / int(period) if int(period) > 0 else None


def cgroup_cpu_limit(root: str = "/") -> Optional[float]:
  """The tightest CPU quota (in CPUs, may be fractional) on the cgroups holding this
  process and their ancestors, in either cgroup version; None when none is set or the
  system has no cgroups. `root` prefixes every path read (tests use a fake tree)."""
  mountinfo = _read(os.path.join(root, "proc/self/mountinfo"))
  cgroup = _read(os.path.join(root, "proc/self/cgroup"))
  if mountinfo is None or cgroup is None:
    return None
  paths = process_cgroups(cgroup)
  limits = []
  for version, mounted_root, mount_point in cgroup_mounts(mountinfo):
    path = paths.get(version)
    if path is None:
      continue
    # A mount shows the hierarchy from mounted_root down (containers mount their own
    # cgroup as the root); walk from the process's cgroup up to the mount's top.
    relative = os.path.relpath(path, mounted_root) if path.startswith(mounted_root) else "."
    parts = [] if relative == "." else relative.split("/")
    for depth in range(len(parts), -1, -1):
      directory = os.path.join(root, mount_point.lstrip("/"), *parts[:depth])
      quota = _quota_in(directory, version)
      if quota is not None:
        limits.append(quota)
  return min(limits) if limits else None


def available_cpus(root: str = "/") -> int:
  """CPUs this process may use: its affinity mask, capped by any cgroup CPU quota
  rounded down (a pool with one thread more than the quota overruns it every period,
  as Go's automaxprocs reasons), and at least 1."""
  cpus = len(os.sched_getaffinity(0))
  limit = cgroup_cpu_limit(root)
  if limit is not None:
    cpus = min(cpus, math.floor(limit))
  return max(1, cpus)


def size_thread_pool(share: int = 1) -> int:
  """Sizes XLA's CPU thread pool for this process (and the processes it starts) to
  available_cpus() // share, at least 1 (`share`: processes splitting this budget,
  e.g. parallel test workers), unless PJRT_NPROC or NPROC is already set: a user's
  setting wins. Must run before JAX's CPU backend starts. Returns the pool size."""
  for variable in POOL_VARIABLES:
    if os.environ.get(variable, "").strip().isdigit():
      return int(os.environ[variable])
  threads = max(1, available_cpus() // max(1, share))
  os.environ[POOL_VARIABLES[0]] = str(threads)
  return threads
