"""`python -m t5x_lite.merge`: fold a LoRA run's adapters into its base model.

  python -m t5x_lite.merge --adapters=/tmp/lora --output=/tmp/lora_merged \
      [--base=/moved/base_model_dir] [--hf=/tmp/lora_merged_hf]

Writes a plain run directory (params-only checkpoint at the adapters' step, spec.json
with the model, vocabulary and where it was merged from) that infer, evaluate and
fine-tuning read like any MODEL_DIR; --hf also exports it for Hugging Face
transformers (interop/hf.py). infer and evaluate also read the LoRA run directory
itself, merging in memory. The base must be the one the adapters were trained on
(loading.py); --base names it when it has moved.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from t5x_lite.common.errors import run_cli
from t5x_lite.interop import hf  # export reads the hf extra (safetensors) only when used
from t5x_lite.runs import loading


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  """The command line (argparse exits 2 naming a missing or unknown flag)."""
  parser = argparse.ArgumentParser(prog="python -m t5x_lite.merge", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--adapters", required=True, help="MODEL_DIR of the LoRA run")
  parser.add_argument("--output", required=True, help="new directory for the merged model")
  parser.add_argument("--base", "--lora_base", dest="base",
                      help="the base MODEL_DIR, if it moved since training (as infer.lora_base, "
                      "evaluate.lora_base and lm_eval --lora_base)")
  parser.add_argument("--hf", help="also export the merged model here for transformers")
  return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)
  return run_cli(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
  step = loading.merge_adapters(args.adapters, args.output, base=args.base)
  print(f"merged the step-{step} adapters of {args.adapters} into their base: {args.output}")
  if args.hf:
    hf.export(loading.load_model(args.output), args.hf)
    print(f"Hugging Face export: {args.hf}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
