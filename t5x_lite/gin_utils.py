"""Gin configuration the T5X way: --gin_file (repeatable), --gin.KEY=VALUE,
--gin_search_paths; the repository's gin/ directory is always searched so
includes such as `include 'models/t5_1_1.gin'` resolve from anywhere.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, Sequence

import gin

GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


class GinConfigError(ValueError):
  """A gin file or binding that cannot be parsed or applied."""


def rewrite_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str], list[str]]:
  """Splits argv into (gin files, bindings, search paths, remaining args).

  `--gin.KEY=VALUE` becomes the binding "KEY = VALUE" (as in T5X); both
  `--flag=value` and `--flag value` spellings are accepted for the file flags.
  """
  files, bindings, search_paths, rest = [], [], [], []
  args = list(argv)
  while args:
    arg = args.pop(0)
    if arg.startswith("--gin."):
      key, sep, value = arg[len("--gin."):].partition("=")
      if not sep:
        raise GinConfigError(f"{arg!r}: write gin overrides as --gin.KEY=VALUE.")
      bindings.append(f"{key} = {value}")
      continue
    for flag, target in (("--gin_file", files), ("--gin_bindings", bindings),
                         ("--gin_search_paths", search_paths)):
      if arg == flag:
        if not args:
          raise GinConfigError(f"{flag} needs a value.")
        arg = f"{flag}={args.pop(0)}"
      if arg.startswith(flag + "="):
        value = arg[len(flag) + 1:]
        target.extend(value.split(",") if flag == "--gin_search_paths" else [value])
        break
    else:
      rest.append(arg)
  return files, bindings, search_paths, rest


def parse(files: Iterable[str], bindings: Iterable[str] = (),
          search_paths: Iterable[str] = ()) -> None:
  """Parses gin files and bindings; errors name the file or binding at fault."""
  # Import here so every configurable is registered before parsing.
  import t5x_lite.models  # noqa: F401

  gin.clear_config()
  for path in [os.getcwd(), GIN_DIR, *search_paths]:
    gin.add_config_file_search_path(path)
  files, bindings = list(files), list(bindings)
  for path in files:
    if not _findable(path, search_paths):
      raise GinConfigError(f"Gin file {path!r} not found (looked in the working directory, "
                           f"{GIN_DIR} and --gin_search_paths).")
  # gin logs an ERROR for every search path an include is not under before it
  # finds the right one; a real miss still raises below.
  logging.disable(logging.ERROR)
  try:
    gin.parse_config_files_and_bindings(files, bindings, finalize_config=False)
  except Exception as error:  # gin raises ValueError, KeyError, SyntaxError, IOError...
    raise GinConfigError(f"Bad gin configuration: {error}") from None
  finally:
    logging.disable(logging.NOTSET)


def parse_flags(argv: Sequence[str]) -> None:
  """Parses an entry point's whole command line: --gin_file, --gin.KEY=VALUE and
  --gin_search_paths, anything else being an error."""
  files, bindings, search_paths, rest = rewrite_gin_args(argv)
  if rest:
    raise GinConfigError(f"unknown arguments {rest}; use --gin_file, --gin.KEY=VALUE or "
                         "--gin_search_paths.")
  parse(files, bindings, search_paths)


def _findable(path: str, search_paths: Iterable[str]) -> bool:
  roots = ["", os.getcwd(), GIN_DIR, *search_paths]
  return any(os.path.exists(os.path.join(root, path)) for root in roots)


def fail(message: str) -> "NoReturn":  # noqa: F821
  """One clear line on stderr and a non-zero exit, for user mistakes."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)
