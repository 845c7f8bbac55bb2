"""User errors versus bugs.

Every mistake a user can fix (a gin binding, a file path, a mesh shape, a
checkpoint, a data file, a full or read-only disk) raises a subclass of
`UserError` whose message names the thing to fix. Entry points turn exactly
these into one line on stderr and exit status 2 (`run_cli`); anything else
keeps its traceback, because a bug must look like a bug.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Callable, Iterator, NoReturn


class UserError(Exception):
  """A mistake the user can fix; the message says what and where."""


class ConfigError(UserError, ValueError):
  """A configuration value that cannot work (a knob out of range, an unknown choice)."""


class FileSystemError(UserError):
  """An OSError on a path the user chose (MODEL_DIR, an output file): full, read-only, ..."""


@contextlib.contextmanager
def file_errors(what: str, path: str) -> Iterator[None]:
  """Turns an OSError raised inside into a FileSystemError naming `what` and `path`."""
  try:
    yield
  except OSError as error:
    reason = error.strerror or str(error)
    raise FileSystemError(f"cannot write {what} {path}: {reason}; free space or choose a "
                          "writable location.") from error


def check_positive(owner: str, **values: object) -> None:
  """Raises ConfigError naming the first value that is not a positive int."""
  for name, value in values.items():
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ConfigError(f"{owner}.{name} must be a positive integer, got {value!r}.")


_SIMPLE_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def check_field_types(config: object, owner: str) -> None:
  """Raises ConfigError for a dataclass field whose value is not of its annotated simple
  type (int, float, bool, str, or Optional of one), e.g. BATCH_SIZE='8' from a gin file.
  `owner` is the name the user binds the config by (e.g. "train")."""
  for field in dataclasses.fields(config):
    annotation = str(field.type)
    optional = annotation.startswith("Optional[")
    base = annotation[len("Optional["):-1] if optional else annotation
    kinds = _SIMPLE_TYPES.get(base)
    value = getattr(config, field.name)
    if kinds is None or (optional and value is None):
      continue
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
      raise ConfigError(f"{owner}.{field.name} must be {'None or ' if optional else ''}"
                        f"{'a number' if float in kinds else 'of type ' + base}, "
                        f"got {value!r}.")


def fail(message: str) -> NoReturn:
  """One clear line on stderr and exit status 2, for user mistakes."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def run_cli(main: Callable[[], int]) -> int:
  """Runs an entry point's body: a UserError becomes one line and exit 2; bugs propagate."""
  try:
    return main()
  except UserError as error:
    fail(str(error))
