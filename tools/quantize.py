"""Kept so that earlier command lines work: `python tools/quantize.py ...` is
`python -m t5x_lite.quantize ...` (the command now lives in the package)."""

import sys

from t5x_lite.quantize import main

if __name__ == "__main__":
  sys.exit(main())
