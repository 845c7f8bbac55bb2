"""Result files written whole or not at all, by one writer at a time.

A run killed mid-write leaves the previous file (or none), never a truncated table that a
later fit or comparison would trust; two processes writing the same path never mix
their bytes: each writes its own temporary file, and a second writer of a path another
process holds (`exclusive`) is refused with one message instead of silently replacing
the first one's results.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from typing import Iterator, TextIO

from t5x_lite.common.errors import FileSystemError, file_errors

# Paths this process holds the writer lock of (lock files are opened once per process:
# flock locks of two descriptors of one file exclude each other even in one process).
_HELD: dict[str, int] = {}
_UMASK = os.umask(0)
os.umask(_UMASK)


def lock_path(path: str) -> str:
  """The lock file of `path`: hidden beside it. It is never deleted (deleting it would
  let two processes lock two different files of one name)."""
  folder, name = os.path.split(os.path.abspath(path))
  return os.path.join(folder, f".{name}.lock")


@contextlib.contextmanager
def exclusive(path: str) -> Iterator[None]:
  """Holds the writer lock of `path` for the block (re-entrant within a process): a
  command holds it from start to finish so that a second process writing the same output
  is refused before it does any work. The kernel releases it however the process ends."""
  if os.path.isdir(path):
    raise FileSystemError(f"{path} is a directory; name a file to write.")
  key = os.path.abspath(path)
  if key in _HELD:
    yield
    return
  with file_errors("file", path):
    os.makedirs(os.path.dirname(key), exist_ok=True)
    fd = os.open(lock_path(key), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    raise FileSystemError(f"{path} is being written by another process; wait for it to "
                          "finish, or write to another path.") from None
  _HELD[key] = fd
  try:
    yield
  finally:
    del _HELD[key]
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str, newline: str | None = None) -> Iterator[TextIO]:
  """Opens a temporary file of its own beside `path` for text writing and renames it over
  `path` on success, holding `path`'s writer lock (`exclusive`) meanwhile.

  The parent directory is created if needed; on an exception the temporary file is
  removed and `path` is left as it was. A full disk or an unwritable location is a
  FileSystemError naming `path`.
  """
  temporary = None
  try:
    with exclusive(path), file_errors("file", path):
      folder, name = os.path.split(os.path.abspath(path))
      fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
      with open(fd, "w", encoding="utf-8", newline=newline) as handle:
        yield handle
      os.chmod(temporary, 0o666 & ~_UMASK)  # as open() would; mkstemp's 0600 hides results
      os.replace(temporary, path)  # atomic on POSIX: readers see the old or the new file
  finally:
    if temporary is not None and os.path.exists(temporary):
      os.remove(temporary)
