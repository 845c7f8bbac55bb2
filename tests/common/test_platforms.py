"""JAX starts only its CPU backend where no accelerator exists, unless told otherwise."""

import os
import subprocess
import sys

import pytest

from t5x_lite.common import platforms


def test_device_files_reveal_accelerators(tmp_path):
  assert not platforms.has_accelerator(str(tmp_path))
  for device in ("dev/nvidia0", "dev/accel0", "dev/kfd"):
    root = tmp_path / device.replace("/", "_")
    (root / "dev").mkdir(parents=True)
    (root / device).touch()
    assert platforms.has_accelerator(str(root))


def run(env: dict) -> str:
  code = ("import t5x_lite, os, jax; "
          "print(os.environ.get('JAX_PLATFORMS'), jax.devices()[0].platform)")
  return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        check=True).stdout.split("\n")[-2]


def test_without_accelerators_jax_stays_on_the_cpu(monkeypatch):
  if platforms.has_accelerator():
    pytest.skip("this machine has an accelerator: nothing is restricted, as intended")
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  assert run(env) == "cpu cpu"


def test_an_explicit_choice_or_an_accelerator_wins(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert not platforms.cpu_only_without_accelerators()
  assert os.environ["JAX_PLATFORMS"] == "tpu"
  monkeypatch.delenv("JAX_PLATFORMS")
  monkeypatch.setattr(platforms, "has_accelerator", lambda root="/": True)
  assert not platforms.cpu_only_without_accelerators()
  assert "JAX_PLATFORMS" not in os.environ
