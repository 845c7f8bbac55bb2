"""Inference as a library: prompts and targets from files or task splits, generation and
scoring over a loaded model. The command line (`python -m t5x_lite.infer`) is infer.py.

Prompts are encoded with the vocabulary of a task (by default the one the checkpoint
was trained on, resolve_task), laid out for the model's architecture by decoding.py,
and cut at the vocabulary's EOS.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Mapping, Optional, Sequence

import numpy as np

from t5x_lite.common.errors import UserError
from t5x_lite.data import check_vocabulary, get_task, text_files, vocabularies
from t5x_lite.inference import decoding
from t5x_lite.runs import run_dir


class InferenceError(UserError, ValueError):
  """Bad inference input: the message names the file, line or setting to fix."""


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
  """{"inputs": str, optional "targets": str} from a .jsonl or text file; malformed lines
  are reported as file:line on `warn` (stderr) and skipped."""
  if not os.path.isfile(path):
    raise InferenceError(f"inputs file {path!r} does not exist; check infer.inputs.")
  examples = []
  with open(path, "rb") as handle:  # not UTF-8: one error naming the offset
    lines = text_files.record_lines(handle.read(), path)
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    if not path.endswith(".jsonl"):
      examples.append({"inputs": line})
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
  provider = get_task(task)
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
  """Token ids of each example's inputs, ending in EOS when the task's inputs do."""
  encoded = []
  for number, example in enumerate(examples, start=1):
    tokens = list(vocabulary.encode(example["inputs"])) + ([vocabulary.eos_id] if add_eos
                                                           else [])
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


def check_lengths(prompts: Sequence[Sequence[int]], config, max_new_tokens: int,
                  fix: str = "Shorten it or lower infer.max_new_tokens.",
                  name: str = "example") -> None:
  """Refuses a prompt longer than the model's positions allow (architecture's limit); `fix`
  says which knobs to change, `name` what a prompt is."""
  limit = config.architecture_spec.prompt_limit(config.max_length, max_new_tokens)
  for number, tokens in enumerate(prompts, start=1):
    if len(tokens) > limit:
      raise InferenceError(
          f"{name} {number}: its prompt has {len(tokens)} tokens; with {max_new_tokens} new "
          f"tokens the model's maximum length {config.max_length} allows {limit}. {fix}")


def predict(model, prompts: list[list[int]], vocabulary, *, method: str, max_new_tokens: int,
            temperature: float, top_k: int, top_p: float, beams: int, alpha: float,
            batch_size: int, seed: int) -> list[dict]:
  """Generated text and its score for each prompt (EOS: the vocabulary's)."""
  check_lengths(prompts, model.config, max_new_tokens)
  eos = vocabulary.eos_id
  limit = model.config.architecture_spec.prompt_limit(model.config.max_length, max_new_tokens)
  results = []
  for start in range(0, len(prompts), batch_size):
    batch = padded(prompts[start:start + batch_size], limit)
    if method == "beam":
      decoded = decoding.beam_search(model, batch, max_new_tokens=max_new_tokens, beams=beams,
                                     alpha=alpha, eos_id=eos)
      for tokens, scores in zip(decoded.tokens, decoded.scores):
        texts = [vocabulary.decode(until_eos(t, eos)) for t in tokens]
        results.append({"prediction": texts[0], "score": float(scores[0]),
                        "beams": [{"text": t, "score": float(s)} for t, s in zip(texts, scores)]})
    else:
      decoded = decoding.generate(model, batch, max_new_tokens=max_new_tokens,
                                  temperature=0.0 if method == "greedy" else temperature,
                                  top_k=top_k, top_p=top_p, seed=seed + start, eos_id=eos)
      for tokens, score in zip(decoded.tokens, decoded.scores):
        results.append({"prediction": vocabulary.decode(until_eos(tokens, eos)),
                        "score": float(score)})
  return results


def until_eos(tokens, eos_id: int) -> list[int]:
  """Generated ids up to (not including) EOS, without padding."""
  tokens = [int(t) for t in tokens]
  return tokens[:tokens.index(eos_id)] if eos_id in tokens else [t for t in tokens if t > 0]


def score_examples(model, examples: Sequence[dict], prompts: list[list[int]], vocabulary,
                   batch_size: int, add_eos: bool) -> list[dict]:
  """Log-likelihood, token count and perplexity of each example's targets given its
  prompt (targets end in EOS when the task's do)."""
  missing = [n for n, e in enumerate(examples, start=1) if not e.get("targets")]
  if missing:
    raise InferenceError(f"mode='score' needs targets; examples {missing[:10]} have none.")
  results = []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    targets = [list(vocabulary.encode(e["targets"])) for e in chunk]
    if add_eos:  # as the task's targets were in training
      targets = [t + [vocabulary.eos_id] for t in targets]
    sums, counts = decoding.score(model, prompts[start:start + batch_size], targets)
    for total, count in zip(sums, counts):
      results.append({"log_likelihood": float(total), "tokens": int(count),
                      "perplexity": math.exp(min(-total / max(count, 1), 50.0))})
  return results
