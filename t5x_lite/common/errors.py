"""User errors versus bugs.

Every mistake a user can fix (a gin binding, a file path, a mesh shape, a
checkpoint, a data file, a full or read-only disk) raises a subclass of
`UserError` whose message names the thing to fix. Entry points turn exactly
these into one line on stderr and exit status 2 (`run_cli`); anything else
keeps its traceback, because a bug must look like a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import re
import sys
from typing import Callable, Iterator, NoReturn

from t5x_lite.common import cpus


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


_STORAGE_FAILURES = re.compile(r"No space left on device|Read-only file system|Permission denied|"
                               r"Disk quota exceeded|os_error_code='(28|30|13|122)'")
# (group 1 is set only for a bare errno, e.g. os_error_code='28': then the message is kept)


def storage_failure(error: BaseException) -> bool:
  """Whether `error` is a write that the storage refused (full, read-only, no permission),
  as an OSError or as the ValueError that TensorStore (under orbax) raises for one."""
  if isinstance(error, FileSystemError):
    return True
  if isinstance(error, OSError):
    return True
  return bool(_STORAGE_FAILURES.search(str(error)))


@contextlib.contextmanager
def storage_errors(what: str, path: str) -> Iterator[None]:
  """Like file_errors, for libraries that report a refused write as another exception
  type (orbax/TensorStore: ValueError); anything else propagates unchanged."""
  try:
    yield
  except UserError:
    raise
  except Exception as error:  # noqa: BLE001  narrowed by storage_failure below
    if not storage_failure(error):
      raise
    found = _STORAGE_FAILURES.search(str(error))
    reason = found.group(0) if found and not found.group(1) else (
        getattr(error, "strerror", None) or str(error).splitlines()[0][:300])
    raise FileSystemError(f"cannot write {what} {path}: {reason}; free space or choose a "
                          "writable location.") from error


def check_at_least(owner: str, minimum: int, **values: object) -> None:
  """Raises ConfigError naming the first value that is not an integer >= `minimum`: the
  one check of a command's whole-number settings (batch sizes, counts, steps)."""
  for name, value in values.items():
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
      raise ConfigError(f"{owner}.{name} must be {wanted}, got {value!r}.")


def check_positive(owner: str, **values: object) -> None:
  """Raises ConfigError naming the first value that is not a positive int."""
  check_at_least(owner, 1, **values)


def at_least(minimum: float, kind: type = int) -> Callable[[str], float]:
  """An argparse `type`: the argument as `kind`, refused below `minimum` with argparse's
  one-line usage error (exit 2), the same rule as check_at_least for command lines."""
  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"{text} is below the minimum {minimum}")
    return value
  parse.__name__ = kind.__name__
  return parse


def positive(kind: type = float) -> Callable[[str], float]:
  """An argparse `type` for a number that must be > 0 (budgets, fractions, limits)."""
  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
      raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value
  parse.__name__ = kind.__name__
  return parse


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


class _NoUserErrorTracebacks(logging.Filter):
  """Libraries that run work in background threads (orbax's savers) log what it raised with
  a traceback before re-raising it in the main thread, where a user error or a refused
  write is reported in one line; the logged traceback is dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (error is not None and (isinstance(error, UserError) or storage_failure(error)))


def _without_closed_loop_echoes(default: Callable) -> Callable:
  """An unraisable hook that drops "Event loop is closed": when one of orbax's concurrent
  writes fails, it closes its event loop while TensorStore still completes the others,
  whose callbacks then fail in TensorStore's threads. The failure itself is raised in the
  main thread; these are its echoes."""
  def hook(unraisable) -> None:
    value = unraisable.exc_value
    if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
      default(unraisable)
  return hook


def run_cli(main: Callable[[], int]) -> int:
  """Runs an entry point's body: a UserError becomes one line and exit 2; bugs propagate.
  Every command starts here, before JAX's backend does, so this is also where XLA's CPU
  thread pool is sized to the cores the process may really use (common.cpus)."""
  cpus.size_thread_pool()
  quiet = _NoUserErrorTracebacks()
  logging.getLogger("absl").addFilter(quiet)
  sys.unraisablehook = _without_closed_loop_echoes(sys.unraisablehook)
  try:
    return main()
  except UserError as error:
    # Work a failed background save left behind (orbax's pending writes) would print
    # "Exception ignored in ..." for each of them as the interpreter shuts down.
    sys.unraisablehook = lambda unraisable: None
    gc.collect()
    # gin appends "In call to configurable ..." to errors raised inside a configurable.
    fail(str(error).split("\n  In call to configurable")[0])
  except KeyboardInterrupt:
    # Ctrl-C before the loop installs its own handler (setup, compilation, loading): the
    # user asked for it, so one line, and the shell's exit status for SIGINT.
    print("interrupted", file=sys.stderr)
    sys.exit(130)
  finally:
    logging.getLogger("absl").removeFilter(quiet)
