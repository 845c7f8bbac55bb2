"""Pipeline parallelism (models/pipeline_parallel.py): a stack's layers over the mesh's "stage"
axis train exactly as without a pipeline (GPipe and circular schedules, 2 and 4 stages,
4 and 8 microbatches, composed with data and tensor parallelism), checkpoints keep the
per-layer layout (a run resumes with another number of stages), and settings that
cannot work are one clear error naming the numbers."""

import json
import re

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from t5x_lite import gin_utils
from t5x_lite.common import partitioning
from t5x_lite.data import get_batches
from t5x_lite.inference import decoding
from t5x_lite.models import create_model, params, pipeline_parallel
from t5x_lite.runs import loading
from t5x_lite.training import optim
from t5x_lite.training.steps import make_step_functions
from tests import train_helpers as helpers

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)

LAYERS = 8  # divisible by 2 and 4 stages x 1 and 2 repeats
BATCH = 32  # 4 or 8 microbatches whose rows still split over 2-4 data shards


def config_for(architecture: str, **knobs):
  config = gin_utils.model_config([f"models/tiny_{architecture}.gin"])
  encoder = LAYERS if config.is_encoder_decoder else 0
  return config.replace(num_decoder_layers=LAYERS, num_encoder_layers=encoder,
                        scan_layers=True, **knobs)


def train_on_mesh(config, shape, batches):
  """Per-step losses and the final parameters of 5 steps on a mesh of `shape`."""
  mesh = partitioning.create_mesh(shape, jax.devices()[:int(np.prod(shape))])
  optimizer = optim.make_optimizer(optim.OptimizerConfig(), optim.make_schedule(
      optim.ScheduleConfig(warmup_steps=2), total_steps=5))
  steps = make_step_functions(config, optimizer, mesh)
  state = steps.init()
  losses = []
  for batch in batches:
    state, stats = steps.train(state, partitioning.global_batch(batch, mesh))
    losses.append(float(stats["loss"]) / float(stats["tokens"]))
  return losses, jax.tree.map(np.asarray, state["params"])


@pytest.fixture(scope="module", params=["causal_decoder", "encoder_decoder"])
def reference(request):
  architecture = request.param
  task, lengths = helpers.TASKS[architecture]
  iterator = get_batches(task, lengths, "train", BATCH, architecture, seed=0)
  batches = [next(iterator) for _ in range(5)]
  losses, params = train_on_mesh(config_for(architecture), (1, 1, 1, 1), batches)
  assert losses[-1] < losses[0]
  return architecture, batches, losses, params


@pytest.mark.parametrize("shape,microbatches,repeats", [
    ((1, 1, 1, 2), 4, 1),   # GPipe, 2 stages (mesh: data, fsdp, tensor, stage)
    ((1, 1, 1, 4), 8, 1),   # GPipe, 4 stages
    ((1, 1, 1, 2), 8, 2),   # circular, 2 stages
    ((1, 1, 1, 4), 4, 2),   # circular, 4 stages
    ((2, 1, 2, 2), 4, 1),   # data x tensor x stage
], ids=["gpipe-2x4", "gpipe-4x8", "circular-2x8x2", "circular-4x4x2", "stage2-data2-tensor2"])
def test_pipelined_training_equals_training_without_a_pipeline(reference, shape, microbatches,
                                                               repeats):
  architecture, batches, losses, params = reference
  config = config_for(architecture, pipeline_microbatches=microbatches,
                      pipeline_repeats=repeats)
  pipelined_losses, pipelined_params = train_on_mesh(config, shape, batches)
  np.testing.assert_allclose(pipelined_losses, losses, rtol=0, atol=1e-5)
  for (path, value), expected in zip(jax.tree_util.tree_leaves_with_path(pipelined_params),
                                     jax.tree.leaves(params)):
    np.testing.assert_allclose(value, expected, rtol=0, atol=1e-5, err_msg=str(path))


