"""Collectives read from optimized HLO: group membership in each of XLA's three spellings,
and whether a collective's groups stay inside a GPU host (NVLink) or cross hosts."""

import pytest

from t5x_lite.pods import chips, collectives

# Instructions as XLA:GPU writes them for a (data 2, fsdp 4) mesh over 2 hosts of 4 GPUs.
FSDP_GATHER = ("  %all-gather-start = ((f32[16,64]{1,0}), f32[64,64]{1,0}) all-gather-start("
               "%p), channel_id=1, replica_groups=mesh['axis_0'=4,'axis_1'=2], "
               "device_ids=([2,4]T(1,0)) {'axis_0'}, dimensions={0}, use_global_device_ids=true")
DATA_ALL_REDUCE = ("  %all-reduce-start = f32[1024]{0} all-reduce-start(%g), channel_id=2, "
                   "replica_groups=mesh['axis_0'=4,'axis_1'=1,'axis_2'=2], device_ids=([2,4]"
                   "T(1,0)) {'axis_2'}, use_global_device_ids=true, to_apply=%add")
HLO = f"""HloModule step

ENTRY %main (p: f32[16,64], g: f32[1024]) -> f32[64,64] {{
{FSDP_GATHER}
{DATA_ALL_REDUCE}
  %iota_reduce = f32[8]{{0}} all-reduce(%x), replica_groups=[4,2]<=[2,4]T(1,0), to_apply=%add
  %listed = f32[8]{{0}} all-reduce(%x), replica_groups={{{{0,1,2,3}},{{4,5,6,7}}}}, to_apply=%add
}}
"""


def test_groups_are_read_in_each_of_xlas_spellings():
  assert collectives._groups(FSDP_GATHER) == [[0, 1, 2, 3], [4, 5, 6, 7]]
  assert collectives._groups(DATA_ALL_REDUCE) == [[0, 4], [1, 5], [2, 6], [3, 7]]
  assert collectives._groups("replica_groups=[4,2]<=[2,4]T(1,0), x") == [
      [0, 4], [1, 5], [2, 6], [3, 7]]
  assert collectives._groups("replica_groups={{0,1,2,3},{4,5,6,7}}, x") == [
      [0, 1, 2, 3], [4, 5, 6, 7]]


def test_fsdp_inside_hosts_stays_on_nvlink_and_data_parallelism_crosses_the_network():
  found = collectives.read(HLO, 8, devices_per_host=4)
  assert [(c.kind, c.group, c.crosses_hosts) for c in found] == [
      ("all-gather", 4, False), ("all-reduce", 2, True), ("all-reduce", 2, True),
      ("all-reduce", 4, False)]
  gather, data, *_ = found
  h100 = chips.get("h100")
  assert gather.sent_bytes == pytest.approx(0.75 * 4 * 64 * 64)  # ring: 3/4 of the result
  assert data.sent_bytes == pytest.approx(2 * 0.5 * 4096)        # all-reduce: twice that
  assert collectives.seconds(found[:2], h100) == pytest.approx(
      gather.sent_bytes / h100.interconnect_bytes_per_s
      + data.sent_bytes / h100.scale_out_bytes_per_s)
  # One host (or a TPU slice): nothing crosses.
  assert not any(c.crosses_hosts for c in collectives.read(HLO, 8))
