"""The training job as a user relies on it: sharding-invariant, exactly resumable,
preemption-safe, NaN-safe, and one clear error for each user mistake."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from t5x_lite import gin_utils, train
from t5x_lite.common import partitioning
from t5x_lite.data import get_batches
from t5x_lite.runs import checkpoints, loading
from t5x_lite.runs.checkpoints import Checkpointer
from t5x_lite.training import optim, trainer
from t5x_lite.training.steps import abstract_state, make_step_functions
from tests import train_helpers as helpers

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


run_training = helpers.run_training


def losses_on_mesh(architecture, shape, batches, microbatches=1):
  config = gin_utils.model_config([f"models/tiny_{architecture}.gin"])
  mesh = partitioning.create_mesh(shape, jax.devices()[:int(np.prod(shape))])
  optimizer = optim.make_optimizer(optim.OptimizerConfig(), optim.make_schedule(
      optim.ScheduleConfig(warmup_steps=2), total_steps=5))
  steps = make_step_functions(config, optimizer, mesh, microbatches=microbatches)
  state = steps.init()
  losses = []
  for batch in batches:
    state, stats = steps.train(state, partitioning.global_batch(batch, mesh))
    losses.append(float(stats["loss"]) / float(stats["tokens"]))
  return losses


@pytest.mark.parametrize("architecture", list(helpers.TASKS))
def test_sharded_training_matches_one_device(architecture):
  task, lengths = helpers.TASKS[architecture]
  iterator = get_batches(task, lengths, "train", 8, architecture, seed=0)
  batches = [next(iterator) for _ in range(5)]
  reference = losses_on_mesh(architecture, (1, 1, 1), batches)
  assert reference[-1] < reference[0]
  for shape in [(8, 1, 1), (2, 2, 2), (1, 2, 4)]:
    np.testing.assert_allclose(losses_on_mesh(architecture, shape, batches), reference,
                               rtol=0, atol=1e-5, err_msg=str(shape))


def test_gradient_accumulation_over_microbatches_equals_the_full_batch():
  task, lengths = helpers.TASKS["causal_decoder"]
  iterator = get_batches(task, lengths, "train", 8, "causal_decoder", seed=0)
  batches = [next(iterator) for _ in range(3)]
  np.testing.assert_allclose(losses_on_mesh("causal_decoder", (2, 1, 1), batches, microbatches=4),
                             losses_on_mesh("causal_decoder", (2, 1, 1), batches),
                             rtol=0, atol=1e-5)


def test_resumed_training_equals_uninterrupted_training(tmp_path):
  constant = {"make_schedule.name": "'constant'"}
  run_training(tmp_path / "straight", steps=6, **constant)
  run_training(tmp_path / "resumed", steps=3, **constant)
  result = run_training(tmp_path / "resumed", steps=6, **constant)
  assert result["step"] == 6
  assert helpers.train_losses(tmp_path / "resumed") == helpers.train_losses(tmp_path / "straight")
  straight, resumed = helpers.saved_params(tmp_path / "straight"), helpers.saved_params(
      tmp_path / "resumed")
  assert straight.keys() == resumed.keys()
  for name in straight:
    np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)
  for split in ("train", "eval"):
    assert os.listdir(tmp_path / "resumed" / "tensorboard" / split)  # TensorBoard event files.


@pytest.mark.parametrize("first,then", [(True, False), (False, True)],
                         ids=["scanned_then_unscanned", "unscanned_then_scanned"])
def test_checkpoints_store_one_layout_whatever_scan_layers_is(tmp_path, first, then):
  constant = {"make_schedule.name": "'constant'"}
  layout = lambda scanned: {"TransformerConfig.scan_layers": scanned}  # noqa: E731
  run_training(tmp_path / "switched", steps=3, **constant, **layout(first))
  saved = helpers.saved_state(tmp_path / "switched")
  assert "params.decoder.layers.1.mlp.wo.kernel.value" in saved  # per layer on disk
  assert "opt_state.1.0.mu.decoder.layers.1.mlp.wo.kernel.value" in saved

  # Restored into the other layout, every array (params and Adam's moments) is exact.
  config = loading.load_model(str(tmp_path / "switched")).config.replace(
      scan_layers=then)
  optimizer = optim.make_optimizer(optim.OptimizerConfig(), optax.constant_schedule(1e-3))
  mesh = partitioning.create_mesh((1, 1, 1), jax.devices()[:1])
  fresh = make_step_functions(config, optimizer, mesh).init()
  step, state, _ = Checkpointer(str(tmp_path / "switched" / "checkpoints"), 2).restore_latest(
      abstract_state(fresh))
  restored = checkpoints.on_disk(checkpoints.flatten_state(state))
  assert step == 3 and restored.keys() == saved.keys()
  for name, value in saved.items():
    np.testing.assert_array_equal(np.asarray(restored[name]), value, err_msg=name)

  # Training goes on in the other layout as in the first one (a layout changes only the
  # order of float operations: steps 5-6 agree to ~1e-5 relative, not bit for bit).
  run_training(tmp_path / "straight", steps=6, **constant, **layout(first))
  assert run_training(tmp_path / "switched", steps=6, **constant, **layout(then))["step"] == 6
  straight, switched = (helpers.train_losses(tmp_path / name) for name in ("straight",
                                                                           "switched"))
  np.testing.assert_allclose([switched[s] for s in range(1, 7)],
                             [straight[s] for s in range(1, 7)], rtol=1e-4, atol=0)
  # Inference loads the checkpoint into either layout, to the same logits.
  tokens = {"decoder_input_tokens": np.array([[0, 70, 71, 72]])}
  logits = [np.asarray(loading.load_model(str(tmp_path / "switched"),
                                              config.replace(scan_layers=s))(tokens))
            for s in (True, False)]
  np.testing.assert_allclose(logits[0], logits[1], rtol=0, atol=1e-5)


def test_a_checkpoint_restores_onto_a_different_mesh(tmp_path):
  constant = {"make_schedule.name": "'constant'", "BATCH_SIZE": 8}
  run_training(tmp_path / "straight", steps=6, **constant)
  run_training(tmp_path / "moved", steps=3, **constant)
  assert run_training(tmp_path / "moved", mesh="fsdp", steps=6, **constant)["step"] == 6
  straight, moved = helpers.train_losses(tmp_path / "straight"), helpers.train_losses(
      tmp_path / "moved")
  np.testing.assert_allclose([moved[s] for s in range(1, 7)], [straight[s] for s in range(1, 7)],
                             rtol=0, atol=1e-5)


def test_bfloat16_compute_trains_with_float32_parameters(tmp_path):
  result = run_training(tmp_path, steps=4, **{"TransformerConfig.dtype": "'bfloat16'"})
  losses = helpers.train_losses(tmp_path)
  assert result["step"] == 4 and losses[4] < losses[1]
  assert all(v.dtype == np.float32 for v in helpers.saved_params(tmp_path).values())


def wait_for_step(model_dir, step, process):
  deadline = time.time() + helpers.HANG_TIMEOUT_S
  while time.time() < deadline:
    if process.poll() is not None:
      raise AssertionError(f"training exited early: {process.communicate()}")
    if os.path.exists(os.path.join(model_dir, "metrics.jsonl")) and max(
        helpers.train_losses(model_dir) or {0: 0}) >= step:
      return
    time.sleep(0.2)
  raise AssertionError("training made no progress")


@pytest.fixture(scope="module")
def straight_30(tmp_path_factory):
  """An uninterrupted 30-step run, the reference of the preemption tests."""
  model_dir = tmp_path_factory.mktemp("straight_30")
  run_training(model_dir, steps=30)
  return model_dir


def test_sigterm_saves_the_step_reached_and_the_restart_continues_exactly(tmp_path,
                                                                          straight_30):
  model_dir = tmp_path / "preempted"
  command = [sys.executable, "-m", "t5x_lite.train", *helpers.command_line(model_dir, steps=30)]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  wait_for_step(model_dir, 4, process)
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=helpers.HANG_TIMEOUT_S)
  assert process.returncode == 0, err[-2000:]
  reached = max(helpers.train_losses(model_dir))
  assert reached < 30, "the run finished before the signal; nothing was tested"
  assert Checkpointer(str(model_dir / "checkpoints"), 2).latest_step() == reached
  assert f"saved step {reached}" in out

  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          timeout=helpers.HANG_TIMEOUT_S)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"step {reached}" in result.stdout.splitlines()[0] + result.stdout
  assert helpers.train_losses(model_dir) == helpers.train_losses(straight_30)
  straight, resumed = helpers.saved_params(straight_30), helpers.saved_params(model_dir)
  for name in straight:
    np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)


def test_after_kill_9_the_resumed_run_reports_every_step_once(tmp_path, straight_30):
  model_dir = tmp_path / "killed"
  command = [sys.executable, "-m", "t5x_lite.train",
             *helpers.command_line(model_dir, steps=30, **{"train.checkpoint_every": 4})]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  wait_for_step(model_dir, 5, process)
  while (process.poll() is None and
         max(helpers.train_losses(model_dir)) <= max(committed_steps(model_dir))):
    time.sleep(0.05)  # kill between two checkpoints, with steps logged past the last one
  process.kill()
  process.wait()
  logged, saved = max(helpers.train_losses(model_dir)), max(committed_steps(model_dir))
  assert saved < logged < 30, "nothing to replay: the kill came too late"

  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          timeout=helpers.HANG_TIMEOUT_S)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "did not exit cleanly" in result.stdout
  with open(model_dir / "metrics.jsonl") as handle:
    records = [(r["step"], r["split"]) for r in map(json.loads, handle)]
  assert len(records) == len(set(records))  # the replayed steps appear once
  assert helpers.train_losses(model_dir) == helpers.train_losses(straight_30)


def test_a_half_written_checkpoint_is_never_restored(tmp_path):
  run_training(tmp_path, steps=4)
  checkpoints = tmp_path / "checkpoints"
  # What kill -9 during a save leaves: orbax's temporary directory, never renamed.
  shutil.copytree(checkpoints / "4", checkpoints / "6.orbax-checkpoint-tmp-1700000000000000")
  (checkpoints / "6.orbax-checkpoint-tmp-1700000000000000" / "state" / "partial").write_bytes(
      b"\0" * 10)
  # Read through a read-only manager: a writable one would start orbax's background
  # removal of the temporary directory and race the resumed run's own removal of it.
  reader = ocp.CheckpointManager(str(checkpoints),
                                 options=ocp.CheckpointManagerOptions(read_only=True))
  assert reader.latest_step() == 4
  result = run_training(tmp_path, steps=6)
  assert result["step"] == 6
  assert not any("tmp" in p for p in os.listdir(checkpoints))


def test_a_non_finite_loss_halts_without_writing_a_nan_checkpoint(tmp_path):
  with pytest.raises(trainer.TrainingHalted, match="non-finite (loss|gradient) at step"):
    run_training(tmp_path, steps=20, LEARNING_RATE=1e30)
  for value in helpers.saved_params(tmp_path).values():
    assert np.isfinite(value).all()


def test_skipping_non_finite_steps_keeps_the_state_finite_and_says_so(tmp_path):
  stream = io.StringIO()
  result = run_training(tmp_path, steps=6, LEARNING_RATE=1e30, stream=stream,
                        **{"train.nan_policy": "'skip'", "train.max_consecutive_skips": 100})
  assert result["step"] == 6 and result["skipped_steps"] > 0
  skips = [line for line in stream.getvalue().splitlines() if "update skipped" in line]
  assert len(skips) == result["skipped_steps"]
  for value in helpers.saved_params(tmp_path).values():
    assert np.isfinite(value).all()


def test_an_overflowing_update_never_reaches_a_checkpoint(tmp_path):
  """A learning rate that overflows the update: loss and gradients are finite, the new
  parameters are not. Every such update is skipped (each one printed) and the run stops
  after train.max_consecutive_skips of them; the checkpoints hold the initial params."""
  stream = io.StringIO()
  with pytest.raises(trainer.TrainingHalted, match="3 consecutive non-finite updates"):
    run_training(tmp_path, steps=6, LEARNING_RATE=1e39, stream=stream,
                 **{"train.nan_policy": "'skip'", "train.max_consecutive_skips": 3,
                    "train.checkpoint_every": 1})
  assert "step 1: non-finite updated parameters (the update overflowed): update skipped " \
         "(1 in a row, 1 in all)" in stream.getvalue()
  first, second = helpers.saved_params(tmp_path, step=1), helpers.saved_params(tmp_path, step=2)
  for name, value in first.items():
    assert np.isfinite(value).all()
    np.testing.assert_array_equal(value, second[name], err_msg=name)


def committed_steps(model_dir) -> list[int]:
  return sorted(int(name) for name in os.listdir(model_dir / "checkpoints") if name.isdigit())


def truncate(model_dir, item: str, step: int) -> None:
  """Truncates the largest file of a step's `item` ("state" arrays or "data" iterator
  state) to half, as a disk error or an interrupted copy would."""
  root = model_dir / "checkpoints" / str(step) / item
  files = [os.path.join(d, f) for d, _, names in os.walk(root) for f in names
           if item == "data" or "/d/" in os.path.join(d, f)]
  largest = max(files, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)


@pytest.mark.parametrize("item", ["state", "data"], ids=["array_file", "iterator_file"])
def test_an_unreadable_newest_checkpoint_falls_back_and_the_run_ends_as_uninterrupted(
    tmp_path, capsys, item):
  constant = {"make_schedule.name": "'constant'"}
  run_training(tmp_path / "straight", steps=6, **constant)
  run_training(tmp_path / "damaged", steps=4, **constant)
  step = committed_steps(tmp_path / "damaged")[-1]
  truncate(tmp_path / "damaged", item, step)
  assert run_training(tmp_path / "damaged", steps=6, **constant)["step"] == 6
  err = capsys.readouterr().err
  assert f"checkpoint step {step} " in err and "falling back to the previous step" in err
  assert "Traceback" not in err
  assert os.listdir(tmp_path / "damaged" / "unreadable_checkpoints")[0].startswith(f"{step}-")
  assert helpers.train_losses(tmp_path / "damaged") == helpers.train_losses(
      tmp_path / "straight")
  straight, resumed = helpers.saved_params(tmp_path / "straight"), helpers.saved_params(
      tmp_path / "damaged")
  for name in straight:
    np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)


def test_when_no_checkpoint_can_be_read_the_error_names_each_step(tiny_run, capsys):
  for step in committed_steps(tiny_run):
    truncate(tiny_run, "data", step)
  code, err = run_main(helpers.command_line(tiny_run, steps=4), capsys)
  assert code == 2 and "no checkpoint in" in err and "Traceback" not in err
  for step in committed_steps(tiny_run):  # each named, none moved or deleted
    assert f"step {step} data-iterator state is unreadable" in err


def run_main(argv, capsys):
  with pytest.raises(SystemExit) as exit_info:
    train.main(argv)
  return exit_info.value.code, capsys.readouterr().err


def test_an_unknown_gin_binding_is_one_clear_error(tmp_path, capsys):
  code, err = run_main(helpers.command_line(tmp_path) + ["--gin.train.no_such_knob=1"], capsys)
  assert code == 2 and "no_such_knob" in err and "Traceback" not in err


def test_a_mesh_that_does_not_match_the_devices_is_one_clear_error(tmp_path, capsys):
  argv = helpers.command_line(tmp_path) + ["--gin.create_mesh.shape=(3, 1, 1)",
                                           "--gin.create_mesh.devices=None"]
  code, err = run_main(argv, capsys)
  assert code == 2 and "mesh shape (3, 1, 1) needs 3 devices but 8 are available" in err


def test_an_unknown_task_is_one_clear_error(tmp_path, capsys):
  code, err = run_main(helpers.command_line(tmp_path, MIXTURE_OR_TASK_NAME="'pydocs.nope'"),
                       capsys)
  assert code == 2 and "unknown task or mixture 'pydocs.nope'" in err


def test_restoring_a_checkpoint_of_another_model_shape_is_one_clear_error(tiny_run, capsys):
  argv = helpers.command_line(tiny_run, steps=4) + ["--gin.TransformerConfig.d_ff=256"]
  code, err = run_main(argv, capsys)
  assert code == 2 and "TransformerConfig.d_ff: 128 -> 256" in err
  # A run directory without a recorded spec (older runs): the checkpoint's shapes refuse it.
  os.remove(tiny_run / "spec.json")
  code, err = run_main(argv, capsys)
  assert code == 2 and "does not match this model" in err and "(64, 256)" in err
  assert Checkpointer(str(tiny_run / "checkpoints"), 2).latest_step() == 2


def test_finetuning_starts_from_the_pretrained_params_on_a_new_task(tiny_run, tmp_path):
  files = ["runs/finetune.gin", "models/tiny_causal_decoder.gin", "meshes/single_device.gin"]
  overrides = helpers.bindings(tmp_path / "finetuned", steps=1,
                               MIXTURE_OR_TASK_NAME="'shakespeare.full_lm.byte'",
                               LEARNING_RATE=0.0, WARMUP_STEPS=0)
  gin_utils.parse(files, overrides + [f"CHECKPOINT_PATH = '{tiny_run}'"])
  assert trainer.train(gin_utils.resolve_train_spec(), gin_utils.resolve_mesh())["step"] == 1
  pretrained, finetuned = helpers.saved_params(tiny_run), helpers.saved_params(
      tmp_path / "finetuned")
  for name in pretrained:  # A zero learning rate: the params are exactly the pretrained ones.
    np.testing.assert_array_equal(pretrained[name], finetuned[name], err_msg=name)


def test_profile_knobs_trace_the_requested_steps_into_the_run_directory(tmp_path):
  stream = io.StringIO()
  result = run_training(tmp_path, steps=3, stream=stream,
                        **{"train.profile_start_step": 1, "train.profile_steps": 1})
  assert result["step"] == 3
  traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  assert "profiled steps 2-2" in stream.getvalue()


def test_an_moe_run_logs_its_routing_and_resumes_on_another_layout_and_mesh(tmp_path, capsys):
  # Trained scanned on an expert-parallel mesh, resumed unscanned on one device: the
  # checkpoint's layout depends on neither, and the run ends as an uninterrupted one.
  moe = {"make_schedule.name": "'constant'", "BATCH_SIZE": 8}
  files = lambda mesh: ["runs/pretrain.gin", "models/tiny_moe_decoder.gin",  # noqa: E731
                        f"meshes/{mesh}.gin"]

  def run(directory, steps, mesh, scanned):
    gin_utils.parse(files(mesh), helpers.bindings(
        directory, steps=steps, **moe, **{"TransformerConfig.scan_layers": scanned}))
    return trainer.train(gin_utils.resolve_train_spec(), gin_utils.resolve_mesh())

  run(tmp_path / "straight", 6, "single_device", False)
  run(tmp_path / "moved", 3, "expert_parallel", True)
  printed = capsys.readouterr().out
  assert "balance" in printed and "dropped" in printed and "max load" in printed
  saved = helpers.saved_state(tmp_path / "moved")
  assert "params.decoder.layers.1.mlp.wi_0.kernel.value" in saved  # per layer on disk
  assert saved["params.decoder.layers.1.mlp.wi_0.kernel.value"].shape == (4, 64, 128)
  assert run(tmp_path / "moved", 6, "single_device", False)["step"] == 6
  straight, moved = helpers.train_losses(tmp_path / "straight"), helpers.train_losses(
      tmp_path / "moved")
  # (A layout and mesh change only the order of float operations: ~1e-5 relative.)
  np.testing.assert_allclose([moved[s] for s in range(1, 7)], [straight[s] for s in range(1, 7)],
                             rtol=1e-4, atol=0)
  with open(tmp_path / "moved" / "metrics.jsonl") as handle:
    record = json.loads(handle.readline())
  assert {"moe/aux_loss", "moe/z_loss", "moe/dropped_fraction", "moe/max_load",
          "moe/expert_0_share"} <= record.keys()
  assert sum(record[f"moe/expert_{e}_share"] for e in range(4)) == pytest.approx(1.0)
