"""Preference pairs from the user's JSONL or TSV files: {"prompt", "chosen", "rejected"}.

Rows are read as supervised data's are (data/supervised.py): optional templates (a JSON
file of {"prompt": ..., "chosen": ..., "rejected": ...} format strings over the row's
fields, one picked per row by a hash of the row), bad rows reported `path:line: why` and
skipped, and the validation split from its own files or a content-hash split of the
training rows. A row is bad when it is not an object with the three strings, when a
completion is empty, when chosen and rejected are the same text (no preference), or when
the prompt or a completion does not fit the run's feature lengths: a cut completion
would change the very log-probability the objectives compare.

Batches hold `pairs` pairs as 2 x pairs rows, [chosen rows; rejected rows] (row i and
row i + pairs are one pair, as models/alignment_losses.py reads them), laid out by the
architecture's seqio converter without packing: the encoder-decoder reads the prompt in
its encoder; decoders read [prompt, completion], the prefix decoder bidirectionally over
the prompt; the loss weights cover the completion only. The prompt and each completion
end with EOS, as supervised examples do. Pairs are shuffled each epoch with the run's
seed; the iterator's position is saved and restored exactly (pipeline.BatchIterator).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.data import text_files, vocabularies
from t5x_lite.data.corpus_store import CorpusError, is_validation
from t5x_lite.data.pipeline import BatchIterator, DataError, DataSpec
from t5x_lite.data.supervised import (
  RowReport,
  check_row_files,
  load_templates,
  read_rows,
  template_fields,
)
from t5x_lite.models import architectures

FIELDS = ("prompt", "chosen", "rejected")
# The task names a preference run trains on (MIXTURE_OR_TASK_NAME): the rows bound as
# `preference_data.*` in the default vocabulary, or in bytes.
TASKS = ("preference", "preference.byte")
# Each row carries the index of its pair (pair_batches), by which the trainer looks up
# cached reference log-probabilities.
PAIR_INDEX = "pair_index"


@dataclasses.dataclass(frozen=True)
class PreferenceData:
  """The user's preference pairs (gin, at the entry points: `preference_data.*`).

  Attributes:
    train: globs or directories of .jsonl / .tsv files.
    validation: the same for the validation split; empty: a hash split of `train`.
    validation_fraction: share of `train` rows held out when `validation` is empty.
    templates: a JSON file {"templates": [{"prompt": ..., "chosen": ..., "rejected":
      ...}]} of format strings over row fields; None: the rows' own three fields.
  """
  train: tuple[str, ...] = ()
  validation: tuple[str, ...] = ()
  validation_fraction: float = 0.05
  templates: Optional[str] = None

  def __post_init__(self):
    check_row_files(self, "preference_data")


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
  prompt: tuple[int, ...]
  chosen: tuple[int, ...]
  rejected: tuple[int, ...]


def read_pairs(data: PreferenceData, split: str, vocabulary: seqio.Vocabulary,
               feature_lengths: Mapping[str, int]) -> tuple[list[TokenizedPair], RowReport]:
  """The tokenized (prompt, chosen, rejected) pairs of `split` (each part ending in EOS)
  that fit `feature_lengths`, and the report of the rows skipped."""
  templates = load_templates(data.templates, FIELDS, "preference_data.templates")
  patterns = data.validation if split == "validation" and data.validation else data.train
  if not patterns:
    raise CorpusError("preference_data.train names no files: bind "
                      "preference_data.train = ['path/to/pairs.jsonl'].")
  prompt_room, completion_room = _room(feature_lengths)
  files = text_files.resolve_files(patterns, suffixes=text_files.JSONL_SUFFIXES + (".tsv",))
  report, pairs = RowReport(), []
  eos = vocabulary.eos_id
  for path in files:
    for number, row in read_rows(path):
      where = f"{path}:{number}"
      if isinstance(row, str):
        report.skipped.append(f"{where}: {row}")
        continue
      content = json.dumps(row, sort_keys=True)
      template = templates[int(hashlib.sha256(content.encode()).hexdigest(), 16)
                           % len(templates)] if isinstance(row, dict) else None
      needed = template_fields(template) if template else set(FIELDS)
      missing = sorted(f for f in needed if not isinstance(row, dict)
                       or not isinstance(row.get(f), str))
      if missing:
        report.skipped.append(f"{where}: missing or non-string field(s) {missing}")
        continue
      text = {field: template[field].format_map(row) for field in FIELDS}
      empty = [field for field in ("chosen", "rejected") if not text[field].strip()]
      if empty:
        report.skipped.append(f"{where}: empty {' and '.join(empty)}")
        continue
      if text["chosen"] == text["rejected"]:
        report.skipped.append(f"{where}: chosen and rejected are the same text")
        continue
      if not data.validation and is_validation(content, data.validation_fraction) != (
          split == "validation"):
        continue
      tokens = {field: tuple(vocabulary.encode(text[field])) + (eos,) for field in FIELDS}
      too_long = [f"{field} is {len(tokens[field])} tokens (room for {room})"
                  for field, room in (("prompt", prompt_room), ("chosen", completion_room),
                                      ("rejected", completion_room))
                  if len(tokens[field]) > room]
      if too_long:
        report.skipped.append(f"{where}: {'; '.join(too_long)}; raise TASK_FEATURE_LENGTHS "
                              "or shorten the row")
        continue
      pairs.append(TokenizedPair(tokens["prompt"], tokens["chosen"], tokens["rejected"]))
  report.used = len(pairs)
  if not pairs:
    detail = f" ({len(report.skipped)} bad rows, e.g. {report.skipped[0]})" \
        if report.skipped else ""
    raise CorpusError(f"preference data: no usable {split} pairs in {list(patterns)}{detail}.")
  return pairs, report


_REGISTERED: dict[str, PreferenceData] = {}


def register(data: PreferenceData) -> None:
  """Binds the preference tasks (TASKS) to `data` (entry points, from `preference_data.*`)."""
  _REGISTERED["data"] = data


def is_preference_task(task: str) -> bool:
  return task in TASKS


def registered() -> PreferenceData:
  """The rows the preference tasks read; a DataError when none were bound."""
  if "data" not in _REGISTERED:
    raise DataError("the preference task reads the pairs bound as preference_data.train = "
                    "['pairs.jsonl'] (rows {\"prompt\", \"chosen\", \"rejected\"}); bind it.")
  return _REGISTERED["data"]


def vocabulary(task: str) -> seqio.Vocabulary:
  """The vocabulary a preference task tokenizes with."""
  return (vocabularies.byte_vocabulary() if task.endswith(".byte")
          else vocabularies.default_vocabulary())


def _room(feature_lengths: Mapping[str, int]) -> tuple[int, int]:
  if "inputs" not in feature_lengths or "targets" not in feature_lengths:
    raise DataError(f"preference data needs inputs (prompt) and targets (completion) "
                    f"lengths; TASK_FEATURE_LENGTHS is {dict(feature_lengths)}.")
  return int(feature_lengths["inputs"]), int(feature_lengths["targets"])


def fingerprint(pairs: list[TokenizedPair]) -> str:
  """A digest of the pairs' tokens in order: what a run records about its data."""
  digest = hashlib.sha256()
  for pair in pairs:
    digest.update(json.dumps([pair.prompt, pair.chosen, pair.rejected]).encode())
  return digest.hexdigest()[:16]


