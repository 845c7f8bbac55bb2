"""The README is the user guide: every command and code block in it works.

Each ```sh command is exercised by the handler for its program:
  make T                      the Makefile has T, and CI (.ci/run) runs it (install: via test)
  python -m t5x_lite.train|infer|evaluate
                              configured: gin files found, every binding applied, the entry
                              point's required parameters bound, its model config built and
                              counted, its task registered with the features it is given
                              and a vocabulary the model's fits, its mesh built on 8
                              devices (running them is what tests/test_train.py and
                              test_infer_evaluate.py do); the two-process command is run
                              for real, shortened
  python -m t5x_lite.scaling  run as written (outputs under /tmp go to a test folder)
  python -m t5x_lite.merge    its flags parsed (tests/test_adapters.py runs merges)
  python -m t5x_lite.quantize  its flags parsed, the mode one quantization supports
                              (tests/test_quantization.py runs it)
  python -m t5x_lite.lm_eval  its flags parsed into gin, CHECKPOINT_PATH bound, every task
                              one the harness knows (tests/interop/test_lm_eval.py runs it)
  python -m t5x_lite.curate   configured: its gin parsed, its inputs found, its stages planned
                              (tests/data/curation runs the pipeline)
  python -m t5x_lite.compile_check
                              its flags parsed, the run's spec built from its gin files, the
                              mesh built on the topology's compile-only devices and checked
                              against the batch (tests/test_compile_check.py compiles)
  python tools/scaling_sweep.py
                              run with --commands on the README's plan; every launch command
                              it prints is configured as above
  python experiments/architecture_objective/run.py
                              its arguments parsed, its plan built and every run configured
                              (the tiny mode trains end to end in tests/colab)
  python experiments/mup/run.py
                              its arguments parsed, every width of both architectures built
                              under both parametrizations
  python experiments/scaling/compare.py
                              run as written (its output folder under /tmp goes to a test
                              folder)
  python experiments/pods/run.py
                              its arguments parsed; for every preset and target the pod it
                              names parses and the search it would launch is configured
  bash experiments/...        the script parses, and each command in it is one this test runs
```python blocks are executed; ```gin blocks are parsed and configured like a training run.
"""

import contextlib
import inspect
import io
import os
import re
import shlex
import socket
import subprocess
import sys

import gin
import pytest

from t5x_lite import gin_utils
from t5x_lite import quantize as quantize_command
from tests.scripts import ROOT, load_script
from tests.train_helpers import HANG_TIMEOUT_S

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)

with open(os.path.join(ROOT, "README.md")) as handle:
  README = handle.read()


def blocks(language: str) -> list[str]:
  return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)


def shell_commands(text: str) -> list[list[str]]:
  """Logical command lines (backslash continuations joined, comments dropped)."""
  joined = re.sub(r"\\\n\s*", " ", text)
  return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


COMMANDS = [command for block in blocks("sh") for command in shell_commands(block)]


def command_id(command: list[str]) -> str:
  return " ".join(command)[:60]


def key(command: list[str]) -> tuple[str, ...]:
  """The program (and subcommand) a command runs, e.g. python -m t5x_lite.scaling fit."""
  if command[:3] == ["python", "-m", "t5x_lite.scaling"]:
    return tuple(command[:4])
  return tuple(command[:3] if command[1] == "-m" else command[:2])


def in_test_folder(args: list[str], folder) -> list[str]:
  return [arg.replace("/tmp/", f"{folder}/") for arg in args]


