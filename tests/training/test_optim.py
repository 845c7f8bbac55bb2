"""Optimizers and schedules: what the trainer builds from OptimizerConfig and
ScheduleConfig."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5x_lite.training import optim


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


@pytest.mark.parametrize("shape, middle", [
    ("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - np.sqrt(0.5))])
def test_wsd_warms_up_holds_the_peak_then_decays_in_its_shape(shape, middle):
  """100 steps, warmup 10, the last 20% decaying from 1.0 to 0.1: each shape's formula
  at the boundaries and halfway through the decay."""
  config = optim.ScheduleConfig(name="wsd", peak_learning_rate=1.0, warmup_steps=10,
                                final_fraction=0.1, decay_fraction=0.2, decay_shape=shape)
  schedule = optim.make_schedule(config, 100)
  assert config.stable_end(100) == 80
  assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == float(schedule(45)) == float(schedule(80)) == 1.0
  assert float(schedule(90)) == pytest.approx(0.1 + 0.9 * middle, abs=1e-6)
  assert float(schedule(100)) == pytest.approx(0.1)
  assert float(schedule(81)) < 1.0


def test_wsd_before_its_decay_is_the_constant_schedule_value_for_value():
  """What lets a cooldown branch continue a constant run (or a longer WSD run) exactly."""
  steps = jnp.arange(800)
  constant = optim.make_schedule(optim.ScheduleConfig(name="constant", warmup_steps=50), 10)
  for total in (1000, 5000):
    wsd = optim.make_schedule(optim.ScheduleConfig(name="wsd", warmup_steps=50), total)
    np.testing.assert_array_equal(np.asarray(wsd(steps)), np.asarray(constant(steps)))


@pytest.mark.parametrize("settings, message", [
    ({"decay_fraction": 0.0}, "decay_fraction must be in"),
    ({"decay_fraction": 1.5}, "decay_fraction must be in"),
    ({"decay_shape": "exp"}, "decay_shape='exp'"),
])
def test_bad_wsd_settings_are_one_clear_error(settings, message):
  with pytest.raises(optim.OptimizerConfigError, match=message):
    optim.ScheduleConfig(name="wsd", **settings)


def test_a_wsd_warmup_that_runs_into_the_decay_is_refused():
  config = optim.ScheduleConfig(name="wsd", warmup_steps=90, decay_fraction=0.2)
  with pytest.raises(optim.OptimizerConfigError, match="runs into the decay"):
    optim.make_schedule(config, 100)


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