def _ragged(rows: list[tuple[int, ...]]) -> tf.RaggedTensor:
  return tf.RaggedTensor.from_row_lengths(
      np.concatenate([np.asarray(r, np.int32) for r in rows]),
      np.asarray([len(r) for r in rows], np.int64))


def get_pair_batches(pairs: list[TokenizedPair], feature_lengths: Mapping[str, int],
                     split: str, pairs_per_batch: int, architecture: str,
                     shard: Optional[seqio.ShardInfo] = None, seed: int = 0,
                     shuffle: Optional[bool] = None, name: str = "preference"
                     ) -> BatchIterator:
  """Endless batches of 2 x pairs_per_batch / num_shards rows for one host: [chosen rows;
  rejected rows] of this host's pairs, reshuffled each epoch (training) or in file order.
  `name` (with the pairs' fingerprint) identifies the data in a saved position."""
  shard = shard or seqio.ShardInfo(index=0, num_shards=1)
  if pairs_per_batch % shard.num_shards:
    raise DataError(f"{pairs_per_batch} pairs per batch do not divide over {shard.num_shards} "
                    "hosts; choose a multiple of the number of hosts.")
  if architecture not in architectures.ARCHITECTURES:
    raise DataError(f"unknown architecture {architecture!r}; choose from "
                    f"{list(architectures.ARCHITECTURES)}.")
  _room(feature_lengths)
  per_host = pairs_per_batch // shard.num_shards
  shuffle = split == "train" if shuffle is None else shuffle
  spec = DataSpec(task=f"{name}:{fingerprint(pairs)}", feature_lengths=dict(feature_lengths),
                  split=split, batch_size=2 * pairs_per_batch, architecture=architecture,
                  shard_index=shard.index, num_shards=shard.num_shards, seed=seed,
                  shuffle=shuffle, num_epochs=None, pack=False)
  prompts = _ragged([p.prompt for p in pairs])
  completions = {"chosen": _ragged([p.chosen for p in pairs]),
                 "rejected": _ragged([p.rejected for p in pairs])}
  indices = tf.data.Dataset.range(len(pairs)).shard(shard.num_shards, shard.index)
  if shuffle:
    indices = indices.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
  indices = indices.repeat()
  converter = architectures.get(architecture).feature_converter(
      pack=False, passthrough={PAIR_INDEX: tf.int32})
  lengths = {"inputs": int(feature_lengths["inputs"]), "targets": int(feature_lengths["targets"]),
             PAIR_INDEX: 1}

  def both_sides(i):  # chosen then rejected: one stream keeps each pair together
    index = tf.cast(tf.reshape(i, [1]), tf.int32)
    return tf.data.Dataset.from_tensors(
        {"inputs": prompts[i], "targets": completions["chosen"][i],
         PAIR_INDEX: index}).concatenate(tf.data.Dataset.from_tensors(
             {"inputs": prompts[i], "targets": completions["rejected"][i], PAIR_INDEX: index}))

  rows = converter(indices.flat_map(both_sides), lengths)  # unpacked: one row per example
  # Rows come as c0 r0 c1 r1 ...; the objectives read [c0 c1 ...; r0 r1 ...].
  order = np.concatenate([np.arange(0, 2 * per_host, 2), np.arange(1, 2 * per_host, 2)])
  both = rows.batch(2 * per_host, drop_remainder=True).map(
      lambda batch: {key: (tf.gather(value, order) if key != PAIR_INDEX
                           else tf.gather(value[:, 0], order)) for key, value in batch.items()})
  return BatchIterator(spec, both.prefetch(tf.data.AUTOTUNE), 2 * per_host)


