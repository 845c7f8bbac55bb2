"""The run directory as a user relies on it: it records its configuration, refuses a resume
that would continue a different run, has one writer at a time, keeps its newest checkpoint,
and never reports a step twice."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from t5x_lite import gin_utils, train
from t5x_lite.common import errors
from t5x_lite.runs import run_dir
from t5x_lite.runs.checkpoints import Checkpointer
from t5x_lite.training import trainer
from tests import train_helpers as helpers

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_main(argv, capsys):
  """(exit code, stdout, stderr) of `python -m t5x_lite.train argv`, in this process."""
  try:
    code = train.main(argv)
  except SystemExit as exit_info:
    code = exit_info.code
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def recorded(model_dir) -> dict:
  with open(os.path.join(model_dir, "spec.json")) as handle:
    return json.load(handle)


@pytest.fixture
def trained(tiny_run):
  """A tiny causal decoder trained for 2 steps (checkpoints at steps 1 and 2)."""
  return tiny_run


def test_the_run_directory_records_its_configuration(trained):
  record = recorded(trained)
  assert record["spec"]["TransformerConfig"]["activation"] == "silu"
  assert record["spec"]["train"]["task"] == "pydocs.full_lm.byte"
  assert record["spec"]["make_schedule"]["peak_learning_rate"] == 1e-3
  assert record["vocabulary"]["kind"] == "ByteVocabulary"
  assert run_dir.recorded_model(str(trained)).d_model == 64


def test_resuming_with_a_different_model_or_data_is_refused_naming_each_knob(trained, capsys):
  argv = helpers.command_line(trained, steps=4) + [
      "--gin.TransformerConfig.activation='gelu'",
      "--gin.TransformerConfig.position_encoding='learned'", "--gin.BATCH_SIZE=8"]
  code, _, err = run_main(argv, capsys)
  assert code == 2 and "Traceback" not in err
  for change in ("TransformerConfig.activation: 'silu' -> 'gelu'",
                 "TransformerConfig.position_encoding: 'rope' -> 'learned'",
                 "train.batch_size: 4 -> 8", "train.allow_changes"):
    assert change in err
  assert Checkpointer(str(trained / "checkpoints"), 2).latest_step() == 2
  assert recorded(trained)["spec"]["TransformerConfig"]["activation"] == "silu"


def test_cadence_length_and_learning_rate_may_change_and_are_recorded(trained, capsys):
  argv = helpers.command_line(trained, steps=4, LEARNING_RATE=5e-4,
                              **{"train.eval_every": 2})
  code, out, _ = run_main(argv, capsys)
  assert code == 0 and "finished at step 4" in out
  assert "make_schedule.peak_learning_rate: 0.001 -> 0.0005" in out
  assert "train.train_steps: 2 -> 4" in out
  record = recorded(trained)
  assert record["spec"]["make_schedule"]["peak_learning_rate"] == 5e-4
  assert record["history"][-1]["changed"]["train.eval_every"] == [1000, 2]
  with open(trained / "config.gin") as handle:
    assert "LEARNING_RATE = 0.0005" in handle.read()


def test_a_deliberate_model_change_is_allowed_when_named(trained, capsys):
  argv = helpers.command_line(trained, steps=3) + [
      "--gin.TransformerConfig.dropout_rate=0.1",
      "--gin.train.allow_changes=['TransformerConfig.dropout_rate']"]
  code, out, _ = run_main(argv, capsys)
  assert code == 0 and "TransformerConfig.dropout_rate: 0.0 -> 0.1" in out
  assert recorded(trained)["spec"]["TransformerConfig"]["dropout_rate"] == 0.1


def test_a_second_trainer_is_refused_before_it_touches_anything(trained, capsys):
  # What the first trainer's in-flight save looks like on disk.
  in_flight = trained / "checkpoints" / "4.orbax-checkpoint-tmp-1700000000000000"
  in_flight.mkdir()
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys; from t5x_lite.runs.run_dir import RunLock; "
       f"RunLock({str(trained)!r}).acquire(); print('held', flush=True); sys.stdin.read()"],
      cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    metrics = (trained / "metrics.jsonl").read_text()
    code, _, err = run_main(helpers.command_line(trained, steps=4), capsys)
    assert code == 2 and f"in use by another trainer (pid {holder.pid}" in err
    assert in_flight.is_dir() and (trained / "metrics.jsonl").read_text() == metrics
  finally:
    holder.communicate("")
  # The holder is gone (its lock went with it) without releasing: the next trainer says so.
  code, out, _ = run_main(helpers.command_line(trained, steps=4), capsys)
  assert code == 0 and f"(pid {holder.pid}" in out and "did not exit cleanly" in out
  assert json.loads((trained / "run.lock").read_text())["state"] == "released"


def test_retention_keeps_the_newest_checkpoint(tmp_path, capsys):
  code, _, err = run_main(helpers.command_line(tmp_path, steps=2, **{
      "train.keep_checkpoints": 0}), capsys)
  assert code == 2 and "train.keep_checkpoints must be None (keep all) or at least 1" in err
  assert not (tmp_path / "checkpoints").exists()
  helpers.run_training(tmp_path, steps=6, **{"train.keep_checkpoints": 1})
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6"]


def test_finetuning_from_a_model_that_computes_something_else_is_refused(trained, tmp_path,
                                                                         capsys):
  argv = ["--gin_file=runs/finetune.gin", "--gin_file=models/tiny_causal_decoder.gin",
          "--gin_file=meshes/single_device.gin", f"--gin.CHECKPOINT_PATH='{trained}'",
          f"--gin.MODEL_DIR='{tmp_path / 'finetuned'}'", "--gin.TRAIN_STEPS=1",
          "--gin.MIXTURE_OR_TASK_NAME='shakespeare.full_lm.byte'",
          "--gin.TASK_FEATURE_LENGTHS={'targets': 64}", "--gin.BATCH_SIZE=4",
          "--gin.TransformerConfig.activation='relu'"]
  code, _, err = run_main(argv, capsys)
  assert code == 2 and "TransformerConfig.activation: checkpoint 'silu', gin 'relu'" in err
  # The trainer refuses it too, for a spec built without gin.
  gin_utils.parse_flags(argv[:-1])
  spec = gin_utils.resolve_train_spec()
  spec = dataclasses.replace(spec, model=spec.model.replace(activation="relu"))
  with pytest.raises(run_dir.RunDirError, match="TransformerConfig.activation: 'silu' -> 'relu'"):
    trainer.train(spec, gin_utils.resolve_mesh())
  assert not (tmp_path / "finetuned").exists()  # nothing saved: the new MODEL_DIR is gone


def test_finetuning_takes_the_model_from_the_checkpoint(trained, tmp_path):
  gin_utils.parse_flags(["--gin_file=runs/finetune.gin", f"--gin.CHECKPOINT_PATH='{trained}'",
                         f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TransformerConfig.dtype="
                         "'bfloat16'"])
  model = gin_utils.resolve_train_spec().model
  assert model == run_dir.recorded_model(str(trained)).replace(dtype="bfloat16")


@pytest.mark.parametrize("binding,message", [
    ("--gin.TRAIN_STEP=5", "macro TRAIN_STEP is set but no gin binding uses it"),
    ("--gin.train.microbatches=0", "train.microbatches must be a positive integer, got 0"),
    ("--gin.train.checkpoint_every=0", "train.checkpoint_every must be a positive integer"),
    ("--gin.train.log_every=0", "train.log_every must be a positive integer"),
    ("--gin.BATCH_SIZE=0", "train.batch_size must be a positive integer"),
    ("--gin.BATCH_SIZE='8'", "train.batch_size must be of type int, got '8'"),
    ("--gin.TransformerConfig.d_model='64'", "TransformerConfig.d_model must be of type int"),
    ("--gin.make_schedule.name='linear'", "make_schedule.name='linear'"),
])
def test_a_bad_setting_is_one_line_and_exit_2(tmp_path, capsys, binding, message):
  code, _, err = run_main(helpers.command_line(tmp_path) + [binding], capsys)
  assert code == 2 and message in err
  assert err.count("\n") == 1 and "Traceback" not in err
  assert not os.path.exists(tmp_path / "checkpoints")


def test_an_unusable_model_dir_is_one_clear_error(tmp_path, capsys):
  (tmp_path / "a_file").write_text("")
  model_dir = tmp_path / "a_file" / "run"
  code, _, err = run_main(helpers.command_line(model_dir), capsys)
  assert code == 2 and str(tmp_path / "a_file") in err and "Traceback" not in err


def test_a_full_disk_is_one_clear_error_and_keeps_the_checkpoints(trained, capsys):
  os.remove(trained / "metrics.jsonl")
  os.symlink("/dev/full", trained / "metrics.jsonl")  # every write: No space left on device
  code, _, err = run_main(helpers.command_line(trained, steps=4), capsys)
  assert code == 2 and "No space left on device" in err and "metrics.jsonl" in err
  assert "Traceback" not in err
  assert Checkpointer(str(trained / "checkpoints"), 2).latest_step() == 2


def test_metrics_past_the_resumed_step_are_dropped_from_jsonl_and_tensorboard(tmp_path):
  import tensorflow as tf

  metrics = tmp_path / "metrics.jsonl"
  metrics.write_text("".join(json.dumps({"step": s, "split": "train", "loss": 1.0}) + "\n"
                             for s in range(1, 6)) + '{"step": 6, "spl')  # cut by kill -9
  events = tmp_path / "tensorboard" / "train"
  with tf.summary.create_file_writer(str(events)).as_default():
    for step in range(1, 6):
      tf.summary.scalar("loss", 1.0, step=step)
  assert run_dir.trim_metrics(str(tmp_path), 3) == 3 + 2  # jsonl: 4, 5, the cut line
  assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]
  (event_file,) = os.listdir(events)
  steps = [tf.compat.v1.Event.FromString(r).step
           for r in tf.data.TFRecordDataset(str(events / event_file)).as_numpy_iterator()]
  assert max(steps) == 3 and steps.count(3) == 1
  assert run_dir.trim_metrics(str(tmp_path), 3) == 0


def test_a_bug_keeps_its_traceback_and_a_user_error_does_not():
  def bug():
    raise KeyError("an internal mistake")

  with pytest.raises(KeyError):
    errors.run_cli(bug)

  def mistake():
    raise errors.ConfigError("set X")

  with pytest.raises(SystemExit) as exit_info:
    errors.run_cli(mistake)
  assert exit_info.value.code == 2


def test_a_write_the_storage_refuses_is_a_user_error_and_anything_else_is_not():
  refused = ValueError('RESOURCE_EXHAUSTED: Error writing "params/0": Failed to write 72392 '
                       "bytes: No space left on device [os_error_code='28']")
  with pytest.raises(errors.FileSystemError, match="/ckpt: No space left on device"):
    with errors.storage_errors("a checkpoint in", "/ckpt"):
      raise refused
  with pytest.raises(ValueError, match="a shape bug"):
    with errors.storage_errors("a checkpoint in", "/ckpt"):
      raise ValueError("a shape bug")


def test_an_allowed_change_that_fails_at_restore_leaves_the_record_as_it_was(trained, capsys):
  assert run_main(helpers.command_line(trained, steps=3), capsys)[0] == 0  # writes config.gin
  before = {name: (trained / name).read_bytes() for name in ("spec.json", "config.gin")}
  argv = helpers.command_line(trained, steps=4) + [
      "--gin.TransformerConfig.d_ff=96",
      "--gin.train.allow_changes=['TransformerConfig.d_ff']"]
  code, _, err = run_main(argv, capsys)
  assert code == 2 and "does not match this model" in err and "Traceback" not in err
  for name, content in before.items():
    assert (trained / name).read_bytes() == content, name
  code, out, _ = run_main(helpers.command_line(trained, steps=4), capsys)  # as recorded
  assert code == 0 and "finished at step 4" in out


def test_a_failed_start_leaves_a_new_model_dir_as_it_found_it(tmp_path, capsys):
  new = tmp_path / "new_run"
  code, _, err = run_main(helpers.command_line(new, steps=2) + [
      "--gin.MIXTURE_OR_TASK_NAME='no_such_task'"], capsys)
  assert code == 2 and "no_such_task" in err
  assert not new.exists()
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "notes.txt").write_text("mine")
  code, _, _ = run_main(helpers.command_line(existing, steps=2) + [
      "--gin.MIXTURE_OR_TASK_NAME='no_such_task'"], capsys)
  assert code == 2 and (existing / "notes.txt").read_text() == "mine"


def test_a_resume_on_changed_corpus_content_is_refused_unless_allowed(tmp_path, capsys,
                                                                     monkeypatch):
  monkeypatch.setenv("T5X_LITE_CACHE", str(tmp_path / "cache"))
  for i in range(4):
    (tmp_path / f"notes{i}.txt").write_text(f"Note number {i}: " + "lorem ipsum " * 40)
  run = tmp_path / "run"
  argv = helpers.command_line(run, steps=2, MIXTURE_OR_TASK_NAME="'text_files.full_lm.byte'",
                              **{"text_files_corpus.patterns": [f"{tmp_path}/notes*.txt"]})
  assert run_main(argv, capsys)[0] == 0
  assert list(recorded(run)["data"]) == ["text_files"]
  (tmp_path / "notes0.txt").write_text("Another note entirely: " + "dolor sit " * 40)
  longer = [arg.replace("TRAIN_STEPS=2", "TRAIN_STEPS=3") for arg in argv]
  code, _, err = run_main(longer, capsys)
  assert code == 2 and "was trained on corpus content" in err and "'data'" in err
  code, _, _ = run_main(longer + ["--gin.train.allow_changes=['data']"], capsys)
  assert code == 0
