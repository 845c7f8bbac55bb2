"""Meshes, optimizers and the loss: the pieces the training loop is built from."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5x_lite import losses, optim, partitioning


def test_a_minus_one_mesh_axis_takes_the_remaining_devices():
  mesh = partitioning.create_mesh((2, -1, 2))  # three entries: one pipeline stage
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "stage": 1}
  mesh = partitioning.create_mesh((1, -1, 2, 2))
  assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 2, "stage": 2}


@pytest.mark.parametrize("shape, message", [
    ((3, 1, 1), "needs 3 devices but 8 are available"),
    ((3, -1, 1), "cannot fill 8 devices"),
    ((2, 2), "must have 4 positive entries"),
    ((2, 1, 1, 1, 1), "(or 3 for ('data', 'fsdp', 'tensor'))"),
])
def test_a_mesh_that_does_not_fit_the_devices_is_one_clear_error(shape, message):
  with pytest.raises(partitioning.MeshError, match=re.escape(message)):
    partitioning.create_mesh(shape)


def test_dimensions_the_mesh_cannot_divide_are_replicated():
  mesh = partitioning.create_mesh((1, 2, 4))
  # 2 KV heads cannot be split 4 ways: replicated; 64-wide embed splits over fsdp.
  spec = partitioning.mesh_axes_for(("embed", "kv_heads", "kv"), (64, 2, 16), mesh)
  assert spec == jax.sharding.PartitionSpec("fsdp", None, None)
  spec = partitioning.mesh_axes_for(("embed", "heads", "kv"), (64, 8, 16), mesh)
  assert spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)


def test_warmup_cosine_rises_linearly_then_decays_to_a_tenth_of_the_peak():
  schedule = optim.make_schedule(optim.ScheduleConfig("warmup_cosine", 1e-3, warmup_steps=10),
                                 total_steps=100)
  assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(5e-4)
  assert float(schedule(10)) == pytest.approx(1e-3)
  assert float(schedule(100)) == pytest.approx(1e-4)


def test_rsqrt_and_constant_schedules():
  rsqrt = optim.make_schedule(optim.ScheduleConfig("rsqrt", 0.01, warmup_steps=10_000), 1000)
  assert float(rsqrt(10)) == pytest.approx(0.01) and float(rsqrt(40_000)) == pytest.approx(0.005)
  constant = optim.make_schedule(optim.ScheduleConfig("constant", 1e-3, warmup_steps=4), 1000)
  assert float(constant(2)) == pytest.approx(5e-4) and float(constant(1000)) == pytest.approx(1e-3)
  with pytest.raises(optim.OptimizerConfigError, match="choose one of"):
    optim.ScheduleConfig("linear")


def test_weight_decay_skips_norm_scales_and_biases():
  params = {"kernel": jnp.ones((3, 3)), "scale": jnp.ones((3,)), "bias": jnp.ones((3,))}
  optimizer = optim.make_optimizer(optim.OptimizerConfig("adamw", weight_decay=0.5,
                                                         clip_norm=None),
                                   optax.constant_schedule(0.1))
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
  assert float(updates["kernel"][0, 0]) == pytest.approx(-0.05)
  assert float(updates["scale"][0]) == 0.0 and float(updates["bias"][0]) == 0.0


def test_adafactor_has_t5s_settings():
  """T5's Adafactor: second moments factored into row and column statistics (matrices of at
  least 128 x 128), no momentum, updates clipped to RMS 1 and scaled by the parameter's
  RMS, and the learning rate from the schedule (no relative step)."""
  params = {"kernel": jnp.full((128, 256), 2.0), "scale": jnp.ones((256,))}
  optimizer = optim.make_optimizer(optim.OptimizerConfig("adafactor", weight_decay=0.0,
                                                         clip_norm=None),
                                   optax.constant_schedule(0.01))
  state = optimizer.init(params)
  factored = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "v_row"))
              if hasattr(s, "v_row")]
  assert len(factored) == 1
  assert factored[0].v_row["kernel"].shape == (128,)
  assert factored[0].v_col["kernel"].shape == (256,)
  assert factored[0].v["kernel"].shape == (1,)  # no full second moment for the matrix
  assert factored[0].v["scale"].shape == (256,)  # vectors keep a full one
  # No momentum: the only parameter-shaped state is the vector's second moment.
  shaped = [x for x in jax.tree.leaves(state) if x.shape in ((128, 256),)]
  assert not shaped
  grads = {"kernel": jnp.full((128, 256), 5.0), "scale": jnp.full((256,), 5.0)}
  updates, _ = optimizer.update(grads, state, params)
  # Clipped to RMS 1, times the parameter RMS (2 and 1), times the schedule's 0.01.
  np.testing.assert_allclose(updates["kernel"], -0.02, rtol=1e-5)
  np.testing.assert_allclose(updates["scale"], -0.01, rtol=1e-5)


def test_loss_is_cross_entropy_over_weighted_tokens_plus_z_loss():
  logits = jax.random.normal(jax.random.key(0), (2, 5, 11))
  targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
  weights = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
  sums = losses.token_loss_sums(logits, targets, weights, z_loss=1e-2)
  reference = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  assert float(sums.tokens) == 8
  assert float(sums.cross_entropy) == pytest.approx(float((reference * weights).sum()), rel=1e-6)
  log_z = jax.nn.logsumexp(logits, -1)
  assert float(sums.z_loss) == pytest.approx(float((1e-2 * log_z**2 * weights).sum()), rel=1e-6)
  assert float(sums.loss) == pytest.approx(float(sums.cross_entropy + sums.z_loss), rel=1e-6)


def test_label_smoothing_scores_the_best_possible_prediction_as_zero():
  vocab, smoothing = 7, 0.1
  targets = jnp.array([[2, 5]])
  best = jnp.log(optax.smooth_labels(jax.nn.one_hot(targets, vocab), smoothing))
  sums = losses.token_loss_sums(best, targets, jnp.ones((1, 2)), z_loss=0.0,
                                label_smoothing=smoothing)
  assert float(sums.loss) == pytest.approx(0.0, abs=1e-5)


def test_mfu_counts_real_devices_not_fake_cpu_devices():
  """Eight fake CPU devices share one host's cores: the job's peak is the host's, once."""
  from t5x_lite import metrics

  assert jax.device_count() == 8 and metrics.real_device_count() == 1
  peak, source = metrics.job_peak_flops("float32", per_device=1e11)
  assert peak == 1e11 and "per host" in source and "x 1" in source