def configure(entry: str, args: list[str]) -> None:
  """Everything an entry point does with its command line short of running."""
  import t5x_lite.train  # noqa: F401  (registers initialize_distributed)
  from t5x_lite import evaluate, infer
  from t5x_lite.data import check_vocabulary, get_task, preference
  from t5x_lite.models.counting import count_params

  gin_utils.parse_flags(args)
  gin_utils.register_tasks()  # as every entry point does: binds text_files / supervised data
  if entry == "train":
    spec = gin_utils.resolve_train_spec()  # every required binding, every value valid
    config, task, lengths = spec.model, spec.run.task, spec.run.feature_lengths
    gin_utils.resolve_mesh()  # raises MeshError when the shape does not fit 8 devices
  else:
    function = {"infer": infer.infer, "evaluate": evaluate.evaluate}[entry]
    bindings = gin.get_bindings(function.__name__)
    required = [name for name, parameter in inspect.signature(function).parameters.items()
                if parameter.default is gin.REQUIRED]
    unbound = [name for name in required if bindings.get(name, gin.REQUIRED) is gin.REQUIRED]
    assert not unbound, f"{entry}: required parameters not bound: {unbound}"
    # The model comes from the checkpoint's run directory; a model gin file, if given,
    # is built here (infer checks it against the checkpoint).
    config = gin_utils.resolve_model_config()
    task, lengths = bindings.get("task"), bindings.get("feature_lengths")
  assert count_params(config)[0] > 0
  if task is not None and preference.is_preference_task(task):  # pairs, not a seqio task
    assert preference.vocabulary(task).vocab_size <= config.vocab_size
    assert set(lengths) == {"inputs", "targets"}, task
    preference.registered()  # the pairs are bound
  elif task is not None:
    check_vocabulary(task, config.vocab_size)
    if lengths is not None:
      assert set(lengths) == set(get_task(task).output_features), task


def run_scaling(args: list[str]) -> str:
  from t5x_lite.scaling.__main__ import main

  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    try:
      main(args)
    except SystemExit as exit:
      assert not exit.code, f"python -m t5x_lite.scaling {' '.join(args)} exited {exit.code}"
  return output.getvalue()


def readme_plan(folder) -> str:
  """Runs the README's plan command; returns where the plan went."""
  plan = next(c for c in COMMANDS if key(c) == ("python", "-m", "t5x_lite.scaling", "plan"))
  args = in_test_folder(plan[3:], folder)
  run_scaling(args)
  return args[args.index("--output") + 1]


def check_make(target: str, _) -> None:
  with open(os.path.join(ROOT, "Makefile")) as handle:
    makefile = handle.read()
  assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), f"no make target {target}"
  with open(os.path.join(ROOT, ".ci", "run")) as handle:
    ci = handle.read()
  if target == "install":
    assert re.search(r"^test: install", makefile, flags=re.MULTILINE)
  else:
    assert f"make {target}" in ci, f"CI does not run `make {target}`"


def check_entry_point(command: list[str], folder) -> None:
  # (The two-process command is also run for real: test_the_two_process_command_...)
  configure(command[2].split(".")[1], in_test_folder(command[3:], folder))


def check_sweep(command: list[str], folder) -> None:
  sweep_tool = load_script("tools/scaling_sweep.py")
  readme_plan(folder)
  args = in_test_folder(command[2:], folder)
  output = io.StringIO()
  with contextlib.redirect_stdout(output):
    assert sweep_tool.main(args + ([] if "--commands" in args else ["--commands"])) == 0
  launches = [shlex.split(line) for line in output.getvalue().splitlines()]
  assert len(launches) == 15
  for launch in launches:
    assert launch[1:3] == ["-m", "t5x_lite.train"]
    configure("train", launch[3:])


def check_ablation(command: list[str], folder) -> None:
  from t5x_lite.scaling import sweep

  runner = load_script(command[1])
  args = runner.parse_args(command[2:])
  mode = runner.MODES[args.mode]
  plan = runner.plan(mode, args.seeds)
  assert len(plan["runs"]) == len(runner.GRID) * len(args.seeds)
  for run in plan["runs"]:
    configure("train", sweep.train_args(plan, run, str(folder), **runner.training_options(mode)))


def check_mup_study(command: list[str], _) -> None:
  from t5x_lite.scaling import coordcheck

  runner = load_script(command[1])
  args = runner.parse_args(command[2:])
  assert len(args.widths) >= 4 and max(args.widths) >= 8 * min(args.widths)
  assert len(runner.RATES) == 8
  for architecture in runner.TASKS:
    base = runner.base_model(architecture)
    assert base.d_model == min(args.widths)
    for width in args.widths:
      for parametrization in coordcheck.PARAMETRIZATIONS:
        coordcheck.widen(base, width, parametrization)


