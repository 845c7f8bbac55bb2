"""`python -m t5x_lite.quantize`: a quantized copy of a t5x_lite run directory (qwix
post-training quantization, models/quantization.py) that infer and evaluate load directly.

  python -m t5x_lite.quantize --checkpoint=/tmp/t5x_lite_quickstart \
      --output=/tmp/t5x_lite_quickstart_int8 [--mode=int8_weights] [--float_output_layer]

Modes: int8_weights, int4_weights and nf4_weights (sub-channel groups),
int8_weights_int8_activations.
The embedding stays float; the output layer (untied) is quantized unless
--float_output_layer. The output directory must be new.
"""

from __future__ import annotations

import argparse
import sys

from t5x_lite.common.errors import run_cli
from t5x_lite.models import quantization
from t5x_lite.runs import loading


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m t5x_lite.quantize", description=__doc__,
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
    step = loading.write_quantized(args.checkpoint, args.output, args.mode,
                             output_layer=not args.float_output_layer)
    print(f"{args.mode}: step {step} of {args.checkpoint} written to {args.output}")
    return 0

  return run_cli(run)


if __name__ == "__main__":
  sys.exit(main())
