"""Writes a quantized copy of a t5x_lite checkpoint (qwix post-training quantization,
t5x_lite/quantization.py) that infer and evaluate load directly.

  python tools/quantize.py --checkpoint=/tmp/t5x_lite_quickstart \
      --output=/tmp/t5x_lite_quickstart_int8 [--mode=int8_weights] [--float_output_layer]

Modes: int8_weights, int4_weights and nf4_weights (sub-channel groups),
int8_weights_int8_activations.
The embedding stays float; the output layer (untied) is quantized unless
--float_output_layer. The output directory must be new.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from t5x_lite import quantization  # noqa: E402
from t5x_lite.errors import run_cli  # noqa: E402


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="MODEL_DIR of the float model")
  parser.add_argument("--output", required=True, help="new directory for the quantized model")
  parser.add_argument("--mode", default="int8_weights", help=f"one of {list(quantization.MODES)}")
  parser.add_argument("--float_output_layer", action="store_true",
                      help="keep the output layer in float")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)

  def run() -> int:
    step = quantization.save(args.checkpoint, args.output, args.mode,
                             output_layer=not args.float_output_layer)
    print(f"{args.mode}: step {step} of {args.checkpoint} written to {args.output}")
    return 0

  return run_cli(run)


if __name__ == "__main__":
  sys.exit(main())
