"""Fine-tuning runs: LoRA runs (gin/runs/lora.gin) train and save adapters alone, know
their base, refuse another and merge into a plain model; every fine-tuning run resumes
exactly as pretraining does."""

import inspect
import json
import os
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from t5x_lite import evaluate, gin_utils, infer, merge
from t5x_lite.common import partitioning
from t5x_lite.common.errors import ConfigError
from t5x_lite.inference import harness as lm_eval
from t5x_lite.models import forward
from t5x_lite.models.lora import LoraConfig, adapt
from t5x_lite.runs import checkpoints, loading, run_dir
from t5x_lite.training import trainer
from t5x_lite.training.steps import make_step_functions
from tests import train_helpers as helpers
from tests.test_train import run_main

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)

FINETUNE_TASK = "'shakespeare.full_lm.byte'"


def finetune(model_dir, base, steps, run="lora", **extra) -> dict:
  """A tiny fine-tuning run from `base`, configured as the command line would be."""
  files = [f"runs/{run}.gin", "models/tiny_causal_decoder.gin", "meshes/single_device.gin"]
  values = {"MIXTURE_OR_TASK_NAME": FINETUNE_TASK, "WARMUP_STEPS": 1, "LEARNING_RATE": 1e-2,
            **extra}
  gin_utils.parse(files, helpers.bindings(model_dir, steps=steps, **values)
                  + [f"CHECKPOINT_PATH = '{base}'"])
  return trainer.train(gin_utils.resolve_train_spec(), gin_utils.resolve_mesh())


def merge_code(argv) -> int:
  """`python -m t5x_lite.merge`'s exit status (user errors leave by SystemExit)."""
  try:
    return merge.main(argv)
  except SystemExit as exit_info:
    return exit_info.code


@pytest.fixture(scope="module")
def lora_run(tiny_run_once, tmp_path_factory):
  """(base, LoRA run): 4 LoRA steps over the tiny 2-step decoder."""
  directory = tmp_path_factory.mktemp("lora_run")
  finetune(directory, tiny_run_once, steps=4)
  return tiny_run_once, directory


def test_a_lora_run_trains_and_saves_the_adapters_alone(lora_run):
  base, run = lora_run
  saved = helpers.saved_state(run)
  params = [name for name in saved if name.startswith("params.")]
  moments = [name for name in saved if ".mu." in name or ".nu." in name]
  assert params and all(".lora.lora_" in name for name in params)
  assert moments and all(".lora.lora_" in name for name in moments)  # base: no Adam state
  assert any(np.abs(saved[name]).max() > 0 for name in params if name.endswith("lora_b.value"))
  # The adapters record their base by its parameters.
  record = loading._read_adapter_record(str(run))
  assert record["base_checkpoint"] == os.path.abspath(base)
  base_model = loading.load_model(str(base))
  assert record["base_fingerprint"] == loading.fingerprint(nnx.state(base_model, nnx.Param))


def test_the_merged_model_computes_what_the_adapter_model_computes(lora_run, tmp_path):
  base, run = lora_run
  adapted = adapt(loading.load_model(str(base)), LoraConfig(rank=8, alpha=16.0))
  saved = helpers.saved_params(run)
  adapter_values = {name: saved["params." + name] for name in
                    checkpoints.flatten_state(adapted.adapters)}
  adapter_model = nnx.merge(adapted.graphdef, checkpoints.unflatten_state(
      adapted.adapters, adapter_values), adapted.base)
  tokens = np.arange(48, dtype=np.int32).reshape(2, 24) % 512
  expected = np.asarray(forward(adapter_model, {"decoder_input_tokens": tokens}))

  assert merge_code([f"--adapters={run}", f"--output={tmp_path / 'merged'}"]) == 0
  for path in (tmp_path / "merged", run):  # written out, and merged on load
    merged = loading.load_model(str(path))
    np.testing.assert_allclose(np.asarray(forward(merged, {"decoder_input_tokens": tokens})),
                               expected, atol=1e-5, rtol=1e-5)
  assert not any(".lora" in name for name in helpers.saved_params(tmp_path / "merged"))
  # Merging never overwrites: the output directory now holds a checkpoint.
  assert merge_code([f"--adapters={run}", f"--output={tmp_path / 'merged'}"]) == 2


