"""μP (models/mup.py): the standard parametrization is unchanged, and under μP every
tensor gets the initialisation, learning rate and forward multiplier of the documented
table, for all three architectures; μP runs resume exactly; bad settings are one error."""

import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from t5x_lite.common.errors import ConfigError
from t5x_lite.models import TransformerConfig, create_model, mup
from t5x_lite.training import optim
from tests import train_helpers as helpers
from tests.models import standard_reference

ARCHITECTURES = ("causal_decoder", "prefix_decoder", "encoder_decoder")
REFERENCE = os.path.join(os.path.dirname(__file__), "..", "testdata",
                         "standard_parametrization.npz")


# The reference was written on another machine, and XLA:CPU does not promise the same
# float32 round-off on every processor (vector width, fusion and reduction order
# differ), so it is compared within round-off, not bit for bit. A reordered float32
# computation errs by about eps per rounding step relative to the terms it combines, and
# the deepest path here (embedding, two blocks of norm, attention and MLP, the output
# projection; or one AdamW step on top of it) is under 64 such steps: tolerance
# 64 eps x the array's largest magnitude (2.9e-5 for logits of scale 3.8). Measured
# across machines and XLA flag sets: at most 3.6 eps x scale. A 1e-3 change of any
# scale the μP rules set moves the arrays by over 100x this tolerance (tests below).
ROUND_OFF_STEPS = 64


def deviation_in_tolerances(actual: np.ndarray, expected: np.ndarray) -> float:
  """max |actual - expected| over the float32 round-off tolerance (<= 1 passes)."""
  tolerance = ROUND_OFF_STEPS * np.finfo(np.float32).eps * np.abs(expected).max()
  return float(np.abs(actual - expected).max() / tolerance)


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(REFERENCE))


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("name", list(standard_reference.CONFIGS))
def test_the_standard_parametrization_computes_what_it_did_before_mup(name, reference):
  # Written by the code before μP existed (standard_reference.py).
  for key, value in standard_reference.outputs(name).items():
    assert deviation_in_tolerances(value, reference[key]) <= 1, key


def test_a_logit_scale_off_by_one_part_in_a_thousand_fails_the_reference_by_far(reference):
  logits = standard_reference.outputs("causal_decoder")["causal_decoder/logits"]
  assert deviation_in_tolerances(logits * (1 + 1e-3), reference["causal_decoder/logits"]) > 100


@pytest.mark.parametrize("name", ["causal_decoder", "t5_style"])
def test_an_attention_scale_off_by_one_percent_fails_the_reference_by_far(name, reference,
                                                                           monkeypatch):
  original = mup.attention_logit_scale
  monkeypatch.setattr(mup, "attention_logit_scale", lambda config: original(config) * 1.01)
  logits = standard_reference.outputs(name)[f"{name}/logits"]
  assert deviation_in_tolerances(logits, reference[f"{name}/logits"]) > 100


def config(architecture: str, d_model: int, **fields) -> TransformerConfig:
  return TransformerConfig(architecture=architecture, vocab_size=128, d_model=d_model,
                           num_heads=d_model // 32, head_dim=32, d_ff=2 * d_model,
                           num_decoder_layers=2,
                           num_encoder_layers=2 if architecture == "encoder_decoder" else 0,
                           **fields)


def mup_config(architecture: str, d_model: int, base: int = 64, **fields) -> TransformerConfig:
  return config(architecture, d_model, parametrization="mup", mup_base_d_model=base, **fields)


def flat_params(model) -> dict[str, np.ndarray]:
  return {"/".join(map(str, path)): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_at_the_base_width_mup_is_the_standard_model(architecture):
  standard = create_model(config(architecture, 64), seed=1)
  at_base = create_model(mup_config(architecture, 64), seed=1)
  batch = standard_reference.batch(standard.config)
  np.testing.assert_array_equal(np.asarray(at_base(batch)), np.asarray(standard(batch)))
  assert set(mup.learning_rate_multipliers(at_base.config).values()) == {1.0}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_tensor_has_the_documented_role(architecture):
  model = create_model(mup_config(architecture, 128, use_bias=True, norm="layer",
                                  norm_bias=True, position_encoding="learned"))
  roles = {}
  for path, _ in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)):
    roles["/".join(str(getattr(k, "key", k)) for k in path[:-1])] = mup.parameter_role(path)
  for name, role in roles.items():
    if name.endswith(("/scale", "/bias")):
      assert role == "vector", name
    elif name.startswith(("token_embedding", "decoder/absolute_positions",
                          "encoder/absolute_positions")):
      assert role == "input", name
    elif name.startswith("logits_dense"):
      assert role == "output", name
    else:  # every projection of every block
      assert role == "hidden" and name.endswith("/kernel"), name
      assert any(f"/{part}/" in name for part in ("self_attention", "cross_attention", "mlp"))
  assert {"input", "hidden", "output", "vector"} == set(roles.values())


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_initial_variances_follow_the_table(architecture):
  base, wide = (flat_params(create_model(mup_config(architecture, width), seed=0))
                for width in (64, 256))
  for name in base:
    ratio = wide[name].var() / base[name].var() if base[name].var() else None
    if name.endswith("mlp/wo/kernel") or name.endswith("mlp/wi_0/kernel") or (
        name.endswith("attention/query/kernel")):
      assert ratio == pytest.approx(64 / 256, rel=0.15), name  # hidden: base / width
    if name.startswith("token_embedding"):
      assert ratio == pytest.approx(1.0, rel=0.15), name  # input: constant


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_logits_are_the_standard_models_divided_by_the_width_multiplier(architecture):
  # Same seed, same parameters; with the standard head_dim anchor only the output
  # multiplier differs: 1 / m with m = 256 / 64.
  standard = create_model(config(architecture, 256), seed=2)
  scaled = create_model(mup_config(architecture, 256), seed=2)
  batch = standard_reference.batch(standard.config)
  np.testing.assert_allclose(np.asarray(scaled(batch)), np.asarray(standard(batch)) / 4,
                             rtol=1e-5, atol=1e-6)


