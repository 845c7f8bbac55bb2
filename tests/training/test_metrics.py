"""Progress and MFU: the peak counts real devices."""


import jax


def test_mfu_counts_real_devices_not_fake_cpu_devices():
  """Eight fake CPU devices share one host's cores: the job's peak is the host's, once."""
  from t5x_lite.training import metrics

  assert jax.device_count() == 8 and metrics.real_device_count() == 1
  peak, source = metrics.job_peak_flops("float32", per_device=1e11)
  assert peak == 1e11 and "per host" in source and "x 1" in source
