"""`python -m t5x_lite.infer`: generate from (or score with) a trained model.

  python -m t5x_lite.infer --gin_file=runs/infer.gin \
      --gin.CHECKPOINT_PATH="'/tmp/t5x_lite_quickstart'" --gin.INFER_INPUTS="'prompts.txt'" \
      --gin.INFER_OUTPUT="'/tmp/predictions.jsonl'" [--gin.infer.method="'beam'"]

Inputs (infer.inputs): a text file (one prompt per line), a JSONL file of
{"inputs": str, "targets": str (optional; needed to score)}, or None for the
task's `split` (its inputs; for language-modelling tasks without inputs, the
first `prompt_length` tokens, the rest kept as the reference). Malformed
lines are reported with their line numbers and skipped. The model comes from the
checkpoint's run directory; the task (MIXTURE_OR_TASK_NAME, by default the
training task) supplies the vocabulary. mode='predict' writes
{"inputs", "prediction", "score"} per line ("beams" too for beam search);
mode='score' writes each target's log-likelihood, token count and perplexity.
The work is done by t5x_lite/textio.py; this module is its command line.
"""

from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

import gin

from t5x_lite import gin_utils
from t5x_lite.common import files
from t5x_lite.common.errors import check_at_least, run_cli
from t5x_lite.inference import textio
from t5x_lite.runs import loading


@gin.configurable
def infer(checkpoint_path: str = gin.REQUIRED, task: Optional[str] = None,
          output_path: str = gin.REQUIRED, inputs: Optional[str] = None, mode: str = "predict",
          split: str = "validation", num_examples: int = 16, prompt_length: int = 32,
          method: str = "greedy", max_new_tokens: int = 64, temperature: float = 1.0,
          top_k: int = 0, top_p: float = 1.0, beams: int = 4, alpha: float = 0.6,
          batch_size: int = 8, seed: int = 0, quantize: Optional[str] = None,
          lora_base: Optional[str] = None) -> dict:
  """Writes predictions (or scores) of CHECKPOINT_PATH's model for `inputs` to output_path.
  `quantize` (e.g. 'int8_weights', quantization.MODES) quantizes the model's weights first.
  `lora_base`: where a LoRA run's base is now, when it has moved (checked by fingerprint).

  task: supplies the vocabulary (and the examples when `inputs` is None); None means
    the task the checkpoint was trained on.
  method: 'greedy', 'sample' (temperature, top_k, top_p) or 'beam' (beams, alpha).
  """
  if mode not in ("predict", "score") or method not in ("greedy", "sample", "beam"):
    raise textio.InferenceError(
        f"infer.mode={mode!r} / infer.method={method!r}: choose mode from 'predict', 'score' "
        "and method from 'greedy', 'sample', 'beam'.")
  check_at_least("infer", 1, batch_size=batch_size, num_examples=num_examples,
                 prompt_length=prompt_length, max_new_tokens=max_new_tokens, beams=beams)
  check_at_least("infer", 0, top_k=top_k)
  with files.exclusive(output_path):  # a second infer writing here is refused now, not later
    return _infer(checkpoint_path, task, output_path, inputs, mode, split, num_examples,
                  prompt_length, dict(method=method, max_new_tokens=max_new_tokens,
                                      temperature=temperature, top_k=top_k, top_p=top_p,
                                      beams=beams, alpha=alpha, seed=seed),
                  batch_size, quantize, lora_base)


def _infer(checkpoint_path, task, output_path, inputs, mode, split, num_examples,
           prompt_length, decoding, batch_size, quantize, lora_base) -> dict:
  model = loading.load_model(checkpoint_path, gin_utils.checkpoint_model_config(checkpoint_path),
                             quantize=quantize, base=lora_base)
  task = textio.resolve_task(checkpoint_path, task, model.config.vocab_size)
  input_vocabulary, target_vocabulary, add_eos = textio.task_vocabularies(task)
  examples = (textio.read_examples(inputs) if inputs else
              textio.task_examples(task, split, num_examples, prompt_length))
  prompts = textio.encode_prompts(examples, input_vocabulary, add_eos)
  if mode == "predict":
    results = textio.predict(model, prompts, target_vocabulary, batch_size=batch_size,
                             **decoding)
  else:
    results = textio.score_examples(model, examples, prompts, target_vocabulary,
                                       batch_size, add_eos)
  with files.atomic_write(output_path) as handle:
    for example, result in zip(examples, results):
      handle.write(json.dumps({**example, **result}) + "\n")
  return {"examples": len(results), "output_path": output_path, "results": results,
          "examples_text": examples}


def main(argv: Sequence[str]) -> int:
  return run_cli(lambda: _main(argv))


def _main(argv: Sequence[str]) -> int:
  gin_utils.parse_flags(argv)
  gin_utils.register_tasks()
  gin_utils.check_required("infer")
  summary = infer()
  for example, result in list(zip(summary["examples_text"], summary["results"]))[:3]:
    print(f"input:  {example['inputs'][-300:]!r}")
    if "prediction" in result:
      print(f"output: {result['prediction']!r} (log-likelihood {result['score']:.2f})\n")
    else:
      print(f"targets {example['targets']!r}: log-likelihood {result['log_likelihood']:.2f}, "
            f"perplexity {result['perplexity']:.2f}\n")
  print(f"{summary['examples']} examples written to {summary['output_path']}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