def test_adapters_refuse_a_base_they_were_not_trained_on(lora_run, tmp_path, capsys):
  base, run = lora_run
  other = tmp_path / "other_base"  # the same model trained two steps further
  shutil.copytree(base, other)
  helpers.run_training(other, steps=4)
  copy = tmp_path / "lora"
  shutil.copytree(run, copy)
  before = sorted(os.listdir(copy / "checkpoints"))

  argv = ["--gin_file=runs/lora.gin", *helpers.command_line(copy, steps=6)[1:],
          f"--gin.MIXTURE_OR_TASK_NAME={FINETUNE_TASK}", f"--gin.CHECKPOINT_PATH='{other}'"]
  code, err = run_main(argv, capsys)
  assert code == 2 and "were trained on the base" in err and str(other) in err
  assert sorted(os.listdir(copy / "checkpoints")) == before  # nothing written or lost
  assert merge_code([f"--adapters={copy}", f"--output={tmp_path / 'merged'}",
                     f"--base={other}"]) == 2
  assert "holds other parameters" in capsys.readouterr().err
  assert not (tmp_path / "merged" / "checkpoints").exists()


@pytest.mark.parametrize("run", ["finetune", "lora"])
def test_fine_tuning_resumes_exactly_like_pretraining(tiny_run_once, tmp_path, run):
  finetune(tmp_path / "whole", tiny_run_once, steps=4, run=run)
  finetune(tmp_path / "resumed", tiny_run_once, steps=2, run=run)
  finetune(tmp_path / "resumed", tiny_run_once, steps=4, run=run)
  whole, resumed = helpers.saved_state(tmp_path / "whole"), helpers.saved_state(
      tmp_path / "resumed")
  assert whole.keys() == resumed.keys()
  for name in whole:
    np.testing.assert_array_equal(whole[name], resumed[name], err_msg=name)
  assert helpers.train_losses(tmp_path / "whole") == helpers.train_losses(tmp_path / "resumed")


@pytest.mark.parametrize("binding,message", [
    ("--gin.CHECKPOINT_PATH=''", "LoRA adapts a pretrained model: set CHECKPOINT_PATH"),
    ("--gin.TransformerConfig.scan_layers=True", "LoRA needs the unscanned layout"),
    ("--gin.lora.targets=['query', 'qkv']", "['qkv'] are not projections"),
    ("--gin.lora.rank=0", "lora.rank and lora.alpha must be positive"),
])
def test_a_bad_lora_setting_is_one_clear_error(tiny_run_once, tmp_path, capsys, binding,
                                               message):
  argv = ["--gin_file=runs/lora.gin", *helpers.command_line(tmp_path / "lora", steps=2)[1:],
          f"--gin.CHECKPOINT_PATH='{tiny_run_once}'", binding]
  code, err = run_main(argv, capsys)
  assert code == 2 and message in err
  assert not (tmp_path / "lora" / "checkpoints").exists()


def test_qlora_trains_adapters_over_a_frozen_integer_base_and_merges_to_float(
    tiny_run_once, tmp_path, capsys):
  base = tmp_path / "int4_base"
  loading.write_quantized(str(tiny_run_once), str(base), "int4_weights")
  config = run_dir.recorded_model(str(base))
  # One step over an int4 and over an NF4 (QLoRA's own type) base: the adapters move, the
  # 4-bit base is bit for bit what it was.
  nf4_base = tmp_path / "nf4_base"
  loading.write_quantized(str(tiny_run_once), str(nf4_base), "nf4_weights")
  for quantized in (base, nf4_base):
    adapted = adapt(loading.load_model(str(quantized), config), LoraConfig(rank=4))
    base_before = [np.array(leaf) for leaf in jax.tree.leaves(adapted.base)]
    assert any(jnp.issubdtype(leaf.dtype, jnp.integer) for leaf in base_before)
    mesh = partitioning.create_mesh(devices=partitioning.single_device())
    steps = make_step_functions(config, optax.adam(1e-2), mesh, adapted=adapted)
    state = steps.init()
    adapters_before = [np.array(leaf) for leaf in jax.tree.leaves(state["params"])]
    tokens = np.arange(1, 65).reshape(4, 16) % 200 + 3
    batch = {"decoder_input_tokens": np.pad(tokens[:, :-1], ((0, 0), (1, 0))),
             "decoder_target_tokens": tokens,
             "decoder_loss_weights": np.ones((4, 16), np.float32)}
    state, _ = steps.train(state, partitioning.global_batch(batch, mesh))
    for before, after in zip(base_before, jax.tree.leaves(adapted.base)):
      np.testing.assert_array_equal(before, np.asarray(after))
    assert any(not np.array_equal(b, np.asarray(a))
               for b, a in zip(adapters_before, jax.tree.leaves(state["params"])))

  # The run: QLoRA asks for a quantized base and trains; merged, it is a float model that
  # computes what the adapters over the integer base compute.
  run = tmp_path / "qlora"
  finetune(run, base, steps=2, **{"lora.quantized_base": True})
  merged = loading.load_model(str(run))
  assert not any(jnp.issubdtype(leaf.dtype, jnp.integer)
                 for leaf in jax.tree.leaves(nnx.state(merged, nnx.Param)))
  adapted = adapt(loading.load_model(str(base), config), LoraConfig(rank=8, alpha=16.0))
  saved = helpers.saved_params(run)
  values = {name: saved["params." + name] for name in checkpoints.flatten_state(adapted.adapters)}
  adapter_model = nnx.merge(adapted.graphdef, checkpoints.unflatten_state(
      adapted.adapters, values), adapted.base)
  tokens = {"decoder_input_tokens": np.arange(1, 25).reshape(1, 24)}
  np.testing.assert_allclose(np.asarray(forward(merged, tokens)),
                             np.asarray(forward(adapter_model, tokens)), atol=1e-5, rtol=1e-5)

  # A float base is refused for QLoRA, naming how to make a quantized one.
  argv = ["--gin_file=runs/lora.gin", *helpers.command_line(tmp_path / "refused", steps=2)[1:],
          f"--gin.CHECKPOINT_PATH='{tiny_run_once}'", "--gin.lora.quantized_base=True"]
  code, err = run_main(argv, capsys)
  assert code == 2 and "needs a quantized base" in err and "python -m t5x_lite.quantize" in err