def test_attention_logits_fall_as_one_over_head_dim_beyond_the_base_head_dim():
  wide_heads = config("causal_decoder", 256).replace(head_dim=128, num_heads=2)
  assert mup.attention_logit_scale(wide_heads) == pytest.approx(1 / 128 ** 0.5)  # standard
  wide_heads = wide_heads.replace(parametrization="mup", mup_base_d_model=64,
                                  mup_base_head_dim=32)
  assert mup.attention_logit_scale(wide_heads) == pytest.approx(32 ** 0.5 / 128)
  assert mup.attention_logit_scale(wide_heads.replace(mup_base_head_dim=128)) == (
      pytest.approx(1 / 128 ** 0.5))


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_adam_moves_each_tensor_by_the_learning_rate_times_its_multiplier(architecture):
  # Adam's first update is lr x sign(gradient) (eps aside): each tensor's largest
  # change is its role's learning rate, so the optimizer applies the table.
  model = create_model(mup_config(architecture, 256))
  graphdef, params = nnx.split(model, nnx.Param)
  batch = standard_reference.batch(model.config)
  settings = optim.OptimizerConfig(weight_decay=0.0, clip_norm=None, eps=1e-30)
  optimizer = optim.make_optimizer(settings, optax.constant_schedule(1e-3), model.config)

  def loss(params):
    logits = nnx.merge(graphdef, params)(batch)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch["decoder_target_tokens"]).mean()

  updates, _ = optimizer.update(jax.grad(loss)(params), optimizer.init(params), params)
  expected = {"input": 1e-3, "hidden": 1e-3 * 64 / 256, "output": 1e-3, "vector": 1e-3}
  for path, update in jax.tree_util.tree_leaves_with_path(updates):
    largest = float(np.max(np.abs(update)))
    if largest:  # a tensor with no gradient (e.g. an unused position row) stays put
      assert largest == pytest.approx(expected[mup.parameter_role(path)], rel=1e-4), path


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_mup_runs_resume_exactly(tmp_path):
  settings = {"make_schedule.name": "'constant'", "TransformerConfig.parametrization": "'mup'",
              "TransformerConfig.mup_base_d_model": 32}
  helpers.run_training(tmp_path / "straight", steps=4, **settings)
  helpers.run_training(tmp_path / "resumed", steps=2, **settings)
  helpers.run_training(tmp_path / "resumed", steps=4, **settings)
  assert helpers.train_losses(tmp_path / "resumed") == helpers.train_losses(tmp_path / "straight")
  straight, resumed = (helpers.saved_state(tmp_path / run) for run in ("straight", "resumed"))
  assert any(".hidden." in name for name in straight)  # per-role optimizer state
  for name in straight:
    np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)


@pytest.mark.parametrize("fields,message", [
    (dict(parametrization="mup"), "needs TransformerConfig.mup_base_d_model"),
    (dict(parametrization="mup", mup_base_d_model=512), "is larger than d_model=256"),
    (dict(parametrization="mu_p"), "choose one of ('standard', 'mup')"),
])
def test_bad_mup_settings_are_one_clear_error(fields, message):
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config("causal_decoder", 256, **fields)


def test_mup_with_adafactor_is_refused_naming_the_supported_optimizer(tmp_path):
  with pytest.raises(ConfigError, match="supports the optimizers \\('adamw',\\)"):
    helpers.run_training(tmp_path, steps=1, **{"TransformerConfig.parametrization": "'mup'",
                                               "TransformerConfig.mup_base_d_model": 32,
                                               "make_optimizer.name": "'adafactor'"})
  assert not (tmp_path / "checkpoints").exists()
