"""Topology names: TPU slices as libtpu names them, GPU clusters as hosts x GPUs."""

import jax
import pytest

from t5x_lite.pods import topology


@pytest.mark.parametrize("name, chip, chips_", [
    ("v5p:8x8x16", "v5p", 1024), ("v5e:2x2", "v5e", 4), ("v6e:1x1", "v6e", 1),
    ("h100:4x8", "h100", 32), ("h200:1x8", "h200", 8), ("H100:1x4x8", "h100", 32)])
def test_accepted_forms(name, chip, chips_):
  parsed = topology.parse(name)
  assert parsed.chip.name == chip and parsed.num_chips == chips_


@pytest.mark.parametrize("name", ["v5p", "v9:2x2", "v5e:2x2x2x2", "h100:0x8", "tpu-v5p-64",
                                  "v100:1x8"])
def test_bad_names_list_the_accepted_forms(name):
  with pytest.raises(topology.TopologyError) as error:
    topology.parse(name)
  message = str(error.value)
  assert name in message or "not a compile target" in message
  assert "v5p:4x4x4" in message or "known GPU targets" in message


def test_a_missing_backend_names_the_extra_to_install(monkeypatch):
  def unavailable(**kwargs):
    raise RuntimeError("Unable to initialize backend 'tpu'")
  monkeypatch.setattr(topology.topologies, "get_topology_desc", unavailable)
  with pytest.raises(topology.TopologyError) as error:
    topology.devices(topology.parse("v5p:2x2x1"))
  assert "pip install -e .[pods]" in str(error.value) and "jax[tpu]" in str(error.value)


@pytest.mark.parametrize("name", ["v5e:1x1", "v6e:1x1", "v5p:2x2x1", "v5e:2x2"])
def test_small_slices_have_one_device_per_chip(name):
  pod = topology.parse(name)
  devices = topology.devices(pod)
  assert len(devices) == pod.num_chips
  assert topology.of_devices(devices) == name  # and the name is found back from them


def test_devices_that_are_not_known_tpus_have_no_topology():
  assert topology.of_devices(jax.devices()) is None
