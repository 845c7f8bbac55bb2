"""Shared test setup."""

import os

# Eight fake CPU devices for the sharding tests; set before anything imports jax.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import gin  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def project_tasks():
  """The project's seqio tasks, registered as every entry point registers them."""
  from t5x_lite.data import register_tasks

  return register_tasks()


@pytest.fixture(autouse=True)
def clear_gin_bindings():
  """gin bindings are process-global; a preset parsed by one test must never
  leak into configs another test builds directly."""
  gin.clear_config()
  yield
  gin.clear_config()
