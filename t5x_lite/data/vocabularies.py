"""Vocabularies: seqio's SentencePiece vocabulary (with T5's 100 sentinel extra ids),
trained offline on the embedded corpus the first time it is needed, any user
.model file, or seqio's byte vocabulary."""

from __future__ import annotations

import hashlib
import io
import os

import sentencepiece as spm
import seqio
import tensorflow as tf

from t5x_lite.data import corpora
from t5x_lite.data.corpus_store import CorpusError, file_lock, publish_atomically

EXTRA_IDS = 100
CHECKSUM_FILE = "spm.model.sha256"
DEFAULT_PIECES = 8000
# Lines sampled for training the SentencePiece model (the whole embedded corpus fits).
TRAINER_SENTENCES = 2_000_000


def _train_sentencepiece(corpus: corpora.LocalCorpus, pieces: int, path: str) -> None:
  """Trains a T5-convention model (pad 0, eos 1, unk 2, no bos) on the corpus's train split."""
  manifest = corpus.build()
  files = manifest.file_paths(corpus.directory, "train")
  # seqio first loads the model while tracing the tokenize map; read the corpus eagerly.
  with tf.init_scope():
    texts = [tf.train.Example.FromString(record).features.feature["text"].bytes_list.value[0]
             for record in tf.data.TFRecordDataset(files).as_numpy_iterator()]
  sentences = (line for text in texts for line in text.decode().splitlines() if line.strip())
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=sentences, model_writer=model, vocab_size=pieces,
      model_type="unigram", character_coverage=0.9995, byte_fallback=True, split_digits=True,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1, input_sentence_size=TRAINER_SENTENCES,
      shuffle_input_sentence=True, num_threads=os.cpu_count() or 1, minloglevel=2)

  def write(tmp: str) -> None:
    with open(os.path.join(tmp, "spm.model"), "wb") as handle:
      handle.write(model.getvalue())
    with open(os.path.join(tmp, CHECKSUM_FILE), "w") as handle:
      handle.write(hashlib.sha256(model.getvalue()).hexdigest())

  publish_atomically(os.path.dirname(path), write)


class CheckedSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """seqio's SentencePieceVocabulary whose model file, when it cannot be read (cut short,
  not a SentencePiece model), is one CorpusError naming the file, not a protobuf
  traceback in the middle of training or decoding."""

  def _model_context(self):
    try:
      return super()._model_context()
    except CorpusError:
      raise
    except Exception as error:  # noqa: BLE001  protobuf DecodeError, sentencepiece's errors
      raise CorpusError(f"SentencePiece model {self.sentencepiece_model_file} cannot be read "
                        f"({type(error).__name__}: {str(error)[:200]}); {self._remedy()}"
                        ) from None

  def _remedy(self) -> str:
    return "point at an intact .model file (it may be cut short or of another format)."


class CorpusSentencePieceVocabulary(CheckedSentencePieceVocabulary):
  """A SentencePieceVocabulary whose model is trained on a local corpus when first loaded.

  The model is cached next to the corpus (`<corpus dir>-spm<pieces>/spm.model`),
  so every later run, and every process of a multi-host job, reuses it.
  """

  def __init__(self, corpus_fn=corpora.pydocs_corpus, pieces: int = DEFAULT_PIECES,
               extra_ids: int = EXTRA_IDS):
    self._corpus_fn = corpus_fn
    self._pieces = pieces
    corpus = corpus_fn()
    super().__init__(os.path.join(f"{corpus.directory}-spm{pieces}", "spm.model"),
                     extra_ids=extra_ids)

  def _model_context(self):
    path = self.sentencepiece_model_file
    if not self._model:
      if not os.path.exists(path):
        with file_lock(os.path.dirname(path) + ".lock"):
          if not os.path.exists(path):
            _train_sentencepiece(self._corpus_fn(), self._pieces, path)
      self._verify(path)
    return super()._model_context()

  def _verify(self, path: str) -> None:
    """The cached model is the one trained: its sha256 matches the one recorded beside it."""
    checksum = os.path.join(os.path.dirname(path), CHECKSUM_FILE)
    if not os.path.exists(checksum):
      return  # trained before checksums were recorded
    with open(checksum) as handle, open(path, "rb") as model:
      if hashlib.sha256(model.read()).hexdigest() != handle.read().strip():
        raise CorpusError(f"SentencePiece model {path} does not match its checksum (damaged); "
                          f"{self._remedy()}")

  def _remedy(self) -> str:
    return (f"delete {os.path.dirname(self.sentencepiece_model_file)} and run again to "
            "retrain it.")


def default_vocabulary() -> seqio.Vocabulary:
  """The tasks' default: 8,000 SentencePiece pieces on the embedded corpus + 100 sentinels."""
  return CorpusSentencePieceVocabulary()


def sentencepiece_vocabulary(model_file: str, extra_ids: int = EXTRA_IDS) -> seqio.Vocabulary:
  """A user's SentencePiece model (pad 0, eos 1, unk 2, as T5's) with sentinel extra ids."""
  if not os.path.isfile(model_file):
    raise CorpusError(f"SentencePiece model {model_file!r} does not exist; check the path.")
  return CheckedSentencePieceVocabulary(model_file, extra_ids=extra_ids)


def byte_vocabulary(extra_ids: int = EXTRA_IDS) -> seqio.Vocabulary:
  """UTF-8 bytes (ids 3..258) plus sentinels: no training, no unknown tokens."""
  return seqio.ByteVocabulary(extra_ids=extra_ids)


def padded_vocab_size(vocabulary: seqio.Vocabulary, multiple: int = 128) -> int:
  """The model vocab size for a vocabulary, rounded up so the embedding shards evenly."""
  return -(-vocabulary.vocab_size // multiple) * multiple


def describe(vocabulary: seqio.Vocabulary) -> dict:
  """What identifies a vocabulary's token ids: its kind, size, EOS id and, for
  SentencePiece, a hash of the model itself (a retrained model keeps its path but not
  its ids). Run directories record it; infer and resume compare it."""
  description = {"kind": type(vocabulary).__name__, "size": vocabulary.vocab_size,
                 "eos_id": vocabulary.eos_id}
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    description["kind"] = "SentencePieceVocabulary"  # subclasses share the same ids
    description["sha256"] = hashlib.sha256(vocabulary.sp_model).hexdigest()[:16]
  return description
