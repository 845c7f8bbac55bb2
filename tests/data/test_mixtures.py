"""Weighted mixtures: sources take their weight's share of the tokens, and the epochs a run
spends on each source are counted as a hand count would."""

import functools
import io
import re

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5x_lite import gin_utils
from t5x_lite.data import DataError, WeightedMixture, get_batches, mixtures, vocabularies
from t5x_lite.data.corpora import LocalCorpusSource
from t5x_lite.training import trainer
from tests import train_helpers as helpers

BYTES = vocabularies.byte_vocabulary()
A, B = (BYTES.encode(letter)[0] for letter in "ab")


def letter_task(name: str, letter: str, length: int) -> str:
  """A task whose examples are documents of `length` copies of `letter` (no chunking: an
  example is a document), so two such tasks are told apart token by token."""
  def documents(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"text": [letter * length] * 500})

  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, seqio.FunctionDataSource(documents, splits=["train", "validation"]),
      preprocessors=[functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
                     seqio.preprocessors.tokenize],
      output_features={"targets": seqio.Feature(BYTES, add_eos=False)})
  return name


def test_each_source_takes_its_weight_as_a_share_of_the_tokens_not_of_the_examples():
  # 'a' documents are 16 tokens, 'b' documents 48: sampled by examples at 1:3, 'a' would
  # get 10% of the tokens; weighted by tokens it gets 25%.
  sources = {letter_task("mix_test.a", "a", 16): 1.0, letter_task("mix_test.b", "b", 48): 3.0}
  mixtures.register(WeightedMixture("mix_test.ab", sources))
  batches = get_batches("mix_test.ab", {"targets": 64}, "train", 32, "causal_decoder", seed=3)
  tokens = np.concatenate([next(batches)["decoder_target_tokens"].ravel() for _ in range(40)])
  a, b = int((tokens == A).sum()), int((tokens == B).sum())
  share = a / (a + b)
  # Sampling error of the 'a' share: examples are drawn independently with probability
  # p = 0.25/16 / (0.25/16 + 0.75/48) = 1/2, each 'a' example 16 tokens, 'b' 48.
  # At p = 1/2 the share moves 0.75 / N per 'a' example among N, whose count has standard
  # deviation sqrt(N) / 2: sigma = 0.375 / sqrt(N).
  sigma = 0.375 / np.sqrt(a / 16 + b / 48)
  assert abs(share - 0.25) < 4 * sigma, (share, sigma)
  assert abs(share - 0.10) > 10 * sigma  # what sampling by examples would give


def corpus_tokens(task: str) -> int:
  """Hand count of a byte full-LM task's tokens per epoch: every training document's bytes
  and the EOS that ends it."""
  source = seqio.get_mixture_or_task(task).source
  assert isinstance(source, LocalCorpusSource)
  records = tf.data.TFRecordDataset(source.list_shards("train"))
  texts = [tf.train.Example.FromString(record).features.feature["text"].bytes_list.value[0]
           for record in records.as_numpy_iterator()]
  return sum(len(text) for text in texts) + len(texts)


def test_epochs_elapsed_per_source_equal_a_hand_count():
  sources = {"pydocs.full_lm.byte": 0.7, "shakespeare.full_lm.byte": 0.3}
  mixtures.register(WeightedMixture("mix_test.text", sources, max_epochs=1.0))
  rows = mixtures.accounting("mix_test.text", {"targets": 64}, tokens=5e6)
  for row in rows:
    assert row.tokens_seen == pytest.approx(sources[row.task] * 5e6)
    assert row.epochs == pytest.approx(sources[row.task] * 5e6 / corpus_tokens(row.task))
  assert [row.over_repeated for row in rows] == [True, False]  # 1.68 and 0.32 epochs
  table = mixtures.format_accounting(rows, "mix:")
  assert "warning: pydocs.full_lm.byte is repeated 1.7 epochs" in table
  assert "shakespeare.full_lm.byte is repeated" not in table
  assert mixtures.accounting("pydocs.full_lm.byte", {"targets": 64}, 5e6) is None


@pytest.mark.parametrize("sources, says", [
    ({}, "has no sources"),
    ({"pydocs.full_lm.byte": -1.0}, "non-negative"),
    ({"pydocs.full_lm.byte": 0.0}, "positive sum"),
    ({"pydocs.full_lm.byte": 1.0, "no_such.task": 1.0}, "unknown task or mixture 'no_such.task'"),
])
def test_a_bad_mixture_is_one_clear_error(sources, says):
  with pytest.raises(DataError, match=says):
    mixtures.register(WeightedMixture("mix_test.bad", sources))


@pytest.mark.slow  # a tiny training run
def test_a_run_on_a_gin_mixture_reports_the_planned_and_the_seen_mix(tmp_path):
  bindings = [b for b in helpers.bindings(tmp_path, steps=4)
              if not b.startswith("MIXTURE_OR_TASK_NAME")]  # the mixture's gin file names it
  gin_utils.parse(helpers.gin_files("causal_decoder") + ["mixtures/pydocs_shakespeare_byte.gin"],
                  bindings + ["mixture.max_epochs = 1e-5"])
  gin_utils.register_tasks()
  stream = io.StringIO()
  trainer.train(gin_utils.resolve_train_spec(), gin_utils.resolve_mesh(), stream=stream)
  out = stream.getvalue()
  tokens = 4 * 4 * 64
  assert f"data mix over the planned {tokens:.4g} tokens:" in out
  assert f"data mix seen in {tokens:.4g} tokens (4 steps):" in out
  assert out.count("warning: pydocs.full_lm.byte is repeated") == 2
  assert len(re.findall(r"shakespeare\.full_lm\.byte +30\.0% +307\.2 ", out)) == 2
