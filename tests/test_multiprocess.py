"""Two processes on localhost (jax.distributed, CPU gloo collectives, 2 devices each)
train exactly like one process with 4 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.train_helpers import HANG_TIMEOUT_S

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multiprocess_worker.py")


def free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def run_job(num_processes: int, output: str) -> dict:
  port = free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  workers = [subprocess.Popen([sys.executable, WORKER, str(i), str(num_processes), str(port),
                               output], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for i in range(num_processes)]
  logs = [w.communicate(timeout=HANG_TIMEOUT_S)[0] for w in workers]
  assert all(w.returncode == 0 for w in workers), "\n".join(log[-3000:] for log in logs)
  with open(output) as handle:
    return json.load(handle)


def test_two_processes_with_two_devices_each_equal_one_process_with_four(tmp_path):
  single = run_job(1, str(tmp_path / "single.json"))
  double = run_job(2, str(tmp_path / "double.json"))
  assert (single["processes"], double["processes"]) == (1, 2)
  assert single["devices"] == double["devices"] == 4
  np.testing.assert_allclose(double["losses"], single["losses"], rtol=0, atol=1e-5)