def completion_features(prompts: list[str], completions: list[str],
                        vocabulary: seqio.Vocabulary, feature_lengths: Mapping[str, int],
                        architecture: str) -> dict[str, np.ndarray]:
  """(prompt, completion) rows laid out as training lays out each side of a pair (what a
  reward model scores): each tokenized and ended with EOS; a prompt or completion that
  does not fit is a DataError."""
  if len(prompts) != len(completions) or not prompts:
    raise DataError(f"give as many prompts as completions, at least one (got {len(prompts)} "
                    f"and {len(completions)}).")
  eos = vocabulary.eos_id
  return token_features([list(vocabulary.encode(p)) + [eos] for p in prompts],
                        [list(vocabulary.encode(c)) + [eos] for c in completions],
                        feature_lengths, architecture)


def token_features(prompts: list[list[int]], completions: list[list[int]],
                   feature_lengths: Mapping[str, int], architecture: str
                   ) -> dict[str, np.ndarray]:
  """Rows of (prompt tokens, completion tokens) as given (no EOS added), laid out by the
  architecture's converter without packing, the loss weights on the completion."""
  prompt_room, completion_room = _room(feature_lengths)
  for number, (prompt, completion) in enumerate(zip(prompts, completions)):
    for part, tokens, room in (("prompt", prompt, prompt_room),
                               ("completion", completion, completion_room)):
      if len(tokens) > room:
        raise DataError(f"row {number}: the {part} is {len(tokens)} tokens, over the {room} "
                        "of TASK_FEATURE_LENGTHS; shorten it or raise the length.")
      if not tokens:
        raise DataError(f"row {number}: the {part} is empty.")
  examples = tf.data.Dataset.from_tensor_slices(
      {"inputs": _ragged([tuple(p) for p in prompts]),
       "targets": _ragged([tuple(c) for c in completions])})
  converter = architectures.get(architecture).feature_converter(pack=False)
  lengths = {"inputs": prompt_room, "targets": completion_room}
  batch = next(iter(converter(examples, lengths).batch(len(prompts))))
  return {key: value.numpy() for key, value in batch.items()}
