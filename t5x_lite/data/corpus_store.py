"""Offline corpora on disk: documents -> deduplicated, split, fingerprinted TFRecord shards.

A corpus is built once into `<cache>/<name>/` and read by seqio's
TFExampleDataSource ever after. The layout is

  manifest.json                      fingerprint, document/byte counts, source
  train-00000-of-00008.tfrecord ...  tf.train.Example {"text": bytes}
  validation-00000-of-00008.tfrecord ...

The train/validation split is decided per document by a hash of its text, so
it does not depend on the order documents arrive in and a document can never
be in both splits. The fingerprint is a hash of every split's documents in
the order written; runs record it so results name the exact data they saw.
Building is atomic (a temporary directory renamed into place under a file
lock), so concurrent runs and test workers never see a half-written corpus. Opening a
built corpus verifies it (`verify`): the manifest's seal and every shard's size always,
every shard's sha256 once per process; a mismatch is one error naming the shard and how
to rebuild, before any training step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from typing import Callable, Iterable, Iterator

import tensorflow as tf

from t5x_lite.common.errors import UserError

SPLITS = ("train", "validation")
MANIFEST = "manifest.json"
DEFAULT_VALIDATION_FRACTION = 0.05
# Files per split: hosts read whole files when there are at least as many files as hosts.
DEFAULT_SHARDS = 8


class CorpusError(UserError, ValueError):
  """A corpus that cannot be built or read; the message names what to fix."""


@dataclasses.dataclass(frozen=True)
class CorpusManifest:
  """What a built corpus holds; written next to its shards."""
  name: str
  fingerprint: str
  source: str
  documents: dict[str, int]
  bytes: dict[str, int]
  files: dict[str, list[str]]
  # {shard file: {"bytes": size, "sha256": digest}} and a digest of the whole record, so
  # that a cut shard or an edited manifest is found before training reads them (corpora
  # built before these existed have neither and are rebuilt).
  shards: dict[str, dict] = dataclasses.field(default_factory=dict)
  seal: str = ""
  # What the corpus was derived from and how (a curated corpus: its inputs' and settings'
  # fingerprint, data/curation); sealed with the rest.
  provenance: dict = dataclasses.field(default_factory=dict)

  def file_paths(self, directory: str, split: str) -> list[str]:
    """Absolute paths of a split's shards."""
    if split not in self.files:
      raise CorpusError(f"corpus {self.name!r} has no split {split!r}; "
                        f"it has {sorted(self.files)}.")
    return [os.path.join(directory, f) for f in self.files[split]]


