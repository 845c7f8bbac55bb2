"""What every benchmark script shares: its command line's form and its --json output."""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional

from t5x_lite.common import files


def parser(doc: str) -> argparse.ArgumentParser:
  """An argument parser whose help is the script's docstring, with --json."""
  made = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  made.add_argument("--json", help="also write the results here")
  return made


def write_json(path: Optional[str], results: Any) -> None:
  """The results as JSON at `path` (written atomically), when --json named one."""
  if path:
    with files.atomic_write(path) as handle:
      json.dump(results, handle, indent=1)
