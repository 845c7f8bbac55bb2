"""Every gin model preset parses and builds a valid config; tiny ones build models."""

import glob
import os

import pytest

from t5x_lite import gin_utils
from t5x_lite.models import create_model
from t5x_lite.models.counting import count_params
from t5x_lite.models.params import count_initialized_params

MODEL_FILES = sorted(glob.glob(os.path.join(gin_utils.GIN_DIR, "models", "*.gin")))
ARCHITECTURE_FILES = sorted(glob.glob(os.path.join(gin_utils.GIN_DIR, "models", "architectures",
                                                 "*.gin")))


def test_presets_exist():
  names = {os.path.basename(f)[:-4] for f in MODEL_FILES}
  for family, sizes in {"t5_1_0": "small base large xl xxl", "t5_1_1": "small base large xl xxl",
                        "gpt2": "small medium large xl",
                        "gpt3": "125m 350m 760m 1_3b 2_7b 6_7b 13b 175b",
                        "llama": "7b 13b 33b 65b"}.items():
    assert {f"{family}_{s}" for s in sizes.split()} <= names
  assert {"tiny_causal_decoder", "tiny_prefix_decoder", "tiny_encoder_decoder",
          "tiny_moe_decoder"} <= names
  assert {"switch_base_8", "switch_base_128", "mixtral_8x7b"} <= names


@pytest.mark.parametrize("path", MODEL_FILES, ids=os.path.basename)
def test_every_model_preset_parses_and_builds_its_config(path):
  config = gin_utils.model_config([path])
  assert count_params(config)[0] > 0


@pytest.mark.parametrize("architecture", ["causal_decoder", "prefix_decoder", "encoder_decoder"])
def test_tiny_presets_build_models_of_their_architecture(architecture):
  config = gin_utils.model_config([f"models/tiny_{architecture}.gin"])
  assert config.architecture == architecture
  assert count_initialized_params(create_model(config)) == count_params(config)[0]


def test_gin_overrides_use_t5x_flag_syntax():
  files, bindings, paths, rest = gin_utils.rewrite_gin_args(
      ["--gin_file=a.gin", "--gin_file", "b.gin", "--gin.TransformerConfig.d_model=64",
       "--gin_search_paths=x,y", "--json"])
  assert files == ["a.gin", "b.gin"]
  assert bindings == ["TransformerConfig.d_model = 64"]
  assert paths == ["x", "y"] and rest == ["--json"]


def test_unknown_binding_is_a_gin_config_error():
  with pytest.raises(gin_utils.GinConfigError, match="no_such_knob"):
    gin_utils.parse(["models/tiny_causal_decoder.gin"], ["TransformerConfig.no_such_knob = 1"])


@pytest.mark.parametrize("path", ARCHITECTURE_FILES, ids=os.path.basename)
def test_architecture_files_parse(path):
  # Family defaults without sizes: they are included by the presets above.
  gin_utils.parse([path])


# (data, fsdp, tensor, stage, expert)
MESH_SHAPES = {"single_device": (1, 1, 1, 1, 1), "data_parallel": (8, 1, 1, 1, 1),
               "fsdp": (1, 8, 1, 1, 1), "fsdp_tensor": (1, 2, 4, 1, 1),
               "gpu_multihost": (1, 8, 1, 1, 1), "tpu_pod": (1, 8, 1, 1, 1),
               "pipeline": (4, 1, 1, 2, 1), "pipeline_fsdp_tensor": (1, 2, 2, 2, 1),
               "expert_parallel": (2, 1, 1, 1, 4)}


@pytest.mark.parametrize("name, shape", MESH_SHAPES.items())
def test_every_mesh_file_builds_its_mesh_on_eight_devices(name, shape):
  import gin

  from t5x_lite import train  # noqa: F401  (train: initialize_distributed)
  gin_utils.parse([f"meshes/{name}.gin"])
  assert tuple(gin_utils.resolve_mesh().devices.shape) == shape
  multihost = name in ("gpu_multihost", "tpu_pod")
  bound = gin.query_parameter("initialize_distributed.coordinator_address") if multihost else None
  assert bound == ("auto" if multihost else None)
  assert {os.path.basename(f)[:-4] for f in glob.glob(
      os.path.join(gin_utils.GIN_DIR, "meshes", "*.gin"))} == set(MESH_SHAPES)


