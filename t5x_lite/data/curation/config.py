"""What a curation run does: its inputs, its steps in order, each step's settings, and the
executor; and the fingerprint of all of it that names the curated corpus.

Steps by name (a step's settings are the keyword arguments of the class that runs it,
whose defaults are the published thresholds):

  gopher_repetition  datatrove GopherRepetitionFilter (Rae et al. 2021, Gopher Table A1)
  gopher_quality     datatrove GopherQualityFilter (the same paper's quality heuristics)
  c4_quality         datatrove C4QualityFilter (Raffel et al. 2020's line and page rules)
  fineweb_quality    datatrove FineWebQualityFilter (Penedo et al. 2024; not by default)
  exact_dedup        datatrove's exact deduplication on whitespace-collapsed text
  minhash_dedup      datatrove's MinHash deduplication: n_grams (shingle words),
                     num_buckets (bands), hashes_per_bucket (rows), seed
  decontaminate      steps.Decontaminate: sets, n_grams (13), min_ngram (8), action
  pii                steps.Redact: emails, ips, phones, only_public_ips, placeholders

The order is FineWeb's: filters, then deduplication, then the rest. Language
identification (datatrove's LanguageFilter) and the model-based quality classifiers need
fastText models downloaded from the Hugging Face hub, so they are not steps here; the
embedded corpora are English.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from typing import Any, Callable, Mapping, Optional

from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.filters import (
  C4QualityFilter,
  FineWebQualityFilter,
  GopherQualityFilter,
  GopherRepetitionFilter,
)

from t5x_lite.common.errors import ConfigError, check_at_least
from t5x_lite.data.corpus_store import CorpusError
from t5x_lite.data.curation import eval_sets, steps

FILTERS: dict[str, Callable] = {
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4_quality": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
}
FORMATTERS: dict[str, Callable] = {"decontaminate": steps.Decontaminate, "pii": steps.Redact}
DEDUP = ("exact_dedup", "minhash_dedup")
STEPS = (*FILTERS, *DEDUP, *FORMATTERS)
DEFAULT_STEPS = ("gopher_repetition", "gopher_quality", "c4_quality", "exact_dedup",
                 "minhash_dedup", "decontaminate", "pii")
EXECUTORS = ("local", "slurm", "ray")
# Arguments the pipeline supplies itself (where removed documents and records go).
_WIRED = {"exclusion_writer", "language", "records_folder", "self"}


def _defaults(step: str) -> dict[str, Any]:
  """A step's settable keyword arguments and their defaults."""
  if step == "exact_dedup":
    return {}
  if step == "minhash_dedup":
    fields = {f.name: f.default for f in dataclasses.fields(MinhashConfig)
              if f.default is not dataclasses.MISSING}
    return {key: fields[key] for key in ("n_grams", "num_buckets", "hashes_per_bucket", "seed")}
  target = {**FILTERS, **FORMATTERS}[step]
  found = {}
  for name, parameter in inspect.signature(target.__init__).parameters.items():
    if name in _WIRED or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
      continue
    found[name] = None if parameter.default is inspect.Parameter.empty else parameter.default
  if step == "decontaminate":
    found["sets"] = list(eval_sets.DEFAULT_SETS)
  return found


def _plain(value: Any) -> Any:
  """JSON-able settings (tuples as lists, sets sorted)."""
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple, set, frozenset)):
    items = [_plain(v) for v in value]
    return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
  return value


