"""get_batches: the trainer's data contract (determinism, sharding, packing, exact restore)."""

import collections

import numpy as np
import pytest
import seqio

import t5x_lite.data  # noqa: F401  Registers the tasks.
from t5x_lite.data import DataError, ObjectiveError, corpora, get_batches, vocabularies
from t5x_lite.data.corpora import LocalCorpusSource

LM = ("pydocs.full_lm", {"targets": 64})
SPANS = ("pydocs.span_corruption", {"inputs": 64, "targets": 24})
PREFIX = ("pydocs.prefix_lm", {"inputs": 48, "targets": 48})


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_same_seed_gives_the_same_batches_and_another_seed_does_not():
  first = take(get_batches(*SPANS, "train", 4, "encoder_decoder", seed=7), 3)
  assert_same_batches(first, take(get_batches(*SPANS, "train", 4, "encoder_decoder", seed=7), 3))
  other = take(get_batches(*SPANS, "train", 4, "encoder_decoder", seed=8), 3)
  assert not np.array_equal(first[0]["encoder_input_tokens"], other[0]["encoder_input_tokens"])


def check_packed_rows(targets, inputs, segments, positions, loss_weights):
  for row in range(targets.shape[0]):
    for start in np.flatnonzero(np.diff(segments[row], prepend=0) != 0):
      if segments[row, start] == 0:
        continue
      end = start + np.argmax(np.append(segments[row, start:] != segments[row, start], True))
      np.testing.assert_array_equal(positions[row, start:end], np.arange(end - start))
      # Teacher forcing inside a segment: the input is the previous target, 0 first.
      assert inputs[row, start] == 0
      np.testing.assert_array_equal(inputs[row, start + 1:end], targets[row, start:end - 1])
    padding = segments[row] == 0
    assert not targets[row, padding].any() and not loss_weights[row, padding].any()


def test_full_lm_packing_sets_segment_ids_and_positions():
  batch = next(get_batches(*LM, "train", 4, "causal_decoder", seed=0, pack=True))
  assert batch["decoder_segment_ids"].max() >= 1
  check_packed_rows(batch["decoder_target_tokens"], batch["decoder_input_tokens"],
                    batch["decoder_segment_ids"], batch["decoder_positions"],
                    batch["decoder_loss_weights"])


def test_prefix_lm_packing_marks_each_prefix_bidirectional_and_trains_on_targets_only():
  batch = next(get_batches(*PREFIX, "train", 4, "prefix_decoder", seed=0))
  segments, causal = batch["decoder_segment_ids"], batch["decoder_causal_attention"]
  weights = batch["decoder_loss_weights"]
  assert segments.max() == 2  # Examples of 48 tokens (with both EOS): two per 96-position row.
  check_packed_rows(batch["decoder_target_tokens"], batch["decoder_input_tokens"], segments,
                    batch["decoder_positions"], weights)
  for row in range(segments.shape[0]):
    for segment in set(segments[row].tolist()) - {0}:
      in_segment = segments[row] == segment
      prefix, trained = causal[row, in_segment], weights[row, in_segment]
      # A non-empty prefix first, then the targets: 1...1 0...0 within each segment.
      assert prefix[0] == 1 and np.all(np.diff(prefix) <= 0)
      # Loss on targets only; the bidirectional span reaches one position past the prefix,
      # where the prefix's last token is read and the first target predicted (seqio's rule).
      np.testing.assert_array_equal(trained, np.arange(len(trained)) >= prefix.sum() - 1)


def test_encoder_decoder_batches_pack_both_sides():
  batch = next(get_batches(*SPANS, "train", 2, "encoder_decoder", seed=0))
  assert batch["encoder_input_tokens"].shape == (2, 64)
  assert batch["decoder_target_tokens"].shape == (2, 24)
  check_packed_rows(batch["decoder_target_tokens"], batch["decoder_input_tokens"],
                    batch["decoder_segment_ids"], batch["decoder_positions"],
                    batch["decoder_loss_weights"])
  # Each row's examples appear on both sides with the same segment ids.
  for row in range(2):
    encoder, decoder = batch["encoder_segment_ids"][row], batch["decoder_segment_ids"][row]
    assert set(encoder) - {0} == set(decoder) - {0}


def test_a_prefix_decoder_reads_a_full_lm_task_as_an_empty_prefix():
  batch = next(get_batches(*LM, "train", 2, "prefix_decoder", seed=0))
  assert not batch["decoder_causal_attention"].any()


def token_counts(task, shard):
  iterator = get_batches(*task, "validation", 4, "causal_decoder", shard=shard, num_epochs=1,
                         pack=False)
  return collections.Counter(t for batch in iterator for t in batch["decoder_target_tokens"].ravel()
                             if t)


def test_two_shards_are_disjoint_and_together_cover_the_split():
  source = LocalCorpusSource(corpora.pydocs_corpus)
  docs = [set(ex["text"] for ex in source.get_dataset("validation", shuffle=False,
                                                      shard_info=seqio.ShardInfo(i, 2))
              .as_numpy_iterator()) for i in range(2)]
  everything = set(ex["text"] for ex in source.get_dataset("validation", shuffle=False)
                   .as_numpy_iterator())
  assert docs[0] and docs[1] and docs[0].isdisjoint(docs[1]) and docs[0] | docs[1] == everything
  # The same holds for the batches: two hosts together see exactly the split's tokens.
  halves = [token_counts(LM, seqio.ShardInfo(i, 2)) for i in range(2)]
  assert halves[0] + halves[1] == token_counts(LM, None)