def check_pods_study(command: list[str], _) -> None:
  from t5x_lite import compile_check
  from t5x_lite.pods import topology

  runner = load_script(command[1])
  args = runner.parse_args(command[2:])
  for preset in args.presets:
    params = runner.preset_params(preset)
    for target in args.targets:
      name = runner.target_topology(params, target)
      assert topology.parse(name).chip.name == ("v5p" if target == "tpu" else "h100")
      search = runner.command(preset, target, name,
                              args.max_compiles or runner.band(params)[3])
      files, bindings, search_paths, rest = gin_utils.rewrite_gin_args(search[3:])
      assert compile_check.parser().parse_args(rest).search
      spec = compile_check.parse_gin(files, bindings, search_paths)
      assert spec.model.dtype == "bfloat16" and spec.model.scan_layers


def check_moe_study(command: list[str], _) -> None:
  from t5x_lite.models import counting

  runner = load_script(command[1])
  assert runner.parse_args(command[2:]).steps > 0
  dense = None
  for name, knobs in runner.RUNS.items():
    counts = counting.count(runner.model_config(knobs), targets_length=256)
    dense = dense or counts
    # Every run costs the dense run's FLOPs per token, up to its router's.
    assert counts.flops_per_token == pytest.approx(dense.flops_per_token, rel=0.01), name


def check_script(command: list[str], folder) -> None:
  path = os.path.join(ROOT, command[1])
  subprocess.run(["bash", "-n", path], check=True)
  with open(path) as handle:
    text = re.sub(r"<<'(\w+)'.*?^\1$", "", handle.read(), flags=re.DOTALL | re.MULTILINE)
  exercised = {key(c) for c in COMMANDS}
  here = os.path.dirname(command[1])
  for inner in shell_commands(text.replace("$HERE", here)):
    if inner[0] in ("python", "bash") and inner[1] != "-":
      assert key(inner) in exercised, f"{command[1]} runs {key(inner)}, no README command"


def check_scaling(command: list[str], folder) -> None:
  run_scaling(in_test_folder(command[3:], folder))


def check_merge(command: list[str], _) -> None:
  from t5x_lite import merge

  args = merge.parse_args(command[3:])
  assert args.adapters and args.output


def check_lm_eval(command: list[str], folder) -> None:
  from lm_eval.tasks import TaskManager

  from t5x_lite import lm_eval
  from t5x_lite.inference.harness import HARNESS_TASKS_DIR, offline_tasks

  lm_eval.parse(in_test_folder(command[3:], folder))
  bindings = gin.get_bindings("harness")
  assert bindings["checkpoint_path"] is not gin.REQUIRED
  offline = set(bindings["tasks"]) <= set(offline_tasks())
  manager = TaskManager(include_path=HARNESS_TASKS_DIR, include_defaults=not offline)
  for task in bindings["tasks"]:
    assert manager.match_tasks([task]), f"the harness knows no task {task}"


def check_quantize(command: list[str], _) -> None:
  from t5x_lite.models import quantization

  args = quantize_command.parse_args(command[3:])
  quantization.check_mode(args.mode)


def check_compile_check(command: list[str], _) -> None:
  from t5x_lite import compile_check
  from t5x_lite.pods import topology
  from t5x_lite.training import trainer

  files, bindings, search_paths, rest = gin_utils.rewrite_gin_args(command[3:])
  args = compile_check.parser().parse_args(rest)
  spec = compile_check.parse_gin(files, bindings, search_paths)
  mesh = gin_utils.resolve_mesh(devices=topology.devices(topology.parse(args.topology)))
  trainer.check_layout(spec, mesh)


def check_curate(command: list[str], folder) -> None:
  """Configured: the gin parsed into a curation config, its inputs found, its stages planned."""
  from t5x_lite.data.curation import pipeline

  gin_utils.parse_flags(in_test_folder(command[3:], folder))
  config = gin_utils.construct("curation")
  assert pipeline.input_sources(config)
  stages = pipeline.plan(config, os.path.join(str(folder), "work"))
  assert stages[-1].name == "final" and len(stages) >= 2


def check_compare(command: list[str], folder: str) -> None:
  """Run as written on the committed fits, writing into the test folder."""
  args = [str(folder) if arg.startswith("/tmp") else arg for arg in command[1:]]
  subprocess.run([sys.executable, *args], check=True, cwd=ROOT, capture_output=True,
                 timeout=HANG_TIMEOUT_S)
  table = open(os.path.join(folder, "compare.md")).read()
  assert table.count("\n") == 2 + 9 and os.path.exists(os.path.join(folder, "compare.png"))