@dataclasses.dataclass(frozen=True)
class CurationConfig:
  """A curation run (gin: `curation.*`, at the entry points).

  Attributes:
    inputs: built-in corpora ('pydocs', 'shakespeare') and/or globs or directories of
      .txt/.md (a document per file) and .jsonl (a document per line) files.
    jsonl_key: the text field of JSONL inputs.
    steps: step names in order (module docstring).
    settings: {step: {keyword: value}} overriding a step's defaults.
    executor: 'local' (default), or datatrove's 'slurm' or 'ray' executor, given
      `executor_options` (e.g. {'partition': 'cpu', 'time': '4:00:00'} for Slurm).
    tasks: datatrove tasks of the per-document stages (shards of the input).
    workers: tasks run at once on the local executor (1 runs them in this process).
    validation_fraction: documents of the curated corpus held out (by a hash of the text).
    samples_per_reason: removed documents the report quotes for each removal reason.
    output_dir: where the corpus goes; None: `<cache>/curated-<fingerprint[:16]>`.
    datatrove_logs: show datatrove's own log lines and per-task stats tables on stderr
      (always written under `<output>.work/logs/` when on).
  """
  inputs: tuple[str, ...] = ("pydocs",)
  jsonl_key: str = "text"
  steps: tuple[str, ...] = DEFAULT_STEPS
  settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  executor: str = "local"
  executor_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  tasks: int = 1
  workers: int = 1
  validation_fraction: float = 0.05
  samples_per_reason: int = 3
  output_dir: Optional[str] = None
  datatrove_logs: bool = False

  def __post_init__(self):
    object.__setattr__(self, "inputs", tuple(self.inputs))
    object.__setattr__(self, "steps", tuple(self.steps))
    if not self.inputs:
      raise ConfigError("curation.inputs is empty: name corpora ('pydocs', 'shakespeare') "
                        "or files (globs, directories).")
    unknown = [step for step in self.steps if step not in STEPS]
    if unknown:
      raise ConfigError(f"unknown curation step {unknown[0]!r} in curation.steps; the steps "
                        f"are {list(STEPS)}.")
    repeated = sorted({step for step in self.steps if self.steps.count(step) > 1})
    if repeated:
      raise ConfigError(f"curation.steps lists {repeated[0]!r} twice; each step runs once.")
    for step, overrides in self.settings.items():
      if step not in self.steps:
        raise ConfigError(f"curation.settings has {step!r}, which is not in curation.steps "
                          f"{list(self.steps)}.")
      known = _defaults(step)
      bad = [key for key in overrides if key not in known]
      if bad:
        raise ConfigError(f"curation.settings[{step!r}] has no setting {bad[0]!r}; "
                          f"its settings are {sorted(known)}.")
    if self.executor not in EXECUTORS:
      raise ConfigError(f"curation.executor must be one of {list(EXECUTORS)}, "
                        f"got {self.executor!r}.")
    check_at_least("curation", 1, tasks=self.tasks, workers=self.workers)
    check_at_least("curation", 0, samples_per_reason=self.samples_per_reason)
    if not 0 < self.validation_fraction < 1:
      raise ConfigError("curation.validation_fraction must be in (0, 1), got "
                        f"{self.validation_fraction!r}.")
    decontaminate = self.step_settings("decontaminate") if "decontaminate" in self.steps else {}
    if decontaminate and decontaminate["action"] not in ("remove", "flag"):
      raise ConfigError("curation.settings['decontaminate']['action'] must be 'remove' or "
                        f"'flag', got {decontaminate['action']!r}.")
    for name in decontaminate.get("sets", ()):
      try:
        eval_sets.check_name(name)
      except CorpusError as error:
        raise ConfigError(f"curation.settings['decontaminate']['sets']: {error}") from None
    if "minhash_dedup" in self.steps:
      minhash = self.step_settings("minhash_dedup")
      for key in ("n_grams", "num_buckets", "hashes_per_bucket"):
        if not isinstance(minhash[key], int) or minhash[key] < 1:
          raise ConfigError(f"curation.settings['minhash_dedup'][{key!r}] must be a positive "
                            f"integer, got {minhash[key]!r}.")

  def step_settings(self, step: str) -> dict[str, Any]:
    """A step's effective settings: its defaults with curation.settings applied."""
    return {**_defaults(step), **dict(self.settings.get(step, {}))}

  def effective(self) -> dict[str, Any]:
    """Everything that decides the curated corpus's content, as plain JSON."""
    return _plain({"steps": {step: self.step_settings(step) for step in self.steps},
                   "order": list(self.steps), "jsonl_key": self.jsonl_key,
                   "validation_fraction": self.validation_fraction})

  def fingerprint(self, inputs_fingerprint: str) -> str:
    """A digest of the inputs' content and the effective settings: any change to either
    (a threshold, a step, a document) names a different corpus, so it is rebuilt."""
    payload = json.dumps({"inputs": inputs_fingerprint, "settings": self.effective()},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
