"""Shared test setup."""

import os
import shutil

# Eight fake CPU devices for the sharding tests; set before anything imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# A persistent compilation cache shared by the test workers and every process they start
# (the trainer, notebooks, multi-process jobs): tiny models compiled once per suite run.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from t5x_lite.common import cpus  # noqa: E402

# Parallel test workers (pytest -n N) split the cores: each sizes XLA's CPU thread pool
# to its share, and the trainer and notebook processes it starts inherit that size.
cpus.size_thread_pool(share=int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))

import gin  # noqa: E402
import pytest  # noqa: E402

from t5x_lite.train import use_training_xla_flags  # noqa: E402

# In-process training compiles as `python -m t5x_lite.train` subprocesses do, so runs
# compared across the two agree bit for bit (no JAX computation has run yet).
use_training_xla_flags()


@pytest.fixture(scope="session", autouse=True)
def project_tasks():
  """The project's seqio tasks, registered as every entry point registers them."""
  from t5x_lite.data import register_tasks

  return register_tasks()


@pytest.fixture(scope="session")
def tiny_run_once(tmp_path_factory):
  """A tiny causal decoder trained for 2 steps (tests.train_helpers' settings), once per
  test process; use `tiny_run` for a copy of your own."""
  from tests import train_helpers

  directory = tmp_path_factory.mktemp("tiny_run")
  train_helpers.run_training(directory, steps=2)
  gin.clear_config()
  return directory


@pytest.fixture
def tiny_run(tiny_run_once, tmp_path):
  """This test's own copy of the 2-step tiny run (a MODEL_DIR it may resume or damage)."""
  copy = tmp_path / "tiny_run"
  shutil.copytree(tiny_run_once, copy)
  return copy


@pytest.fixture(autouse=True)
def clear_gin_bindings():
  """gin bindings are process-global; a preset parsed by one test must never
  leak into configs another test builds directly."""
  gin.clear_config()
  yield
  gin.clear_config()
