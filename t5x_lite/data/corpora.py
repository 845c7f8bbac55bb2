"""The corpora tasks read, as seqio DataSources yielding {"text": string} examples.

Local corpora (`pydocs`, `shakespeare`, `text_files`) are built once into the
cache by corpus_store and then read as TFRecord shards. TFDS corpora (`c4`,
`wikitext103`, `lm1b`, `tiny_shakespeare`) are read from TFDS_DATA_DIR only
when already prepared there: asking tfds for a missing dataset starts a
download that, offline, retries for minutes before failing, so the check
comes first and fails with instructions.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
from typing import Callable, Iterable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from t5x_lite.data import pydocs, shakespeare, text_files
from t5x_lite.data.corpus_store import (
  SPLITS,
  CorpusError,
  CorpusManifest,
  cache_root,
  ensure_corpus,
)

TEXT_FEATURES = {"text": tf.io.FixedLenFeature([], tf.string)}


@dataclasses.dataclass(frozen=True)
class LocalCorpus:
  """A corpus built from local files into `directory` on first use."""
  name: str
  directory: str
  documents: Callable[[], Iterable[str]]
  source: str

  def build(self) -> CorpusManifest:
    """Builds the corpus if needed and returns its manifest (with the fingerprint)."""
    return ensure_corpus(self.directory, self.name, self.documents, self.source)


def pydocs_corpus() -> LocalCorpus:
  """The embedded default corpus (see pydocs.py)."""
  name = pydocs.corpus_name()
  return LocalCorpus(name=name, directory=os.path.join(cache_root(), name),
                     documents=pydocs.documents,
                     source=f"pydoc topics and stdlib docstrings of {pydocs.stdlib_directory()}")


def shakespeare_corpus() -> LocalCorpus:
  return LocalCorpus(name="shakespeare", directory=os.path.join(cache_root(), "shakespeare"),
                     documents=shakespeare.documents, source=shakespeare.SOURCE)


@dataclasses.dataclass(frozen=True)
class TextFiles:
  """Which of the user's files make the `text_files` corpus (gin, at the entry points:
  `text_files_corpus.patterns`, `text_files_corpus.jsonl_key`)."""
  patterns: tuple[str, ...] = ()
  jsonl_key: str = "text"

  def __post_init__(self):
    object.__setattr__(self, "patterns", tuple(self.patterns))


def text_files_corpus(patterns: Sequence[str] = (), jsonl_key: str = "text") -> LocalCorpus:
  """The user's text/JSONL files.

  The cache directory is keyed by the files' paths, sizes and modification
  times, so editing a file builds a fresh corpus rather than reusing a stale one.
  """
  files = text_files.resolve_files(patterns)
  key = hashlib.sha256()
  for path in files:
    stat = os.stat(path)
    key.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
  key.update(jsonl_key.encode())
  return LocalCorpus(name="text_files",
                     directory=os.path.join(cache_root(), "text_files-" + key.hexdigest()[:16]),
                     documents=lambda: text_files.read_documents(files, jsonl_key),
                     source=f"{len(files)} files matching {list(patterns)}")


class LocalCorpusSource(seqio.DataSource):
  """A seqio DataSource over a LocalCorpus (or anything with its `directory` and `build()`,
  such as a curated corpus), built the first time a dataset is asked for.

  Building lazily keeps registering every task (data.register_tasks) instant.
  """

  def __init__(self, corpus_fn: Callable[[], LocalCorpus]):
    super().__init__(splits=SPLITS)
    self._corpus_fn = corpus_fn

  def manifest(self) -> CorpusManifest:
    return self._corpus_fn().build()

  def _files_source(self) -> seqio.TFExampleDataSource:
    corpus = self._corpus_fn()
    manifest = corpus.build()
    return seqio.TFExampleDataSource(
        {split: manifest.file_paths(corpus.directory, split) for split in SPLITS},
        feature_description=TEXT_FEATURES)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def list_shards(self, split: str) -> Sequence[str]:
    return self._files_source().list_shards(split)

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *, sequence_length=None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    return self._files_source().get_dataset(split=split, shuffle=shuffle, seed=seed,
                                            shard_info=shard_info)

  def num_input_examples(self, split: str) -> int:
    return self.manifest().documents[split]


@dataclasses.dataclass(frozen=True)
class TfdsCorpus:
  """A TFDS dataset with a "text" feature; `splits` maps our split names to its."""
  name: str
  tfds_name: str
  splits: Mapping[str, str]
  prepare: str

  def data_dir(self) -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"),
                                                           "tensorflow_datasets")

  def check_prepared(self) -> None:
    """Raises CorpusError with preparation steps unless the dataset is in TFDS_DATA_DIR."""
    dataset_dir = os.path.join(self.data_dir(), *self.tfds_name.replace(":", "/").split("/"))
    if not glob.glob(os.path.join(dataset_dir, "**", "dataset_info.json"), recursive=True):
      raise CorpusError(
          f"corpus {self.name!r} needs the TFDS dataset {self.tfds_name!r} prepared under "
          f"TFDS_DATA_DIR={self.data_dir()} (not found: {dataset_dir}). On a machine with a "
          f"network run: {self.prepare} --data_dir=$TFDS_DATA_DIR, then point TFDS_DATA_DIR at it.")


class TfdsCorpusSource(seqio.TfdsDataSource):
  """seqio's TfdsDataSource that checks the dataset is prepared before tfds can download."""

  def __init__(self, corpus: TfdsCorpus):
    super().__init__(tfds_name=corpus.tfds_name, splits=dict(corpus.splits))
    self.corpus = corpus

  def get_dataset(self, *args, **kwargs) -> tf.data.Dataset:
    self.corpus.check_prepared()
    return super().get_dataset(*args, **kwargs)

  def list_shards(self, split: str) -> Sequence[str]:
    self.corpus.check_prepared()
    return super().list_shards(split)


