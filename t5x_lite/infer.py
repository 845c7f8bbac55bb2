"""`python -m t5x_lite.infer`: generate from (or score with) a trained model.

  python -m t5x_lite.infer --gin_file=runs/infer.gin --gin_file=models/quickstart_decoder.gin \
      --gin.CHECKPOINT_PATH="'/tmp/t5x_lite_quickstart'" --gin.INFER_INPUTS="'prompts.txt'" \
      --gin.INFER_OUTPUT="'/tmp/predictions.jsonl'" [--gin.infer.method="'beam'"]

Inputs (infer.inputs): a text file (one prompt per line), a JSONL file of
{"inputs": str, "targets": str (optional; needed to score)}, or None for the
task's `split` (its inputs; for language-modelling tasks without inputs, the
first `prompt_length` tokens, the rest kept as the reference). Malformed
lines are reported with their line numbers and skipped. The task
(MIXTURE_OR_TASK_NAME) supplies the vocabulary. mode='predict' writes
{"inputs", "prediction", "score"} per line ("beams" too for beam search);
mode='score' writes each target's log-likelihood, token count and perplexity.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Mapping, Optional, Sequence

import gin
import numpy as np

from t5x_lite import checkpoints, files, gin_utils, run_dir
from t5x_lite.data import check_vocabulary, get_task, vocabularies
from t5x_lite.errors import UserError, run_cli


class InferenceError(UserError, ValueError):
  """Bad inference input: the message names the file, line or setting to fix."""


def load_model(checkpoint_path: str):
  """The model of CHECKPOINT_PATH: the config its run directory recorded (gin may change
  only precision/layout knobs, gin_utils.checkpoint_model_config) holding the params of
  its newest readable checkpoint."""
  return checkpoints.load_model(checkpoint_path,
                                gin_utils.checkpoint_model_config(checkpoint_path))


def resolve_task(checkpoint_path: str, task: Optional[str], vocab_size: int) -> str:
  """The task whose vocabulary reads and writes the model's token ids.

  None means the task the checkpoint was trained on. Any task must fit the model's
  vocabulary size, and, when the run recorded its vocabulary, use that vocabulary.
  """
  record = run_dir.read_record(checkpoint_path)
  if task is None:
    if record is None:
      raise InferenceError(f"{checkpoint_path} records no training task; set "
                           "MIXTURE_OR_TASK_NAME to a task with the model's vocabulary.")
    task = record["spec"]["train"]["task"]
  check_vocabulary(task, vocab_size)
  trained_with = (record or {}).get("vocabulary")
  used = vocabularies.describe(get_task(task).output_features["targets"].vocabulary)
  if trained_with and used != trained_with:
    raise InferenceError(f"task {task!r} uses vocabulary {used} but {checkpoint_path} was "
                         f"trained with {trained_with}; its token ids would be misread. Use "
                         "a task with the training vocabulary (or leave MIXTURE_OR_TASK_NAME "
                         "unset for the training task).")
  return task


def task_vocabularies(task: str):
  """(inputs vocabulary, targets vocabulary, whether inputs end in EOS) of a seqio task."""
  features = get_task(task).output_features
  inputs = features.get("inputs", features["targets"])
  return inputs.vocabulary, features["targets"].vocabulary, "inputs" in features and \
      inputs.add_eos


def read_examples(path: str, warn=None) -> list[dict]:
  """{"inputs": str, optional "targets": str} from a .jsonl or text file."""
  if not os.path.isfile(path):
    raise InferenceError(f"inputs file {path!r} does not exist; check infer.inputs.")
  examples = []
  with open(path, encoding="utf-8") as handle:
    for number, line in enumerate(handle, start=1):
      if not line.strip():
        continue
      if not path.endswith(".jsonl"):
        examples.append({"inputs": line.rstrip("\n")})
        continue
      try:
        record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get("inputs"), str):
          raise ValueError('needs an "inputs" string')
        if not record["inputs"].strip():
          raise ValueError("empty inputs")
        examples.append({k: record[k] for k in ("inputs", "targets") if k in record})
      except ValueError as error:
        print(f"warning: {path}:{number}: skipped: {error}", file=warn or sys.stderr)
  if not examples:
    raise InferenceError(f"{path} holds no usable example.")
  return examples


def task_examples(task: str, split: str, count: int, prompt_length: int,
                  feature_lengths: Optional[Mapping[str, int]] = None) -> list[dict]:
  """The first `count` examples of a task split as text, cut by the task's preprocessors
  at `feature_lengths` (default 4096 tokens each)."""
  import seqio

  provider = seqio.get_mixture_or_task(task)
  lengths = {"inputs": 4096, "targets": 4096, **(feature_lengths or {})}
  dataset = provider.get_dataset(lengths, split=split, shuffle=False, num_epochs=1)
  vocabulary = provider.output_features["targets"].vocabulary
  examples = []
  for example in dataset.take(count).as_numpy_iterator():
    if "inputs" in example:
      examples.append({"inputs": vocabulary.decode(example["inputs"].tolist()),
                       "targets": vocabulary.decode(example["targets"].tolist())})
    else:
      tokens = example["targets"].tolist()
      examples.append({"inputs": vocabulary.decode(tokens[:prompt_length]),
                       "targets": vocabulary.decode(tokens[prompt_length:])})
  return examples


def encode_prompts(examples: Sequence[dict], vocabulary, add_eos: bool) -> list[list[int]]:
  encoded = []
  for number, example in enumerate(examples, start=1):
    tokens = list(vocabulary.encode(example["inputs"])) + ([1] if add_eos else [])
    if not tokens:
      raise InferenceError(f"example {number} has empty inputs.")
    encoded.append(tokens)
  return encoded


def padded(rows: Sequence[Sequence[int]], limit: Optional[int] = None) -> np.ndarray:
  """Right-padded [n, length] ids, the length rounded up to 32 (fewer compilations)."""
  length = max(32, -(-max(map(len, rows)) // 32) * 32)
  if limit is not None:
    length = min(length, max(limit, max(map(len, rows))))
  array = np.zeros((len(rows), length), np.int32)
  for row, tokens in enumerate(rows):
    array[row, :len(tokens)] = tokens
  return array


def _check_lengths(prompts: Sequence[Sequence[int]], config, max_new_tokens: int) -> None:
  limit = config.architecture_spec.prompt_limit(config.max_length, max_new_tokens)
  for number, tokens in enumerate(prompts, start=1):
    if len(tokens) > limit:
      raise InferenceError(
          f"example {number}: its prompt has {len(tokens)} tokens; with {max_new_tokens} new "
          f"tokens the model's maximum length {config.max_length} allows {limit}. Shorten it "
          "or lower infer.max_new_tokens.")


def predict(model, prompts: list[list[int]], vocabulary, *, method: str, max_new_tokens: int,
            temperature: float, top_k: int, top_p: float, beams: int, alpha: float,
            batch_size: int, seed: int) -> list[dict]:
  """Generated text and its score for each prompt."""
  from t5x_lite import decoding

  _check_lengths(prompts, model.config, max_new_tokens)
  limit = model.config.architecture_spec.prompt_limit(model.config.max_length, max_new_tokens)
  results = []
  for start in range(0, len(prompts), batch_size):
    batch = padded(prompts[start:start + batch_size], limit)
    if method == "beam":
      decoded = decoding.beam_search(model, batch, max_new_tokens=max_new_tokens, beams=beams,
                                     alpha=alpha)
      for tokens, scores in zip(decoded.tokens, decoded.scores):
        texts = [vocabulary.decode(_until_eos(t)) for t in tokens]
        results.append({"prediction": texts[0], "score": float(scores[0]),
                        "beams": [{"text": t, "score": float(s)} for t, s in zip(texts, scores)]})
    else:
      decoded = decoding.generate(model, batch, max_new_tokens=max_new_tokens,
                                  temperature=0.0 if method == "greedy" else temperature,
                                  top_k=top_k, top_p=top_p, seed=seed + start)
      for tokens, score in zip(decoded.tokens, decoded.scores):
        results.append({"prediction": vocabulary.decode(_until_eos(tokens)),
                        "score": float(score)})
  return results


def _until_eos(tokens) -> list[int]:
  tokens = [int(t) for t in tokens]
  return tokens[:tokens.index(1)] if 1 in tokens else [t for t in tokens if t > 0]


def score_examples(model, examples: Sequence[dict], prompts: list[list[int]], vocabulary,
                   batch_size: int, add_eos: bool) -> list[dict]:
  from t5x_lite import decoding

  missing = [n for n, e in enumerate(examples, start=1) if not e.get("targets")]
  if missing:
    raise InferenceError(f"mode='score' needs targets; examples {missing[:10]} have none.")
  results = []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    targets = [list(vocabulary.encode(e["targets"])) for e in chunk]
    if add_eos:  # as the task's targets were in training
      targets = [t + [1] for t in targets]
    sums, counts = decoding.score(model, prompts[start:start + batch_size], targets)
    for total, count in zip(sums, counts):
      results.append({"log_likelihood": float(total), "tokens": int(count),
                      "perplexity": math.exp(min(-total / max(count, 1), 50.0))})
  return results


@gin.configurable
def infer(checkpoint_path: str = gin.REQUIRED, task: Optional[str] = None,
          output_path: str = gin.REQUIRED, inputs: Optional[str] = None, mode: str = "predict",
          split: str = "validation", num_examples: int = 16, prompt_length: int = 32,
          method: str = "greedy", max_new_tokens: int = 64, temperature: float = 1.0,
          top_k: int = 0, top_p: float = 1.0, beams: int = 4, alpha: float = 0.6,
          batch_size: int = 8, seed: int = 0) -> dict:
  """Writes predictions (or scores) of CHECKPOINT_PATH's model for `inputs` to output_path.

  task: supplies the vocabulary (and the examples when `inputs` is None); None means
    the task the checkpoint was trained on.
  method: 'greedy', 'sample' (temperature, top_k, top_p) or 'beam' (beams, alpha).
  """
  if mode not in ("predict", "score") or method not in ("greedy", "sample", "beam"):
    raise InferenceError(f"infer.mode={mode!r} / infer.method={method!r}: choose mode from "
                         "'predict', 'score' and method from 'greedy', 'sample', 'beam'.")
  model = load_model(checkpoint_path)
  task = resolve_task(checkpoint_path, task, model.config.vocab_size)
  input_vocabulary, target_vocabulary, add_eos = task_vocabularies(task)
  examples = read_examples(inputs) if inputs else task_examples(task, split, num_examples,
                                                                prompt_length)
  prompts = encode_prompts(examples, input_vocabulary, add_eos)
  if mode == "predict":
    results = predict(model, prompts, target_vocabulary, method=method,
                      max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                      top_p=top_p, beams=beams, alpha=alpha, batch_size=batch_size, seed=seed)
  else:
    results = score_examples(model, examples, prompts, target_vocabulary, batch_size,
                             add_eos)
  with files.atomic_write(output_path) as handle:
    for example, result in zip(examples, results):
      handle.write(json.dumps({**example, **result}) + "\n")
  return {"examples": len(results), "output_path": output_path, "results": results,
          "examples_text": examples}


def main(argv: Sequence[str]) -> int:
  return run_cli(lambda: _main(argv))


def _main(argv: Sequence[str]) -> int:
  gin_utils.parse_flags(argv)
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
