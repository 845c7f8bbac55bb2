"""`python -m t5x_lite.lm_eval`: score a checkpoint with EleutherAI's lm-evaluation-harness.

  python -m t5x_lite.lm_eval --gin.CHECKPOINT_PATH="'/tmp/t5x_lite_quickstart'" \
      --tasks t5x_lite_pydocs_cloze,t5x_lite_held_out --num_fewshot 0

The model is interop/lm_eval.T5xLiteLM over CHECKPOINT_PATH (any t5x_lite run
directory; a LoRA run is merged on load). Tasks are any the harness knows: the offline
ones that ship with t5x_lite (t5x_lite_pydocs_cloze, t5x_lite_held_out and its four
tasks, t5x_lite_docstring_summary: interop/harness_tasks/) and, with a network, the
harness's own (hellaswag, lambada_openai, ...), whose datasets it downloads. Results go
to <CHECKPOINT_PATH>/lm_eval_results.json (--output_path) in the harness's format;
--log_samples adds every request and response.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import gin

from t5x_lite import gin_utils
from t5x_lite.common import files
from t5x_lite.common.errors import at_least, positive, run_cli
from t5x_lite.data.curation import report as curation_report
from t5x_lite.inference.evaluation import describe_contamination
from t5x_lite.inference.harness import (
  HARNESS_TASKS_DIR,
  HarnessError,
  T5xLiteLM,
  contamination,
  evaluation_set,
  offline_tasks,
)


@gin.configurable
def harness(checkpoint_path: str = gin.REQUIRED, tasks: Sequence[str] = ("t5x_lite_pydocs_cloze",),
            num_fewshot: Optional[int] = None, limit: Optional[float] = None,
            batch_size: int = 16, truncation: str = "left", log_samples: bool = False,
            seed: int = 0, output_path: Optional[str] = None,
            lora_base: Optional[str] = None, contamination_report: Optional[str] = None) -> dict:
  """Evaluates CHECKPOINT_PATH on `tasks` with lm_eval.simple_evaluate; writes and
  returns the harness's results. With the training corpus's curation report
  (`contamination_report`), each offline task it covers is also scored on its clean and
  contaminated items apart (results["contamination"]; the samples are logged for it)."""
  dirty = curation_report.dirty_items(contamination_report) if contamination_report else None
  from lm_eval.tasks import TaskManager

  # Indexing the harness's own thousands of task files takes seconds: only when asked for.
  manager = TaskManager(include_path=HARNESS_TASKS_DIR,
                        include_defaults=not set(tasks) <= set(offline_tasks()))
  unknown = [task for task in tasks if not manager.match_tasks([task])]
  if unknown:  # before the model loads
    raise HarnessError(f"the harness knows no task {unknown}; the offline tasks are "
                       f"{offline_tasks()} (others: `lm_eval --tasks list`).")
  output_path = output_path or os.path.join(checkpoint_path, "lm_eval_results.json")
  with files.exclusive(output_path):
    return _evaluate(checkpoint_path, list(tasks), manager, output_path, dict(
        num_fewshot=num_fewshot, limit=limit, log_samples=log_samples or dirty is not None,
        random_seed=seed,
        numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed),
        T5xLiteLM(checkpoint_path, batch_size=batch_size, truncation=truncation,
                  lora_base=lora_base), dirty)


def _evaluate(checkpoint_path, tasks, manager, output_path, settings, model, dirty) -> dict:
  from lm_eval import evaluator
  from lm_eval import utils as harness_utils

  try:
    results = evaluator.simple_evaluate(model=model, tasks=tasks, task_manager=manager,
                                        **settings)
  except (ConnectionError, OSError) as error:
    if isinstance(error, HarnessError):
      raise
    raise HarnessError(
        f"a task in {tasks} needs its dataset downloaded from the Hugging Face Hub "
        f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); run with network "
        f"access, or use the offline tasks {offline_tasks()}.") from None
  for task, samples in results.get("samples", {}).items() if dirty is not None else ():
    name = evaluation_set(task)
    if name in dirty:
      results.setdefault("contamination", {})[task] = contamination(samples, dirty[name])
  with files.atomic_write(output_path) as handle:
    json.dump(results, handle, indent=1, default=harness_utils.handle_non_serializable)
  results["output_path"] = output_path
  return results


def parse(argv: Sequence[str]) -> None:
  """The harness's own flags (--tasks, --num_fewshot, ...) bind `harness.*`; --gin_file and
  --gin.KEY=VALUE are gin's, CHECKPOINT_PATH among them."""
  parser = argparse.ArgumentParser(prog="python -m t5x_lite.lm_eval", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--tasks", help="comma-separated task or group names")
  parser.add_argument("--num_fewshot", type=at_least(0))
  parser.add_argument("--limit", type=positive(), help="examples per task (testing)")
  parser.add_argument("--batch_size", type=at_least(1))
  parser.add_argument("--output_path")
  parser.add_argument("--log_samples", action="store_true", default=None)
  parser.add_argument("--lora_base", help="a LoRA run's base, when it has moved")
  parser.add_argument("--contamination_report",
                      help="the training corpus's curation report: score clean and "
                      "contaminated items apart")
  args, rest = parser.parse_known_args(argv)
  bindings = {"tasks": args.tasks and args.tasks.split(","), "num_fewshot": args.num_fewshot,
              "limit": args.limit, "batch_size": args.batch_size,
              "output_path": args.output_path, "log_samples": args.log_samples,
              "lora_base": args.lora_base, "contamination_report": args.contamination_report}
  gin_utils.parse_flags(["--gin_file=runs/lm_eval.gin", *rest] + [
      f"--gin.harness.{key}={value!r}" for key, value in bindings.items() if value is not None])


def main(argv: Sequence[str]) -> int:
  return run_cli(lambda: _main(argv))


def _main(argv: Sequence[str]) -> int:
  parse(argv)
  gin_utils.register_tasks()
  gin_utils.check_required("harness")
  results = harness()
  for task, metrics in results["results"].items():
    shown = ", ".join(f"{name.split(',')[0]} {value:.4f}" for name, value in metrics.items()
                      if isinstance(value, float) and "stderr" not in name)
    print(f"{task}: {shown}")
  for task, split in results.get("contamination", {}).items():
    print(f"{task}: " + describe_contamination(split))
  print(f"results: {results['output_path']}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