def test_a_moved_base_is_named_at_use_time_and_checked_by_its_fingerprint(lora_run, tmp_path,
                                                                         capsys):
  base, run = lora_run
  moved_base, copy = tmp_path / "moved_base", tmp_path / "lora"
  shutil.copytree(base, moved_base)
  shutil.copytree(run, copy)
  expected = loading.load_model(str(run))  # merged over the base where it was recorded
  record = json.loads((copy / loading.ADAPTER_FILE).read_text())
  record["base_checkpoint"] = str(tmp_path / "gone")  # the base has moved away
  (copy / loading.ADAPTER_FILE).write_text(json.dumps(record))
  tokens = {"decoder_input_tokens": np.arange(24, dtype=np.int32).reshape(1, 24)}
  with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
    loading.load_model(str(copy))
  merged = loading.load_model(str(copy), base=str(moved_base))
  np.testing.assert_array_equal(np.asarray(merged(tokens)), np.asarray(expected(tokens)))
  # The same option in every command that reads a LoRA run directory.
  output = tmp_path / "predictions.jsonl"
  assert infer.main(["--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{copy}'",
                     f"--gin.INFER_OUTPUT='{output}'", "--gin.infer.num_examples=2",
                     "--gin.infer.max_new_tokens=2", f"--gin.infer.lora_base='{moved_base}'"]
                    ) == 0 and len(output.read_text().splitlines()) == 2
  assert lm_eval.T5xLiteLM(str(copy), lora_base=str(moved_base)).model.config == merged.config
  assert "lora_base" in inspect.signature(evaluate.evaluate).parameters
  assert merge_code([f"--adapters={copy}", f"--output={tmp_path / 'merged'}",
                     f"--lora_base={moved_base}"]) == 0


def test_full_fine_tuning_from_adapters_or_a_quantized_model_says_what_works(lora_run,
                                                                             tmp_path):
  _, run = lora_run
  with pytest.raises(run_dir.RunDirError, match="is a LoRA run directory .* merge them"):
    finetune(tmp_path / "from_lora", run, steps=1, run="finetune")
  quantized = tmp_path / "int8"
  loading.write_quantized(str(lora_run[0]), str(quantized), "int8_weights")
  with pytest.raises(run_dir.RunDirError, match="quantized model .* its float source"):
    finetune(tmp_path / "from_int8", quantized, steps=1, run="finetune")
  assert not (tmp_path / "from_lora").exists() and not (tmp_path / "from_int8").exists()


def test_lora_on_a_pipeline_mesh_is_refused_with_advice_that_works(tiny_run_once, tmp_path):
  files = ["runs/lora.gin", "models/tiny_causal_decoder.gin", "meshes/pipeline.gin"]
  gin_utils.parse(files, helpers.bindings(tmp_path, steps=1,
                                          MIXTURE_OR_TASK_NAME=FINETUNE_TASK,
                                          PIPELINE_STAGES=2)
                  + [f"CHECKPOINT_PATH = '{tiny_run_once}'"])
  with pytest.raises(ConfigError, match="scan_layers=False .* without pipeline stages"):
    gin_utils.resolve_train_spec()  # the pipeline mesh's gin turns scanning on
  gin.bind_parameter("TransformerConfig.scan_layers", False)
  with pytest.raises(ConfigError, match="LoRA runs cannot use pipeline stages.*fsdp.gin"):
    trainer.train(gin_utils.resolve_train_spec(), gin_utils.resolve_mesh())