@pytest.mark.parametrize("task, architecture", [(SPANS, "encoder_decoder"), (LM, "causal_decoder")])
def test_a_restored_position_continues_with_the_same_batches(tmp_path, task, architecture):
  uninterrupted = take(get_batches(*task, "train", 4, architecture, seed=3), 7)
  first = get_batches(*task, "train", 4, architecture, seed=3)
  take(first, 4)
  first.save(str(tmp_path))
  resumed = get_batches(*task, "train", 4, architecture, seed=3)
  resumed.restore(str(tmp_path))
  assert resumed.position == 4
  assert_same_batches(take(resumed, 3), uninterrupted[4:])


def test_a_position_cannot_be_restored_into_a_different_pipeline(tmp_path):
  iterator = get_batches(*LM, "train", 4, "causal_decoder", seed=3)
  next(iterator)
  iterator.save(str(tmp_path))
  with pytest.raises(DataError, match=r"different pipeline \(differs in \['seed'\]\)"):
    get_batches(*LM, "train", 4, "causal_decoder", seed=4).restore(str(tmp_path))


def test_a_final_partial_batch_is_padded_with_weightless_rows():
  batches = list(get_batches(*LM, "validation", 64, "causal_decoder", num_epochs=1))
  assert all(b["decoder_target_tokens"].shape == (64, 64) for b in batches)
  assert not batches[-1]["decoder_loss_weights"][-1].any()


@pytest.mark.parametrize("args, error, message", [
    (("pydocs.no_such_objective", {"targets": 8}, "train", 4, "causal_decoder"), DataError,
     "unknown task or mixture"),
    ((*LM, "train", 5, "causal_decoder"), DataError, "does not divide over 2 hosts"),
    ((*LM, "train", 4, "encoder_decoder"), DataError, "needs an inputs length"),
    ((*LM, "test", 4, "causal_decoder"), DataError, "has no split 'test'"),
    (("pydocs.span_corruption", {"inputs": 512, "targets": 64}, "train", 4, "encoder_decoder"),
     ObjectiveError, "set it to 114"),
])
def test_bad_requests_are_one_clear_error(args, error, message):
  with pytest.raises(error, match=message):
    get_batches(*args, shard=seqio.ShardInfo(0, 2) if args[3] == 5 else None)


def test_the_default_vocabulary_follows_t5_conventions_and_user_models_load(tmp_path):
  vocabulary = vocabularies.default_vocabulary()
  assert (vocabulary.pad_id, vocabulary.eos_id, vocabulary.unk_id) == (0, 1, 2)
  assert vocabulary.extra_ids == 100 and vocabulary.vocab_size == 8100
  text = "Return a new sorted list from the items in iterable."
  assert vocabulary.decode(vocabulary.encode(text)) == text
  user = vocabularies.sentencepiece_vocabulary(vocabulary.sentencepiece_model_file)
  assert user.encode(text) == vocabulary.encode(text)
  with pytest.raises(t5x_lite.data.CorpusError, match="does not exist"):
    vocabularies.sentencepiece_vocabulary(str(tmp_path / "missing.model"))
  assert vocabularies.padded_vocab_size(vocabulary) == 8192


def test_byte_vocabulary_tasks_are_registered():
  batch = next(get_batches("shakespeare.full_lm.byte", {"targets": 32}, "train", 2,
                           "causal_decoder"))
  assert batch["decoder_target_tokens"].max() < 259


def test_text_files_tasks_read_the_files_bound_in_gin(tmp_path, monkeypatch):
  from t5x_lite import gin_utils

  monkeypatch.setenv("T5X_LITE_CACHE", str(tmp_path / "cache"))
  for i in range(4):
    (tmp_path / f"notes{i}.txt").write_text(f"Note number {i}: " + "lorem ipsum " * 40)
  gin_utils.parse([], [f"text_files_corpus.patterns = ['{tmp_path}/notes*.txt']"])
  gin_utils.register_tasks()  # as every entry point does
  batch = next(get_batches("text_files.full_lm.byte", {"targets": 32}, "train", 2,
                           "causal_decoder"))
  text = bytes(int(t) - 3 for t in batch["decoder_target_tokens"].ravel() if t > 2)
  assert b"ipsum" in text


def test_a_truncated_or_damaged_sentencepiece_model_is_one_clear_error(tmp_path):
  model = vocabularies.default_vocabulary().sentencepiece_model_file
  cut = tmp_path / "cut.model"
  cut.write_bytes(open(model, "rb").read()[:1000])
  with pytest.raises(t5x_lite.data.CorpusError, match="cut.model cannot be read"):
    vocabularies.sentencepiece_vocabulary(str(cut)).encode("text")
  # The built-in model is checked against the checksum recorded when it was trained.
  corpus_dir = tmp_path / "corpus"
  directory = tmp_path / "corpus-spm8000"
  directory.mkdir()
  (directory / "spm.model").write_bytes(open(model, "rb").read())
  (directory / vocabularies.CHECKSUM_FILE).write_text("0" * 64)
  corpus = lambda: type("Corpus", (), {"directory": str(corpus_dir)})()  # noqa: E731
  damaged = vocabularies.CorpusSentencePieceVocabulary(corpus_fn=corpus)
  with pytest.raises(t5x_lite.data.CorpusError, match="does not match its checksum.*delete"):
    damaged.encode("text")