def cache_root() -> str:
  """Where built corpora and vocabularies live: $T5X_LITE_CACHE or ~/.cache/t5x_lite."""
  return os.environ.get("T5X_LITE_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "t5x_lite")


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
  """An exclusive inter-process lock on `path` (created if missing)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def publish_atomically(directory: str, write: Callable[[str], None]) -> None:
  """Runs `write(tmp_dir)` and renames tmp_dir to `directory` only if it succeeds."""
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".building-", dir=parent)
  try:
    write(tmp)
    os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def is_validation(text: str, fraction: float) -> bool:
  """The document-level split: a stable hash of the text against `fraction`."""
  digest = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
  return digest % 1_000_000 < round(fraction * 1_000_000)


def split_documents(documents: Iterable[str], validation_fraction: float
                    ) -> dict[str, list[str]]:
  """Deduplicates (ignoring whitespace differences) and splits documents."""
  seen: set[str] = set()
  splits: dict[str, list[str]] = {split: [] for split in SPLITS}
  for text in documents:
    text = text.strip()
    key = " ".join(text.split())
    if not key or key in seen:
      continue
    seen.add(key)
    splits["validation" if is_validation(key, validation_fraction) else "train"].append(text)
  if not splits["train"] and not splits["validation"]:
    raise CorpusError("the corpus has no documents: every source was empty or whitespace.")
  if not splits["validation"] or not splits["train"]:
    # Too few documents for the hash to populate both splits: move one over.
    donor = "train" if splits["train"] else "validation"
    if len(splits[donor]) < 2:
      raise CorpusError("the corpus has a single document; a train/validation split needs two.")
    splits["validation" if donor == "train" else "train"].append(splits[donor].pop())
  return splits


def fingerprint(splits: dict[str, list[str]]) -> str:
  """A content hash of every split's documents in order."""
  digest = hashlib.sha256()
  for split in SPLITS:
    digest.update(f"\0split={split}\0".encode())
    for text in splits[split]:
      encoded = text.encode("utf-8")
      digest.update(len(encoded).to_bytes(8, "big"))
      digest.update(encoded)
  return digest.hexdigest()


def _write_shards(directory: str, split: str, documents: list[str], num_shards: int) -> list[str]:
  num_shards = max(1, min(num_shards, len(documents)))
  names = [f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(os.path.join(directory, name)) for name in names]
  for index, text in enumerate(documents):
    feature = {"text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))}
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    writers[index % num_shards].write(example.SerializeToString())
  for writer in writers:
    writer.close()
  return names


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _seal(fields: dict) -> str:
  """A digest of the manifest's content (all but the seal itself)."""
  # An empty provenance is left out, so corpora sealed before it existed still verify.
  content = {key: value for key, value in fields.items()
             if key != "seal" and not (key == "provenance" and not value)}
  return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


# Corpora whose shard checksums this process has verified (sizes are checked every time).
_VERIFIED: set[str] = set()


def verify(directory: str, manifest: CorpusManifest, checksums: bool = True) -> None:
  """Checks a built corpus against its manifest: the manifest's seal, every shard's
  presence and size, and (once per process, or when `checksums`) every shard's sha256.
  Raises CorpusError naming the first problem and how to rebuild."""
  rebuild = f"delete {directory} and run again (or tools/build_corpus.py) to rebuild it"
  if _seal(dataclasses.asdict(manifest)) != manifest.seal:
    raise CorpusError(f"{os.path.join(directory, MANIFEST)} was edited (its content no "
                      f"longer matches its seal); {rebuild}.")
  deep = checksums and directory not in _VERIFIED
  for name, expected in manifest.shards.items():
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      raise CorpusError(f"corpus shard {path} is missing; {rebuild}.")
    size = os.path.getsize(path)
    if size != expected["bytes"]:
      raise CorpusError(f"corpus shard {path} has {size} bytes, its manifest says "
                        f"{expected['bytes']} (cut short or changed); {rebuild}.")
    if deep and _sha256(path) != expected["sha256"]:
      raise CorpusError(f"corpus shard {path} does not match its checksum (damaged); "
                        f"{rebuild}.")
  if deep:
    _VERIFIED.add(directory)


def read_manifest(directory: str) -> CorpusManifest:
  """The manifest of a built corpus; CorpusError if it is missing or unreadable."""
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path) as handle:
      return CorpusManifest(**json.load(handle))
  except FileNotFoundError:
    raise CorpusError(f"{path} does not exist: build the corpus first "
                      "(tools/build_corpus.py, or any task that reads it).") from None
  except (json.JSONDecodeError, TypeError) as error:
    raise CorpusError(f"{path} is corrupt ({error}); delete {directory} to rebuild it.") from None


def write_corpus(directory: str, name: str, documents: Iterable[str], source: str,
                 validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                 num_shards: int = DEFAULT_SHARDS, provenance: dict | None = None,
                 extra_files: dict[str, str] | None = None) -> CorpusManifest:
  """Builds a corpus into `directory` (which must not exist yet) and returns its manifest;
  `extra_files` ({name: text}, e.g. a curation report) are published with it."""
  if os.path.exists(directory):
    raise CorpusError(f"{directory} already exists; build into a new directory or delete it.")
  splits = split_documents(documents, validation_fraction)
  manifest_fields = dict(name=name, fingerprint=fingerprint(splits), source=source,
                         documents={s: len(d) for s, d in splits.items()},
                         bytes={s: sum(len(t.encode()) for t in d) for s, d in splits.items()},
                         provenance=dict(provenance or {}))

  def write(tmp: str) -> None:
    files = {split: _write_shards(tmp, split, splits[split], num_shards) for split in SPLITS}
    shards = {name: {"bytes": os.path.getsize(os.path.join(tmp, name)),
                     "sha256": _sha256(os.path.join(tmp, name))}
              for names in files.values() for name in names}
    fields = dict(manifest_fields, files=files, shards=shards)
    for name, text in (extra_files or {}).items():
      with open(os.path.join(tmp, name), "w", encoding="utf-8") as handle:
        handle.write(text)
    with open(os.path.join(tmp, MANIFEST), "w") as handle:
      json.dump(dict(fields, seal=_seal(fields)), handle, indent=1)

  publish_atomically(directory, write)
  manifest = read_manifest(directory)
  _VERIFIED.add(directory)  # its checksums were computed from the shards just written
  return manifest


def ensure_corpus(directory: str, name: str, documents: Callable[[], Iterable[str]],
                  source: str, **options) -> CorpusManifest:
  """Returns the corpus in `directory`, building it from `documents()` the first time."""
  with file_lock(directory.rstrip("/") + ".lock"):
    if os.path.exists(os.path.join(directory, MANIFEST)):
      manifest = read_manifest(directory)
      if manifest.seal:
        verify(directory, manifest)
        return manifest
      # Built before manifests recorded checksums: a cache, so rebuilt rather than trusted.
      print(f"note: rebuilding {directory} (its manifest records no shard checksums)",
            file=sys.stderr)
      shutil.rmtree(directory)
    if os.path.exists(directory):
      raise CorpusError(f"{directory} exists but holds no {MANIFEST}; delete it to rebuild.")
    return write_corpus(directory, name, documents(), source, **options)
