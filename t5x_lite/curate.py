"""`python -m t5x_lite.curate`: build a curated corpus before pretraining on it.

  python -m t5x_lite.curate --gin_file=curation/default.gin
  python -m t5x_lite.curate --gin_file=curation/default.gin \
      --gin.curation.inputs="['shakespeare', 'my_docs/*.jsonl']" \
      --gin.curation.settings="{'gopher_quality': {'min_doc_words': 20}}"

A datatrove pipeline (data/curation): quality filters (Gopher quality and repetition,
C4), exact and MinHash near-duplicate removal, n-gram decontamination against the
project's evaluation sets (and any JSONL named), and PII redaction, configured by
`curation.*` (gin/curation/default.gin lists every knob). It writes a corpus in the
project's format (TFRecord shards and a sealed manifest) named by the fingerprint of the
inputs and the settings, so a changed threshold builds a new corpus, with report.json
and report.md beside it. Train on it with the same gin file and
MIXTURE_OR_TASK_NAME = 'curated.full_lm.byte' (or any objective); a run that reads an
uncurated `curated.*` task curates first.
"""

from __future__ import annotations

import sys
from typing import Sequence

from t5x_lite import gin_utils
from t5x_lite.common.errors import run_cli
from t5x_lite.data.curation import pipeline


def main(argv: Sequence[str]) -> int:
  return run_cli(lambda: _main(argv))


def _main(argv: Sequence[str]) -> int:
  gin_utils.parse_flags(argv)
  config = gin_utils.construct("curation")
  print(f"curate: inputs {list(config.inputs)}, steps {list(config.steps)}, "
        f"{config.executor} executor, {config.tasks} task(s)", file=sys.stderr)
  minhash = pipeline.settings_line(config)
  if minhash:
    print(f"curate: {minhash}", file=sys.stderr)
  curated = pipeline.curate(config)
  if curated is not None:
    print(pipeline.describe(curated))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