def handler(command: list[str]):
  if command[0] == "make":
    return lambda folder: check_make(command[1], folder)
  if command[:2] == ["python", "-m"] and command[2] in ("t5x_lite.train", "t5x_lite.infer",
                                                        "t5x_lite.evaluate"):
    return lambda folder: check_entry_point(command, folder)
  checks = {("python", "-m", "t5x_lite.scaling"): check_scaling,
            ("python", "-m", "t5x_lite.merge"): check_merge,
            ("python", "-m", "t5x_lite.lm_eval"): check_lm_eval,
            ("python", "-m", "t5x_lite.quantize"): check_quantize,
            ("python", "-m", "t5x_lite.compile_check"): check_compile_check,
            ("python", "-m", "t5x_lite.curate"): check_curate,
            ("python", "tools/scaling_sweep.py"): check_sweep,
            ("python", "experiments/architecture_objective/run.py"): check_ablation,
            ("python", "experiments/mup/run.py"): check_mup_study,
            ("python", "experiments/pods/run.py"): check_pods_study,
            ("python", "experiments/moe/run.py"): check_moe_study,
            ("python", "experiments/scaling/compare.py"): check_compare,
            ("bash",): check_script}
  for prefix, check in checks.items():
    if tuple(command[:len(prefix)]) == prefix:
      return lambda folder: check(command, folder)
  raise AssertionError(f"no test exercises this README command: {' '.join(command)}")


def test_the_guide_has_its_sections():
  titles = re.findall(r"^## (.+)$", README, flags=re.MULTILINE)
  for title in ("Install", "Quick start", "Concepts", "Configuring with gin", "Training",
                "Sharding and multi-host", "Scaling laws", "Hugging Face weights",
                "Reproducing the experiments"):
    assert title in titles
  assert len(COMMANDS) >= 15


@pytest.mark.parametrize("command", COMMANDS, ids=command_id)
def test_readme_command_works(command, tmp_path):
  handler(command)(tmp_path)


def test_the_two_process_command_trains_as_one_job(tmp_path):
  command = next(c for c in COMMANDS if any("num_processes=2" in arg for arg in c))
  with socket.socket() as probe:  # a free port instead of the README's
    probe.bind(("localhost", 0))
    port = probe.getsockname()[1]
  args = [arg.replace("12355", str(port)) for arg in in_test_folder(command, tmp_path)]
  shorter = ["--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=4",
             "--gin.TASK_FEATURE_LENGTHS={'targets': 32}", "--gin.train.eval_every=2",
             "--gin.train.eval_steps=1", "--gin.train.log_every=1"]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  processes = [subprocess.Popen(
      [sys.executable, *[arg.replace("process_id=0", f"process_id={index}") for arg in args[1:]],
       *shorter], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for index in range(2)]
  outputs = [process.communicate(timeout=HANG_TIMEOUT_S)[0] for process in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-3000:]
  assert "finished at step 2" in outputs[0]  # process 0 reports the job
  assert "'data': 2" in outputs[0]  # one device per process, one mesh across both
  assert os.path.exists(tmp_path / "t5x_lite_two_processes" / "metrics.jsonl")


def test_python_blocks_run(tmp_path):
  from transformers import LlamaConfig, LlamaForCausalLM

  hf_dir = tmp_path / "llama"
  LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=1, num_attention_heads=4,
                               num_key_value_heads=2)).save_pretrained(hf_dir)
  placeholders = {"path/to/hf_model_dir": str(hf_dir), '"out_dir"': repr(str(tmp_path / "out"))}
  for block in blocks("python"):
    for placeholder, value in placeholders.items():
      block = block.replace(placeholder, value)
    exec(compile(block, "README.md", "exec"), {})
  assert (tmp_path / "out" / "config.json").exists()


def test_gin_blocks_configure_a_training_run(tmp_path):
  assert blocks("gin")
  for index, block in enumerate(blocks("gin")):
    path = tmp_path / f"experiment_{index}.gin"
    path.write_text(block)
    configure("train", [f"--gin_file={path}"])