# run file: the entry point whose configurable it binds
RUN_FILES = {"pretrain": "train", "finetune": "train", "lora": "train", "quickstart": "train",
             "dpo": "train", "reward_model": "train", "grpo": "train", "ppo": "train",
             "infer": "infer", "quickstart_generate": "infer", "evaluate": "evaluate",
             "lm_eval": "harness"}


@pytest.mark.parametrize("run", sorted(RUN_FILES))
def test_every_run_file_parses_with_its_required_macros_bound(run):
  import gin

  # Register every configurable the run files bind.
  import t5x_lite.evaluate  # noqa: F401
  import t5x_lite.infer  # noqa: F401
  import t5x_lite.lm_eval  # noqa: F401
  import t5x_lite.training.trainer  # noqa: F401
  entry = RUN_FILES[run]
  required = {"train": ["MODEL_DIR"], "infer": ["CHECKPOINT_PATH", "INFER_OUTPUT"],
              "evaluate": ["CHECKPOINT_PATH"], "harness": ["CHECKPOINT_PATH"]}[entry] + (
                  ["CHECKPOINT_PATH"] if run in ("finetune", "lora", "dpo", "reward_model", "grpo",
                                                 "ppo") else [])
  gin_utils.parse([f"runs/{run}.gin", "models/tiny_causal_decoder.gin"],
                  [f"{macro} = '/tmp/unused'" for macro in required])
  path = "train.model_dir" if entry == "train" else f"{entry}.checkpoint_path"
  assert gin.get_bindings(entry)[path.split(".")[1]] == "/tmp/unused"
  if entry == "train":
    spec = gin_utils.resolve_train_spec()
    preference = run in ("dpo", "reward_model")
    assert spec.run.train_steps > 0 and spec.run.task.startswith(
        "preference" if preference else "supervised" if run in ("grpo", "ppo") else "pydocs.")
    assert (spec.rl is not None) == (run in ("grpo", "ppo"))
    assert spec.rl is None or spec.rl.algorithm == run
    assert (spec.lora is not None) == (run == "lora")
    assert (spec.preference is not None) == preference
    assert (spec.model.head == "reward") == (run == "reward_model")
    assert (spec.model.head == "value") == (run == "ppo")
  elif entry == "harness":
    assert gin.get_bindings("harness")["tasks"] == ["t5x_lite_pydocs_cloze"]
  else:  # infer and evaluate default to the task the checkpoint was trained on
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") is None
  assert {os.path.basename(f)[:-4] for f in glob.glob(
      os.path.join(gin_utils.GIN_DIR, "runs", "*.gin"))} == set(RUN_FILES)


@pytest.mark.parametrize("objective,architectures", [
    ("span_corruption", ["encoder_decoder", "prefix_decoder", "causal_decoder"]),
    ("prefix_lm", ["encoder_decoder", "prefix_decoder"]),
    ("full_lm", ["causal_decoder"]),
])
def test_every_objective_file_names_a_task_with_its_features(objective, architectures):
  import gin
  import seqio

  import t5x_lite.training.trainer  # noqa: F401
  from t5x_lite.data import objectives

  for architecture in architectures:
    gin_utils.parse(["runs/pretrain.gin", f"objectives/{objective}.gin",
                     f"models/tiny_{architecture}.gin"], ["MODEL_DIR = '/tmp/unused'"])
    task = seqio.get_mixture_or_task(gin.query_parameter("%MIXTURE_OR_TASK_NAME"))
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    assert task.name.endswith(objective)
    assert set(lengths) == set(task.output_features)
  if objective == "span_corruption":
    assert lengths["targets"] == objectives.span_corruption_lengths(lengths["inputs"])[1]
  assert {os.path.basename(f)[:-4] for f in glob.glob(
      os.path.join(gin_utils.GIN_DIR, "objectives", "*.gin"))} == {
          "span_corruption", "prefix_lm", "full_lm"}


def test_a_gin_file_that_includes_itself_is_one_short_error(tmp_path):
  first, second = tmp_path / "a.gin", tmp_path / "b.gin"
  first.write_text(f"include '{second}'\n")
  second.write_text(f"include '{first}'\n")
  with pytest.raises(gin_utils.GinConfigError, match="include one another in a circle") as error:
    gin_utils.parse([str(first)])
  assert len(str(error.value).splitlines()) == 1
