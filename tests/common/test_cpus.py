"""XLA's CPU thread pool follows the cores a process may use: affinity and cgroup quota."""

import os
import subprocess
import sys

import pytest

from t5x_lite.common import cpus

V1_MOUNT = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
V2_MOUNT = "41 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n"
OTHER_MOUNTS = ("23 1 0:21 / / rw - ext4 /dev/vda rw\n"
                "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n")


def fake_system(root, mountinfo: str, cgroup: str, files: dict[str, str]) -> str:
  """A directory standing in for / : proc/self/{mountinfo,cgroup} and cgroup files."""
  for path, text in {"proc/self/mountinfo": OTHER_MOUNTS + mountinfo,
                     "proc/self/cgroup": cgroup, **files}.items():
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
  return str(root)


def test_cgroup_v1_quota_in_cpus(tmp_path):
  root = fake_system(tmp_path, V1_MOUNT, "5:memory:/docker/a\n4:cpu,cpuacct:/docker/a\n", {
      "sys/fs/cgroup/cpu,cpuacct/docker/a/cpu.cfs_quota_us": "150000",
      "sys/fs/cgroup/cpu,cpuacct/docker/a/cpu.cfs_period_us": "100000",
      "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1",
      "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000"})
  assert cpus.cgroup_cpu_limit(root) == 1.5
  assert cpus.available_cpus(root) == 1  # rounded down: 2 threads would overrun 1.5


def test_cgroup_v2_tightest_ancestor_wins(tmp_path):
  root = fake_system(tmp_path, V2_MOUNT, "0::/ci.slice/job\n", {
      "sys/fs/cgroup/ci.slice/job/cpu.max": "400000 100000",
      "sys/fs/cgroup/ci.slice/cpu.max": "200000 100000",
      "sys/fs/cgroup/cpu.max": "max 100000"})
  assert cpus.cgroup_cpu_limit(root) == 2.0


def test_container_sees_its_own_cgroup_as_the_mount_root(tmp_path):
  # Inside a container the hierarchy is mounted from the container's own cgroup.
  mount = "41 31 0:38 /docker/a /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
  root = fake_system(tmp_path, mount, "0::/docker/a\n", {"sys/fs/cgroup/cpu.max": "50000 100000"})
  assert cpus.cgroup_cpu_limit(root) == 0.5
  assert cpus.available_cpus(root) == 1  # never fewer than one thread


@pytest.mark.parametrize("files", [{"sys/fs/cgroup/cpu.max": "max 100000"}, {}])
def test_no_quota_leaves_the_affinity_mask(tmp_path, files):
  root = fake_system(tmp_path, V2_MOUNT, "0::/\n", files)
  assert cpus.cgroup_cpu_limit(root) is None
  assert cpus.available_cpus(root) == len(os.sched_getaffinity(0))


def test_no_cgroups_at_all(tmp_path):
  assert cpus.cgroup_cpu_limit(str(tmp_path)) is None


def test_pool_size_is_the_share_of_available_cpus(monkeypatch):
  for variable in cpus.POOL_VARIABLES:
    monkeypatch.delenv(variable, raising=False)
  monkeypatch.setattr(cpus, "available_cpus", lambda root="/": 6)
  assert cpus.size_thread_pool(share=4) == 1
  assert os.environ["PJRT_NPROC"] == "1"
  monkeypatch.delenv("PJRT_NPROC")
  assert cpus.size_thread_pool() == 6 and os.environ["PJRT_NPROC"] == "6"


@pytest.mark.parametrize("variable", cpus.POOL_VARIABLES)
def test_a_users_setting_wins(monkeypatch, variable):
  for name in cpus.POOL_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv(variable, "3")
  monkeypatch.setattr(cpus, "available_cpus", lambda root="/": 1)
  assert cpus.size_thread_pool() == 3
  assert os.environ[variable] == "3"


def xla_pool_threads(env: dict, affinity=None) -> int:
  """Threads of XLA's intra-op pool in a fresh process that ran one computation after
  sizing the pool as the commands do."""
  code = ("from t5x_lite.common import cpus; cpus.size_thread_pool(); import os, jax; "
          "jax.block_until_ready(jax.numpy.ones(8) + 1); "
          "names = [open(f'/proc/self/task/{t}/comm').read() "
          "         for t in os.listdir('/proc/self/task')]; "
          "print(sum(n.strip().endswith('XLAEigen') for n in names))")
  result = subprocess.run(
      [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
      preexec_fn=None if affinity is None else lambda: os.sched_setaffinity(0, affinity))
  return int(result.stdout.split()[-1])


def test_xla_reads_the_pool_size_we_set():
  """The variable the fix relies on is the one this jaxlib reads (a jaxlib that stopped
  reading it would silently bring back the oversized pool)."""
  env = {k: v for k, v in os.environ.items() if k not in cpus.POOL_VARIABLES}
  env.pop("XLA_FLAGS", None)
  assert xla_pool_threads({**env, "PJRT_NPROC": "5"}) == 5
  one_cpu = {min(os.sched_getaffinity(0))}
  assert xla_pool_threads(env, affinity=one_cpu) == 1
