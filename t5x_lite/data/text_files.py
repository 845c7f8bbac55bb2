"""Documents from the user's own text files: plain text (one document per file) or
JSON lines (one document per line, text under a chosen key)."""

from __future__ import annotations

import glob
import json
import os
from typing import Iterator, Sequence

from t5x_lite.data.corpus_store import CorpusError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".json")


def resolve_files(patterns: str | Sequence[str],
                  suffixes: Sequence[str] = TEXT_SUFFIXES + JSONL_SUFFIXES) -> list[str]:
  """Expands directories (recursively, keeping files with these suffixes) and globs into
  a sorted list of files."""
  suffixes = tuple(suffixes)
  if isinstance(patterns, str):
    patterns = [patterns]
  if not patterns:
    raise CorpusError("no text files given: bind a glob or directory of .txt/.jsonl files.")
  files: set[str] = set()
  for pattern in patterns:
    if os.path.isdir(pattern):
      matches = [os.path.join(root, name) for root, _, names in os.walk(pattern) for name in names]
      matches = [m for m in matches if m.endswith(suffixes)]
    else:
      matches = glob.glob(os.path.expanduser(pattern), recursive=True)
    if not matches:
      raise CorpusError(f"{pattern!r} matches no {'/'.join(suffixes)} file; check the path.")
    files.update(matches)
  return sorted(files)


def decode_utf8(data: bytes, path: str) -> str:
  """The text of a file's bytes, or a CorpusError naming the first non-UTF-8 offset."""
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as error:
    raise CorpusError(f"{path}: bytes at offset {error.start} are not UTF-8 ({error.reason}); "
                      "re-encode the file as UTF-8.") from None


def record_lines(data: bytes, path: str) -> list[str]:
  """The records of a JSONL or TSV file: its UTF-8 text without a byte-order mark, split
  at "\n" only (JSON strings may hold U+2028 and other characters that str.splitlines
  would cut at), a trailing "\r" of Windows line ends dropped."""
  text = decode_utf8(data, path).removeprefix("\ufeff")
  return [line.removesuffix("\r") for line in text.split("\n")]


def read_documents(patterns: str | Sequence[str], jsonl_key: str = "text") -> Iterator[str]:
  """Yields every document of the matched files in sorted-path order."""
  for path in resolve_files(patterns):
    with open(path, "rb") as handle:
      data = handle.read()
    if not path.endswith(JSONL_SUFFIXES):
      yield decode_utf8(data, path)
      continue
    for number, line in enumerate(record_lines(data, path), start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise CorpusError(f"{path}:{number}: not valid JSON ({error.msg}).") from None
      if not isinstance(record, dict) or not isinstance(record.get(jsonl_key), str):
        raise CorpusError(f"{path}:{number}: expected an object with a string {jsonl_key!r} field.")
      yield record[jsonl_key]