def test_a_run_resumes_with_another_number_of_stages(tmp_path):
  settings = {"make_schedule.name": "'constant'", "BATCH_SIZE": 16,
              "TransformerConfig.num_decoder_layers": 4, "TransformerConfig.scan_layers": True,
              "TransformerConfig.pipeline_microbatches": 4}
  helpers.run_training(tmp_path / "straight", steps=4, **settings)
  helpers.run_training(tmp_path / "switched", steps=2, mesh="pipeline", **settings)
  metrics = [json.loads(line) for line in open(tmp_path / "switched" / "metrics.jsonl")]
  bubble = [m["pipeline_bubble"] for m in metrics if "pipeline_bubble" in m]
  assert bubble and bubble[0] == pytest.approx(1 / 5)  # (S - 1) / (R M + S - 1), S=2, M=4
  saved = helpers.saved_state(tmp_path / "switched")
  assert "params.decoder.layers.3.mlp.wo.kernel.value" in saved  # per layer on disk
  helpers.run_training(tmp_path / "switched", steps=4, mesh="pipeline", PIPELINE_STAGES=4,
                       **settings)
  straight, switched = (helpers.train_losses(tmp_path / run) for run in ("straight", "switched"))
  assert straight.keys() == switched.keys()
  np.testing.assert_allclose(list(switched.values()), list(straight.values()), atol=1e-5)
  final = helpers.saved_params(tmp_path / "switched")
  for name, value in helpers.saved_params(tmp_path / "straight").items():
    np.testing.assert_allclose(final[name], value, atol=1e-5, err_msg=name)
  # A pipelined run's checkpoint decodes like any (the stack runs unpipelined).
  prompts = np.arange(1, 9).reshape(1, 8)
  greedy = [decoding.generate(loading.load_model(str(tmp_path / run)), prompts,
                              max_new_tokens=6, eos_id=-1).tokens for run in ("straight",
                                                                             "switched")]
  np.testing.assert_array_equal(*greedy)


@pytest.mark.parametrize("layers,stages,microbatches,repeats,batch,message", [
    (6, 4, 4, 1, 16, "decoder's 6 layers do not split into 4 stages x 1 repeats"),
    (4, 2, 4, 3, 16, "4 layers do not split into 2 stages x 3 repeats"),
    (2, 4, 4, 1, 16, "stage axis (4) is larger than the decoder's 2 layers"),
    (4, 4, 2, 1, 16, "pipeline_microbatches=2 is smaller than the 4 stages"),
    (4, 2, 4, 1, 6, "batch of 6 sequences does not split into"),
])
def test_settings_a_pipeline_cannot_run_are_one_clear_error(layers, stages, microbatches,
                                                            repeats, batch, message):
  with pytest.raises(pipeline_parallel.PipelineError, match=re.escape(message)):
    pipeline_parallel.check(layers, stages, microbatches, repeats, batch)


def test_a_bad_pipeline_run_stops_before_writing_anything(tmp_path):
  with pytest.raises(pipeline_parallel.PipelineError, match="6 layers do not split into 4 stages"):
    helpers.run_training(tmp_path, steps=1, mesh="pipeline", **{
        "PIPELINE_STAGES": 4, "TransformerConfig.num_decoder_layers": 6, "BATCH_SIZE": 16})
  assert not (tmp_path / "checkpoints").exists()


def test_the_bubble_is_the_schedules_idle_fraction():
  assert pipeline_parallel.bubble_fraction(4, 8) == pytest.approx(3 / 11)
  assert pipeline_parallel.bubble_fraction(4, 8, repeats=2) == pytest.approx(3 / 19)


@pytest.mark.parametrize("architecture", ["causal_decoder", "encoder_decoder"])
def test_the_layout_never_changes_the_initial_model(architecture):
  # Unrolled on one device, scanned on one device, scanned over 2 and 4 pipeline stages:
  # the same seed gives the same parameters, bit for bit (layer by layer).
  config = config_for(architecture)
  unrolled = params.flat_params(create_model(config.replace(scan_layers=False), seed=0))
  for shape in [(1, 1, 1, 1), (1, 1, 1, 2), (2, 1, 1, 4)]:
    mesh = partitioning.create_mesh(shape, jax.devices()[:int(np.prod(shape))])
    state = make_step_functions(config, optax.sgd(0.1), mesh).init()
    initial = params.flat_params(nnx.merge(nnx.graphdef(params.abstract_model(config)),
                                           state["params"]))
    assert initial.keys() == unrolled.keys()
    for path, value in unrolled.items():
      np.testing.assert_array_equal(initial[path], value, err_msg=f"{shape} {path}")
