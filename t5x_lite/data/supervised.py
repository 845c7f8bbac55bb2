"""Supervised (inputs, targets) tasks from the user's JSONL or TSV files.

Rows are JSON objects (one per line) or TSV lines under a header naming the columns.
Without templates a row needs string "inputs" and "targets" fields; with templates
(a JSON file: {"templates": [{"inputs": "Q: {question}\\nA:", "targets": "{answer}"},
...]}, fields in braces, as T0/FLAN write their prompts) every row is rendered through
one template picked by a hash of the row, so the choice is the same in every run and
different rows see different phrasings. Templates are data: a new phrasing is a line in
that file, not code.

A bad row (not JSON, a missing or non-string field, empty targets, longer than the
optional token limits) is reported as `path:line: why` and skipped; the rest are used
and the count is printed. A template naming a field no row has is one error.

The validation split comes from its own files, or, when none are given, from a
deterministic hash of each row's text (`validation_fraction` of the rows): the same
rows land in validation whatever the file order, and never in training.

How each architecture reads the examples is seqio's converters' business (see
models/architectures.py): the encoder-decoder reads inputs in the encoder, the prefix
decoder attends bidirectionally over the inputs, the causal decoder reads [inputs,
targets] causally, and the loss is on target tokens only (loss_on_targets_only).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import string
import sys
from typing import Iterator, Optional, Sequence, TextIO

import seqio
import tensorflow as tf

from t5x_lite.data import text_files
from t5x_lite.data.corpus_store import CorpusError, is_validation

FIELDS = ("inputs", "targets")


@dataclasses.dataclass(frozen=True)
class SupervisedData:
  """The user's (inputs, targets) data (gin, at the entry points: `supervised_data.*`).

  Attributes:
    train: globs or directories of .jsonl / .tsv files.
    validation: the same for the validation split; empty: a hash split of `train`.
    validation_fraction: share of `train` rows held out when `validation` is empty.
    templates: a JSON file of prompt templates (see the module docstring); None: the
      rows' own "inputs" and "targets" fields.
    max_inputs_tokens / max_targets_tokens: rows longer than this after tokenisation
      (EOS included) are reported and skipped instead of truncated; None: the
      feature converter truncates to TASK_FEATURE_LENGTHS.
  """
  train: tuple[str, ...] = ()
  validation: tuple[str, ...] = ()
  validation_fraction: float = 0.05
  templates: Optional[str] = None
  max_inputs_tokens: Optional[int] = None
  max_targets_tokens: Optional[int] = None

  def __post_init__(self):
    check_row_files(self, "supervised_data")


def check_row_files(data, gin_name: str) -> None:
  """Row data's `train` / `validation` globs as tuples, and a validation split that can
  exist (its own files, or a fraction in [0, 1) of train): the rule of supervised and
  preference rows alike; `gin_name` names the knobs in messages."""
  for name in ("train", "validation"):
    value = getattr(data, name)
    object.__setattr__(data, name, (value,) if isinstance(value, str) else tuple(value))
  if not 0.0 <= data.validation_fraction < 1.0:
    raise CorpusError(f"{gin_name}.validation_fraction must be in [0, 1), got "
                      f"{data.validation_fraction}.")
  if not data.validation and data.validation_fraction == 0.0:
    raise CorpusError(f"{gin_name} has no validation files and validation_fraction=0; "
                      "give one or the other.")


@dataclasses.dataclass
class RowReport:
  """Rows read and the bad ones skipped, each as `path:line: why`."""
  used: int = 0
  skipped: list[str] = dataclasses.field(default_factory=list)

  def print(self, split: str, stream: TextIO = sys.stderr, limit: int = 10,
            what: str = "supervised data") -> None:
    if not self.skipped:
      return
    print(f"{what} ({split}): skipped {len(self.skipped)} bad rows, used {self.used}:",
          file=stream)
    for line in self.skipped[:limit]:
      print(f"  {line}", file=stream)
    if len(self.skipped) > limit:
      print(f"  ... and {len(self.skipped) - limit} more", file=stream)


def load_templates(path: Optional[str], fields: Sequence[str] = FIELDS,
                   knob: str = "supervised_data.templates") -> list[dict[str, str]]:
  """The templates of a JSON file, each {field: format string over row fields} for every
  one of `fields` (supervised data: inputs and targets); with no file, the identity
  template. `knob` is the gin binding that named the file, for messages."""
  if path is None:
    return [{field: f"{{{field}}}" for field in fields}]
  try:
    with open(path, "rb") as handle:
      data = json.loads(text_files.decode_utf8(handle.read(), path).removeprefix("\ufeff"))
  except FileNotFoundError:
    raise CorpusError(f"{knob}: no file {path!r}.") from None
  except OSError as error:  # a directory, no permission
    raise CorpusError(f"{knob}: cannot read {path!r} "
                      f"({error.strerror}); name a JSON file.") from None
  except json.JSONDecodeError as error:
    raise CorpusError(f"{path}:{error.lineno}: not valid JSON ({error.msg}).") from None
  templates = data.get("templates") if isinstance(data, dict) else None
  if not templates or not all(isinstance(t, dict) and all(isinstance(t.get(f), str)
                                                           for f in fields)
                              for t in templates):
    shape = ", ".join(f'\"{field}\": \"...\"' for field in fields)
    raise CorpusError(f"{path}: expected {{\"templates\": [{{{shape}}}, ...]}} with string "
                      f"{' and '.join(fields)}.")
  for number, template in enumerate(templates):
    for field in fields:
      try:
        names = [name for _, name, _, _ in string.Formatter().parse(template[field])
                 if name is not None]
        bad = [name for name in names if not name.isidentifier()]
        if bad:
          raise ValueError(f"{{{bad[0]}}} is not a field name; name a row field, e.g. "
                           "{inputs}")
        template[field].format(**{name: "" for name in names})  # format specs and conversions
      except (ValueError, KeyError, IndexError, AttributeError) as error:
        raise CorpusError(f"{path}: template {number} {field} {template[field]!r}: "
                          f"{error}.") from None
  return templates


def template_fields(template: dict[str, str]) -> set[str]:
  """The row fields a template reads."""
  return {name for text in template.values() for _, name, _, _ in string.Formatter().parse(text)
          if name}


def read_rows(path: str) -> Iterator[tuple[int, object]]:
  """(line number, parsed row or an error string) of a .jsonl or .tsv file."""
  with open(path, "rb") as handle:
    lines = text_files.record_lines(handle.read(), path)
  if path.endswith(".tsv"):
    if not lines or not lines[0]:
      return
    header = lines[0].split("\t")
    for number, row in enumerate(csv.reader(lines[1:], delimiter="\t",
                                            quoting=csv.QUOTE_NONE), start=2):
      if not row:
        continue
      if len(row) != len(header):
        yield number, f"{len(row)} columns, the header has {len(header)}"
        continue
      yield number, dict(zip(header, row))
    return
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      yield number, json.loads(line)
    except json.JSONDecodeError as error:
      yield number, f"not valid JSON ({error.msg})"


def read_examples(data: SupervisedData, split: str,
                  vocabulary: Optional[seqio.Vocabulary] = None
                  ) -> tuple[list[dict[str, str]], RowReport]:
  """The (inputs, targets) strings of `split` rendered through the templates, and the
  report of bad rows. The vocabulary is needed only for the token limits."""
  templates = load_templates(data.templates)
  patterns = data.validation if split == "validation" and data.validation else data.train
  hash_split = split if not data.validation else None
  if not patterns:
    raise CorpusError("supervised_data.train names no files: bind "
                      "supervised_data.train = ['path/to/train.jsonl'].")
  files = text_files.resolve_files(patterns, suffixes=text_files.JSONL_SUFFIXES + (".tsv",))
  report, examples, seen_fields = RowReport(), [], set()
  held_out = (0, 0)  # (rows the hash split holds out for validation, rows it splits)
  needed = set().union(*(template_fields(t) for t in templates))
  for path in files:
    for number, row in read_rows(path):
      where = f"{path}:{number}"
      if isinstance(row, str):
        report.skipped.append(f"{where}: {row}")
        continue
      if not isinstance(row, dict):
        report.skipped.append(f"{where}: expected an object with fields {sorted(needed)}")
        continue
      seen_fields.update(row)
      # The row's own content picks its template and split: stable under reordering.
      content = json.dumps(row, sort_keys=True)
      template = templates[int(hashlib.sha256(content.encode()).hexdigest(), 16)
                           % len(templates)]
      missing = sorted(f for f in template_fields(template) if not isinstance(row.get(f), str))
      if missing:
        report.skipped.append(f"{where}: missing or non-string field(s) {missing}")
        continue
      example = {field: template[field].format_map(row) for field in FIELDS}
      if not example["targets"].strip():
        report.skipped.append(f"{where}: empty targets")
        continue
      if hash_split is not None:
        in_validation = is_validation(content, data.validation_fraction)
        held_out = (held_out[0] + in_validation, held_out[1] + 1)
        if in_validation != (hash_split == "validation"):
          continue
      too_long = _over_limits(example, data, vocabulary)
      if too_long:
        report.skipped.append(f"{where}: {too_long}")
        continue
      examples.append(example)
  unknown = sorted(needed - seen_fields)
  if unknown and seen_fields:
    raise CorpusError(f"the templates{' in ' + data.templates if data.templates else ''} name "
                      f"field(s) {unknown} that no row has; rows have {sorted(seen_fields)}.")
  report.used = len(examples)
  if not examples and hash_split is not None and held_out[1]:
    raise CorpusError(
        f"supervised data: the {split} split is empty: of {held_out[1]} usable rows in "
        f"{list(patterns)}, supervised_data.validation_fraction={data.validation_fraction} "
        f"holds out {held_out[0]}. Change validation_fraction (a hash split keeps each row's "
        "side whatever the order), or name supervised_data.validation files.")
  if not examples:
    detail = f" ({len(report.skipped)} bad rows, e.g. {report.skipped[0]})" if report.skipped \
        else ""
    raise CorpusError(f"supervised data: no usable {split} rows in {list(patterns)}{detail}.")
  return examples, report


def _over_limits(example: dict[str, str], data: SupervisedData,
                 vocabulary: Optional[seqio.Vocabulary]) -> Optional[str]:
  limits = {"inputs": data.max_inputs_tokens, "targets": data.max_targets_tokens}
  if vocabulary is None or not any(limits.values()):
    return None
  for field, limit in limits.items():
    if limit is not None:
      length = len(vocabulary.encode(example[field])) + 1  # EOS
      if length > limit:
        return f"{field} is {length} tokens after tokenisation, over the limit {limit}"
  return None


def examples_dataset(inputs: Sequence[str], targets: Sequence[str]) -> tf.data.Dataset:
  """{"inputs", "targets"} string examples held in memory."""
  return tf.data.Dataset.from_tensor_slices({"inputs": list(inputs), "targets": list(targets)})


def data_source(data: SupervisedData, vocabulary: seqio.Vocabulary) -> seqio.DataSource:
  """A seqio source of {"inputs", "targets"} strings (rows read, checked and reported on
  first use of each split)."""
  read: dict[str, tuple[list[str], list[str]]] = {}

  def rows(split: str) -> tuple[list[str], list[str]]:
    if split not in read:
      examples, report = read_examples(data, split, vocabulary)
      report.print(split)
      read[split] = ([e["inputs"] for e in examples], [e["targets"] for e in examples])
    return read[split]

  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None
                 ) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory list; the pipeline shuffles examples
    return examples_dataset(*rows(split))
  return RowsSource(dataset_fn, rows)


class RowsSource(seqio.FunctionDataSource):
  """The supervised rows' seqio source; `check_splits` reads both splits now (the trainer
  calls it at start-up, so an empty split is refused before the first step, not at the
  first evaluation)."""

  def __init__(self, dataset_fn, rows):
    super().__init__(dataset_fn, splits=("train", "validation"))
    self._rows = rows

  def check_splits(self) -> None:
    for split in self.splits:
      self._rows(split)

  def rows(self, split: str) -> tuple[list[str], list[str]]:
    """The (inputs, targets) strings of `split` (what on-policy RL prompts with)."""
    return self._rows(split)


def text_to_text_task(name: str, source: seqio.DataSource,
                      vocabulary: seqio.Vocabulary) -> seqio.Task:
  """A Task of {"inputs", "targets"} strings: both tokenised, each ending in EOS (the
  supervised task and every multitask task)."""
  return seqio.Task(
      name, source=source,
      preprocessors=[functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
                     seqio.preprocessors.append_eos_after_trim],
      output_features={field: seqio.Feature(vocabulary, add_eos=True) for field in FIELDS},
      metric_fns=[])


def make_task(name: str, data: SupervisedData, vocabulary: seqio.Vocabulary) -> seqio.Task:
  """The supervised Task on the user's rows."""
  return text_to_text_task(name, data_source(data, vocabulary), vocabulary)
