"""Preference pairs: bad rows reported, [chosen; rejected] batches with the loss on the
completion only for every architecture, exact restore, disjoint splits."""

import json

import numpy as np
import pytest

from t5x_lite.data import CorpusError, preference, vocabularies

BYTES = vocabularies.byte_vocabulary()
LENGTHS = {"inputs": 12, "targets": 6}
EOS = BYTES.eos_id


@pytest.fixture
def rows_file(tmp_path):
  rows = [{"prompt": f"q{i}", "chosen": f"good{i % 10}", "rejected": f"bad{i % 10}"}
          for i in range(40)]
  lines = [json.dumps(row) for row in rows] + [
      "not json",
      json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}),
      json.dumps({"prompt": "p", "chosen": " ", "rejected": "r"}),
      json.dumps({"prompt": "p", "chosen": "c"}),
      json.dumps({"prompt": "a very long prompt", "chosen": "c", "rejected": "r"}),
      json.dumps({"prompt": "p", "chosen": "far too long", "rejected": "r"}),
  ]
  path = tmp_path / "pairs.jsonl"
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def read(rows_file, split="train", **data):
  return preference.read_pairs(preference.PreferenceData(train=(rows_file,), **data), split,
                               BYTES, LENGTHS)


def test_each_bad_row_is_reported_with_its_line_and_reason_and_skipped(rows_file):
  pairs, report = read(rows_file, validation_fraction=0.01)
  reasons = [line.split(": ", 1)[1] for line in report.skipped]
  assert [line.split(":")[1] for line in report.skipped] == ["41", "42", "43", "44", "45", "46"]
  assert reasons[0].startswith("not valid JSON")
  assert reasons[1] == "chosen and rejected are the same text"
  assert reasons[2] == "empty chosen"
  assert reasons[3] == "missing or non-string field(s) ['rejected']"
  assert reasons[4].startswith("prompt is 19 tokens (room for 12)")
  assert reasons[5].startswith("chosen is 13 tokens (room for 6)")
  assert report.used == len(pairs) <= 40


def test_the_hash_split_keeps_validation_pairs_out_of_training(rows_file):
  train, _ = read(rows_file, validation_fraction=0.3)
  validation, _ = read(rows_file, "validation", validation_fraction=0.3)
  assert len(train) + len(validation) == 40 and validation
  assert not {p.prompt for p in train} & {p.prompt for p in validation}


def test_no_usable_pairs_is_one_clear_error(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text("nope\n")
  with pytest.raises(CorpusError, match="no usable train pairs.*not valid JSON"):
    read(str(path))


@pytest.mark.parametrize("architecture", ["causal_decoder", "prefix_decoder",
                                          "encoder_decoder"])
def test_rows_are_chosen_then_rejected_with_the_loss_on_the_completion_only(rows_file,
                                                                           architecture):
  pairs, _ = read(rows_file, validation_fraction=0.01)
  batch = next(preference.get_pair_batches(pairs, LENGTHS, "train", 4, architecture, seed=3))
  index = batch[preference.PAIR_INDEX]
  assert len(index) == 8 and np.array_equal(index[:4], index[4:])
  for row in range(8):
    pair = pairs[index[row]]
    completion = pair.chosen if row < 4 else pair.rejected
    targets, weights = batch["decoder_target_tokens"][row], batch["decoder_loss_weights"][row]
    # The weighted tokens are exactly the completion and its EOS.
    assert tuple(targets[weights == 1]) == completion and completion[-1] == EOS
    if architecture == "encoder_decoder":
      prompt = batch["encoder_input_tokens"][row]
      assert tuple(prompt[:len(pair.prompt)]) == pair.prompt
    else:
      assert tuple(targets[:len(pair.prompt)]) == pair.prompt
      assert not weights[:len(pair.prompt)].any()
      # The prefix (prompt and BOS) is marked as PrefixLMFeatureConverter marks it.
      assert batch["decoder_causal_attention"][row].sum() == len(pair.prompt) + 1


def test_a_restored_position_continues_with_the_same_batches_across_epochs(rows_file,
                                                                          tmp_path):
  pairs = read(rows_file, validation_fraction=0.01)[0][:32]  # four batches an epoch
  batches = preference.get_pair_batches(pairs, LENGTHS, "train", 8, "causal_decoder", seed=1)
  first_epoch = [next(batches)[preference.PAIR_INDEX][:8] for _ in range(len(pairs) // 8)]
  batches.save(str(tmp_path / "position"))
  expected = [next(batches)["decoder_target_tokens"] for _ in range(6)]
  restored = preference.get_pair_batches(pairs, LENGTHS, "train", 8, "causal_decoder", seed=1)
  restored.restore(str(tmp_path / "position"))
  for want in expected:
    np.testing.assert_array_equal(next(restored)["decoder_target_tokens"], want)
  # An epoch sees every pair once, in an order of its own.
  seen = np.concatenate(first_epoch)
  assert sorted(seen) == list(range(32))
  assert not np.array_equal(seen, np.arange(len(seen)))
