"""Builds an offline corpus into the cache (or a chosen directory) and prints its manifest.

  python tools/build_corpus.py pydocs                 # the embedded default corpus
  python tools/build_corpus.py shakespeare
  python tools/build_corpus.py files 'my_texts/**/*.jsonl' [--jsonl_key text] [--output DIR]

Built corpora are read by the `pydocs.*`, `shakespeare.*` and `text_files.*`
tasks; for the last, bind `text_files_corpus.patterns` to the same globs in
gin. A directory given with --output is read with seqio.TFExampleDataSource
({"text": string} examples) from the file names in its manifest.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from t5x_lite.data import corpora, corpus_store, text_files
from t5x_lite.data.corpus_store import CorpusError


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("corpus", choices=["pydocs", "shakespeare", "files"])
  parser.add_argument("patterns", nargs="*", help="globs or directories (for `files`)")
  parser.add_argument("--jsonl_key", default="text", help="JSON-lines field holding the text")
  parser.add_argument("--output", help="build here instead of the cache (`files` only)")
  parser.add_argument("--validation_fraction", type=float, default=None,
                      help="held-out share (`files` with --output only; default "
                      f"{corpus_store.DEFAULT_VALIDATION_FRACTION})")
  args = parser.parse_args(argv)
  cached = not (args.corpus == "files" and args.output)
  if cached and (args.output or args.validation_fraction is not None):
    # The cache holds each corpus as the tasks read it: one place, the default split.
    parser.error("--output and --validation_fraction apply to `files` built with --output "
                 "only; the cache's corpora are built where and as the tasks read them.")
  if args.validation_fraction is not None and not 0 < args.validation_fraction < 1:
    parser.error(f"--validation_fraction must be in (0, 1), got {args.validation_fraction}.")
  try:
    if args.corpus == "files" and args.output:
      manifest = corpus_store.write_corpus(
          args.output, "text_files", text_files.read_documents(args.patterns, args.jsonl_key),
          source=f"files matching {args.patterns}",
          validation_fraction=args.validation_fraction or corpus_store.DEFAULT_VALIDATION_FRACTION)
      directory = args.output
    else:
      corpus = (corpora.text_files_corpus(args.patterns, args.jsonl_key) if args.corpus == "files"
                else corpora.LOCAL_CORPORA[args.corpus]())
      manifest, directory = corpus.build(), corpus.directory
  except (CorpusError, OSError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(json.dumps(dict(dataclasses.asdict(manifest), directory=directory), indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
