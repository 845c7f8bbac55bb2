"""Span corruption, full LM and prefix LM as specified by T5, checked on synthetic token streams."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5x_lite.data import objectives

VOCAB = seqio.ByteVocabulary(extra_ids=100)  # ids 3..258 are bytes, 259..358 sentinels.
EOS = VOCAB.eos_id


def documents(count: int, seed: int = 0, max_length: int = 900) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  return [rng.integers(3, 259, size=rng.integers(1, max_length)) for _ in range(count)]


def run(objective, docs, lengths, seed=0):
  dataset = tf.data.Dataset.from_generator(
      lambda: ({"targets": d} for d in docs),
      output_signature={"targets": tf.TensorSpec([None], tf.int64)})
  features = {k: seqio.Feature(VOCAB) for k in ("inputs", "targets")}
  with seqio.utils.map_seed_manager(seed):
    out = objective(dataset, sequence_length=lengths, output_features=features)
  return [{k: v.tolist() for k, v in ex.items()} for ex in out.as_numpy_iterator()]


def stream(docs) -> list[int]:
  return [t for d in docs for t in [*d.tolist(), EOS]]


def uncorrupt(inputs: list[int], targets: list[int]) -> list[int]:
  """Puts each target span back where its sentinel sits in the inputs."""
  spans, current = {}, None
  for token in targets:
    if token >= VOCAB.vocab_size - VOCAB.extra_ids:
      current = spans.setdefault(token, [])
    else:
      current.append(token)
  return [t for token in inputs for t in spans.get(token, [token])]


def test_span_corruption_lengths_match_t5_for_512_inputs():
  assert objectives.span_corruption_lengths(512) == (568, 114)


def test_span_corruption_inputs_and_targets_reconstruct_the_documents_exactly():
  docs = documents(60)
  examples = run(objectives.span_corruption, docs, {"inputs": 512, "targets": 114})
  rebuilt = [t for ex in examples for t in uncorrupt(ex["inputs"], ex["targets"])]
  assert rebuilt == stream(docs)
  assert all(len(ex["inputs"]) <= 511 and len(ex["targets"]) <= 113 for ex in examples)


def test_span_corruption_noise_density_and_mean_span_length_over_1000_examples():
  docs = documents(1300, seed=1)
  examples = run(objectives.span_corruption, docs, {"inputs": 512, "targets": 114})[:1000]
  sentinel_start = VOCAB.vocab_size - VOCAB.extra_ids
  noise = sum(sum(t < sentinel_start for t in ex["targets"]) for ex in examples)
  spans = sum(sum(t >= sentinel_start for t in ex["targets"]) for ex in examples)
  clean = sum(sum(t < sentinel_start for t in ex["inputs"]) for ex in examples)
  assert len(examples) == 1000
  assert abs(noise / (noise + clean) - 0.15) <= 0.01
  assert abs(noise / spans - 3.0) <= 0.2


def test_sentinels_count_down_from_the_top_of_the_vocabulary_and_noise_never_leads():
  examples = run(objectives.span_corruption, documents(10), {"inputs": 64, "targets": 32})
  for ex in examples:
    sentinels = [t for t in ex["inputs"] if t >= VOCAB.vocab_size - VOCAB.extra_ids]
    assert sentinels == list(range(VOCAB.vocab_size - 1, VOCAB.vocab_size - 1 - len(sentinels), -1))
    assert ex["targets"][0] == VOCAB.vocab_size - 1 and ex["inputs"][0] < 259


def test_masks_are_fixed_by_the_seed():
  docs = documents(20)
  lengths = {"inputs": 128, "targets": 64}
  first = run(objectives.span_corruption, docs, lengths, seed=5)
  assert first == run(objectives.span_corruption, docs, lengths, seed=5)
  assert first != run(objectives.span_corruption, docs, lengths, seed=6)


def test_full_lm_chunks_concatenate_back_to_the_documents():
  docs = documents(30)
  examples = run(objectives.full_lm, docs, {"targets": 100})
  assert all(len(ex["targets"]) == 100 for ex in examples[:-1])
  assert [t for ex in examples for t in ex["targets"]] == stream(docs)


def test_prefix_lm_splits_each_chunk_into_non_empty_prefix_and_suffix_uniformly():
  docs = documents(200)
  examples = run(objectives.prefix_lm, docs, {"inputs": 66, "targets": 66})
  assert [t for ex in examples for t in ex["inputs"] + ex["targets"]] == stream(docs)
  full = [ex for ex in examples if len(ex["inputs"]) + len(ex["targets"]) == 64]
  prefix_lengths = np.array([len(ex["inputs"]) for ex in full])
  assert prefix_lengths.min() >= 1 and prefix_lengths.max() <= 63
  assert abs(prefix_lengths.mean() - 32) < 2  # Uniform on 1..63 has mean 32.
  assert len(set(prefix_lengths.tolist())) > 50


@pytest.mark.parametrize("lengths, message", [
    ({"inputs": 512, "targets": 100}, "set it to 114"),
    ({"inputs": 2, "targets": 100}, "at least 3 tokens"),
    ({"targets": 100}, "TASK_FEATURE_LENGTHS"),
])
def test_span_corruption_rejects_feature_lengths_it_cannot_fill(lengths, message):
  with pytest.raises(objectives.ObjectiveError, match=message):
    run(objectives.span_corruption, documents(2), lengths)


def test_span_corruption_needs_enough_sentinels_in_the_vocabulary():
  dataset = tf.data.Dataset.from_tensors({"targets": tf.constant([5, 6, 7], tf.int64)})
  features = {k: seqio.Feature(seqio.ByteVocabulary(extra_ids=10)) for k in ("inputs", "targets")}
  with pytest.raises(objectives.ObjectiveError, match="needs 28 sentinels.*10 extra ids"):
    objectives.span_corruption(dataset, {"inputs": 512, "targets": 114}, features)


def test_prefix_lm_rejects_targets_shorter_than_the_longest_suffix():
  with pytest.raises(objectives.ObjectiveError, match="set targets >= inputs"):
    run(objectives.prefix_lm, documents(2), {"inputs": 128, "targets": 16})
