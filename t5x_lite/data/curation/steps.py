"""The curation steps datatrove does not have, written as datatrove pipeline steps so that
they run in its executors (local, Slurm, Ray) beside its own filters and deduplication:

  InputReader     our inputs (built-in corpora, text/JSONL files) as datatrove Documents
  Tally           documents and bytes passing a point of the pipeline (the report's in/out)
  Redact          emails and IP addresses by datatrove's PII patterns, phone numbers by ours,
                  each replaced by a placeholder token and counted
  Decontaminate   documents overlapping an evaluation item by n-grams (eval_sets.py),
                  removed or only flagged, every (set, item) recorded for the report
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Callable, Iterable, Sequence

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.formatters.pii import PIIFormatter, PIIReplacer, public_ip_validator

from t5x_lite.data.curation import eval_sets

# A phone number: an optional country code, then the North American 3-3-4 grouping with
# consistent separators, e.g. (415) 555-0132, 415.555.0132, +1 415 555 0132, +44 20 7946 0958.
# Version strings (3.11.2), dates (2024-01-15) and bare digit runs are not phone numbers.
PHONE_PATTERN = (r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)[ ]?\d{3}-\d{4}"
                 r"|\d{3}([ .-])\d{3}\1\d{4}|\+\d{1,3} \d{2,4} \d{3,4} \d{3,4})(?![\w-])")
PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP_ADDRESS>", "phone": "<PHONE_NUMBER>"}
# Beside Decontaminate's records: each set's n-gram size and items checked and too short.
SETS_FILE = "sets.json"


class InputReader(PipelineStep):
  """Yields every document of `sources` (name, zero-argument callable yielding texts);
  task `rank` of `world_size` takes every world_size-th document, so the split is the same
  on every executor. Prints progress (documents, documents/s) on stderr."""

  name = "t5x_lite inputs"
  type = "📖 - READER"

  def __init__(self, sources: Sequence[tuple[str, Callable[[], Iterable[str]]]],
               progress_every: int = 2000):
    super().__init__()
    self.sources = list(sources)
    self.progress_every = progress_every

  def run(self, data: DocumentsPipeline = None, rank: int = 0,
          world_size: int = 1) -> DocumentsPipeline:
    index, start = 0, time.monotonic()
    for name, documents in self.sources:
      for text in documents():
        if index % world_size == rank:
          self.stat_update("documents")
          self.stat_update("bytes", value=len(text.encode("utf-8")))
          yield Document(text=text, id=f"{name}/{index}", metadata={"source": name})
          if index // world_size % self.progress_every == 0 and index:
            rate = index / world_size / max(time.monotonic() - start, 1e-9)
            print(f"  curate [task {rank}]: read {index // world_size} documents "
                  f"({rate:.0f}/s)", file=sys.stderr, flush=True)
        index += 1


class Tally(PipelineStep):
  """Counts the documents and UTF-8 bytes (byte-level tokens) that reach it."""

  type = "📊 - STATS"

  def __init__(self, label: str):
    self.name = f"tally after {label}"
    self.label = label
    super().__init__()

  def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
    for doc in data:
      self.stat_update("documents")
      self.stat_update("bytes", value=len(doc.text.encode("utf-8")))
      yield doc


class _CountingReplacer(PIIReplacer):
  """datatrove's PIIReplacer that counts the replacements it makes."""

  def __init__(self, regex: str, placeholder: str, validator=None):
    super().__init__(regex, placeholder, validator)
    self.count = 0

  def replace(self, text: str) -> str:
    def substitute(match: re.Match) -> str:
      if self.validator and not self.validator(match.group(0)):
        return match.group(0)
      self.count += 1
      return self.replacements[0]
    return self.regex.sub(substitute, text)


class Redact(BaseFormatter):
  """Replaces emails, IP addresses and phone numbers by placeholder tokens.

  Emails and IPs use datatrove's PIIFormatter patterns (and, as there, only public IP
  addresses by default: 127.0.0.1 and 192.168.x.x identify nobody); phones are
  PHONE_PATTERN. Counts land in the step's stats (`redacted_email`, ...)."""

  name = "🔒 PII redaction"

  def __init__(self, emails: bool = True, ips: bool = True, phones: bool = True,
               only_public_ips: bool = True, placeholders: dict | None = None):
    super().__init__()
    placeholders = {**PLACEHOLDERS, **(placeholders or {})}
    patterns = PIIFormatter()
    self.replacers = {}
    if emails:
      self.replacers["email"] = _CountingReplacer(patterns.emails_replacer.regex.pattern,
                                                  placeholders["email"])
    if ips:
      self.replacers["ip"] = _CountingReplacer(
          patterns.ip_replacer.regex.pattern, placeholders["ip"],
          validator=lambda ip: public_ip_validator(ip, public_only=only_public_ips))
    if phones:
      self.replacers["phone"] = _CountingReplacer(PHONE_PATTERN, placeholders["phone"])

  def format(self, text: str) -> str:
    for kind, replacer in self.replacers.items():
      before = replacer.count
      text = replacer.replace(text)
      if replacer.count > before:
        self.stat_update(f"redacted_{kind}", value=replacer.count - before)
        self.stat_update(f"documents_with_{kind}")
    return text


class Decontaminate(BaseFilter):
  """Removes (action "remove") or only flags (action "flag") documents with an n-gram of
  an evaluation item (eval_sets.build_index), writing one JSON line per contaminated
  document (id, action, [set, item, n-gram] matches) to `records_folder`."""

  name = "🦠 decontamination"

  def __init__(self, sets: Sequence[str], records_folder: str, n_grams: int = 13,
               min_ngram: int = 8, action: str = "remove", exclusion_writer=None):
    super().__init__(exclusion_writer)
    self.sets, self.n_grams, self.min_ngram, self.action = list(sets), n_grams, min_ngram, action
    self.records_folder = get_datafolder(records_folder)
    self._index = None
    self._words = None
    self._records = None

  def index(self) -> eval_sets.NGramIndex:
    if self._index is None:
      self._index = eval_sets.build_index(self.sets, self.n_grams, self.min_ngram)
      self._words = eval_sets.Words()
    return self._index

  def filter(self, doc: Document) -> bool | tuple[bool, str]:
    matches = self.index().matches(self._words(doc.text))
    if not matches:
      return True
    for (name, _), _ in matches.items():
      self.stat_update(f"contaminated_items_{name}")
    self.stat_update("contaminated_documents")
    record = {"id": doc.id, "action": self.action,
              "matches": [[name, item, gram] for (name, item), gram in sorted(matches.items())]}
    self._records.write(json.dumps(record) + "\n")
    doc.metadata["contaminated"] = record["matches"]
    return (False, "contaminated") if self.action == "remove" else True

  def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
    index = self.index()
    if rank == 0:  # what each set's check was, for the report (which need not rebuild it)
      with self.records_folder.open(SETS_FILE, "w") as handle:
        json.dump({"ngram": index.set_ngram, "checked": index.checked,
                   "too_short": index.unchecked}, handle)
    with self.records_folder.open(f"{rank:05d}.jsonl", "w") as self._records:
      yield from super().run(data, rank, world_size)
