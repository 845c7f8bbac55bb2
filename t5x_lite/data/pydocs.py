"""The embedded default corpus: English prose from this Python installation's own docs.

Two sources, both read as files so no standard-library module is imported:
the pydoc topic texts (`pydoc_data/topics.py`, the language reference
sections `help()` shows) and the docstrings of every standard-library
module, read with `ast`. One document per topic and one per module (its
docstrings in source order), so the document-level split keeps a module's
prose together. The text depends on the Python version, which is why the
corpus directory is named after it and runs record its fingerprint.
"""

from __future__ import annotations

import ast
import os
import sys
import sysconfig
from typing import Iterator

# Test suites and third-party code are not the standard library's prose.
_SKIPPED_DIRECTORIES = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                                  "__pycache__", "pydoc_data"})
# Docstrings shorter than this are mostly "Return self." boilerplate.
_MIN_DOCSTRING_CHARS = 40


def stdlib_directory() -> str:
  return sysconfig.get_paths()["stdlib"]


def corpus_name() -> str:
  """Names the corpus after the interpreter whose documentation it holds."""
  return "pydocs-py{}.{}.{}".format(*sys.version_info[:3])


def topic_documents(stdlib: str) -> Iterator[str]:
  """The pydoc topic texts, taken from the literal dict in pydoc_data/topics.py."""
  path = os.path.join(stdlib, "pydoc_data", "topics.py")
  with open(path, "rb") as handle:
    tree = ast.parse(handle.read(), filename=path)
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
      topics = ast.literal_eval(node.value)
      for name in sorted(topics):
        yield topics[name]


def module_docstrings(path: str) -> str:
  """A module's docstrings (module, classes, functions) in source order; '' if none."""
  with open(path, "rb") as handle:
    try:
      tree = ast.parse(handle.read(), filename=path)
    except (SyntaxError, ValueError):
      return ""  # A few stdlib files are templates or test data, not Python.
  nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, nodes):
      docstring = ast.get_docstring(node)
      if docstring and len(docstring) >= _MIN_DOCSTRING_CHARS:
        found.append((getattr(node, "lineno", 0), docstring))
  return "\n\n".join(text for _, text in sorted(found, key=lambda item: item[0]))


def module_paths(stdlib: str) -> Iterator[str]:
  """Every standard-library .py file, in a deterministic order."""
  for root, directories, files in os.walk(stdlib):
    directories[:] = sorted(d for d in directories if d not in _SKIPPED_DIRECTORIES)
    for name in sorted(files):
      if name.endswith(".py"):
        yield os.path.join(root, name)


def documents(stdlib: str | None = None) -> Iterator[str]:
  """All documents of the corpus: topics first, then modules."""
  stdlib = stdlib or stdlib_directory()
  yield from topic_documents(stdlib)
  for path in module_paths(stdlib):
    text = module_docstrings(path)
    if text:
      yield text
