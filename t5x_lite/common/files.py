"""Result files written whole or not at all: a run killed mid-write leaves the previous
file (or none), never a truncated table that a later fit or comparison would trust."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, TextIO

from t5x_lite.common.errors import file_errors


@contextlib.contextmanager
def atomic_write(path: str, newline: str | None = None) -> Iterator[TextIO]:
  """Opens `path + ".tmp"` for text writing and renames it over `path` on success.

  The parent directory is created if needed; on an exception the temporary file is
  removed and `path` is left as it was. A full disk or an unwritable location is a
  FileSystemError naming `path`.
  """
  temporary = path + ".tmp"
  try:
    with file_errors("file", path):
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      with open(temporary, "w", encoding="utf-8", newline=newline) as handle:
        yield handle
      os.replace(temporary, path)  # atomic on POSIX: readers see the old or the new file
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)