TFDS_CORPORA = {
    corpus.name: corpus for corpus in [
        TfdsCorpus("c4", "c4/en:3.1.0", {"train": "train", "validation": "validation"},
                   "tfds build c4/en (about 800 GB of download; see the TFDS c4 page)"),
        TfdsCorpus("wikitext103", "huggingface:wikitext/wikitext-103-raw-v1",
                   {"train": "train", "validation": "validation"},
                   "pip install datasets && tfds build huggingface:wikitext/wikitext-103-raw-v1"),
        TfdsCorpus("lm1b", "lm1b:1.1.0", {"train": "train", "validation": "test"},
                   "tfds build lm1b"),
        TfdsCorpus("tiny_shakespeare", "tiny_shakespeare:1.0.0",
                   {"train": "train", "validation": "validation"}, "tfds build tiny_shakespeare"),
    ]
}

LOCAL_CORPORA: dict[str, Callable[[], LocalCorpus]] = {
    "pydocs": pydocs_corpus,
    "shakespeare": shakespeare_corpus,
    "text_files": lambda: text_files_corpus(),
}


def data_source(corpus: str, text_files: TextFiles = TextFiles()) -> seqio.DataSource:
  """The seqio DataSource of a corpus by name (`text_files`: the files of `text_files`)."""
  if corpus == "text_files":
    return LocalCorpusSource(lambda: text_files_corpus(text_files.patterns,
                                                       text_files.jsonl_key))
  if corpus in LOCAL_CORPORA:
    return LocalCorpusSource(LOCAL_CORPORA[corpus])
  if corpus in TFDS_CORPORA:
    return TfdsCorpusSource(TFDS_CORPORA[corpus])
  raise CorpusError(f"unknown corpus {corpus!r}; choose from {sorted(LOCAL_CORPORA)} or "
                    f"{sorted(TFDS_CORPORA)}.")
