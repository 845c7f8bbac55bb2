"""Supervised (inputs, targets) data as a user relies on it: the loss falls on target
tokens only for every architecture, packed or not; bad rows are reported by file:line
and skipped; templates are data; the hash split is deterministic and disjoint."""

import io
import json

import numpy as np
import pytest

from t5x_lite import gin_utils
from t5x_lite.data import get_batches, register_tasks, supervised
from t5x_lite.data.corpus_store import CorpusError
from t5x_lite.training import trainer
from tests import train_helpers as helpers

ROWS = [{"inputs": f"question {i}: {'x' * (i % 5)}?", "targets": f"answer {i}"}
        for i in range(24)]
LENGTHS = {"encoder_decoder": {"inputs": 24, "targets": 16},
           "causal_decoder": {"inputs": 24, "targets": 16},
           "prefix_decoder": {"inputs": 24, "targets": 16}}


def write_jsonl(path, rows) -> str:
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


def byte_ids(text: str) -> list[int]:
  """The byte vocabulary's ids (byte + 3) and EOS (1), as the task tokenises a field."""
  return [b + 3 for b in text.encode()] + [1]


@pytest.fixture()
def rows_file(tmp_path):
  return write_jsonl(tmp_path / "rows.jsonl", ROWS)


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("architecture", ["causal_decoder", "prefix_decoder", "encoder_decoder"])
def test_loss_weights_cover_exactly_the_target_tokens(rows_file, architecture, pack):
  register_tasks(supervised_data=supervised.SupervisedData(train=(rows_file,),
                                                           validation=(rows_file,)))
  batches = get_batches("supervised.byte", LENGTHS[architecture], "validation", 4,
                        architecture, shuffle=False, num_epochs=1, pack=pack)
  expected = {tuple(byte_ids(r["inputs"])): byte_ids(r["targets"]) for r in ROWS}
  seen = 0
  for batch in batches:
    for row in range(len(batch["decoder_target_tokens"])):
      targets, weights = batch["decoder_target_tokens"][row], batch["decoder_loss_weights"][row]
      segments = (batch["decoder_segment_ids"][row] if pack
                  else (targets > 0).astype(np.int32))
      encoder = batch.get("encoder_input_tokens")
      encoder_segments = None if encoder is None else (
          batch["encoder_segment_ids"][row] if pack else (encoder[row] > 0).astype(np.int32))
      assert np.all(weights[segments == 0] == 0), "padding never carries loss"
      for segment in set(segments.tolist()) - {0}:
        here = segments == segment
        if encoder is None:
          # Decoders read [inputs, targets]: loss on the targets part only.
          tokens = targets[here].tolist()
          inputs = next(list(i) for i in expected if tokens[:len(i)] == list(i))
          want = [0.0] * len(inputs) + [1.0] * (len(tokens) - len(inputs))
          assert tokens[len(inputs):] == expected[tuple(inputs)]
          if architecture == "prefix_decoder":
            prefix = batch["decoder_causal_attention"][row][here]
            assert np.all(prefix[:len(inputs)] == 1) and np.all(prefix[len(inputs) + 1:] == 0)
        else:
          # The encoder-decoder reads inputs in the encoder: every decoder token is a target.
          inputs = encoder[row][encoder_segments == segment].tolist()
          assert targets[here].tolist() == expected[tuple(inputs)]
          want = [1.0] * int(here.sum())
        assert weights[here].tolist() == want
        seen += 1
  assert seen == len(ROWS)


def test_bad_rows_are_reported_by_file_and_line_and_the_rest_used(tmp_path):
  path = write_jsonl(tmp_path / "mixed.jsonl", [
      {"inputs": "good", "targets": "row"},
      {"inputs": "no targets"},
      {"inputs": 3, "targets": "not a string"},
      "{not json",
      {"inputs": "empty", "targets": "  "},
      ["a", "list"],
      {"inputs": "also good", "targets": "row", "extra": "fields are fine"},
  ])
  examples, report = supervised.read_examples(
      supervised.SupervisedData(train=(path,), validation=(path,)), "validation")
  assert [e["inputs"] for e in examples] == ["good", "also good"]
  assert report.used == 2
  assert report.skipped == [
      f"{path}:2: missing or non-string field(s) ['targets']",
      f"{path}:3: missing or non-string field(s) ['inputs']",
      f"{path}:4: not valid JSON (Expecting property name enclosed in double quotes)",
      f"{path}:5: empty targets",
      f"{path}:6: expected an object with fields ['inputs', 'targets']",
  ]
  stream = io.StringIO()
  report.print("validation", stream)
  assert "skipped 5 bad rows, used 2" in stream.getvalue()


def test_tsv_rows_with_a_header_and_token_limits(tmp_path):
  path = tmp_path / "rows.tsv"
  path.write_text("inputs\ttargets\nshort\tok\nlong one\t" + "y" * 40 + "\nbad\trow\textra\n")
  data = supervised.SupervisedData(train=(str(path),), validation=(str(path),),
                                   max_targets_tokens=10)
  examples, report = supervised.read_examples(data, "validation",
                                              vocabulary=_byte_vocabulary())
  assert examples == [{"inputs": "short", "targets": "ok"}]
  assert report.skipped == [
      f"{path}:3: targets is 41 tokens after tokenisation, over the limit 10",
      f"{path}:4: 3 columns, the header has 2"]


def _byte_vocabulary():
  from t5x_lite.data import vocabularies
  return vocabularies.byte_vocabulary()


def test_templates_are_data_and_each_row_gets_one_deterministically(tmp_path):
  rows = write_jsonl(tmp_path / "qa.jsonl",
                     [{"question": f"q{i}", "answer": f"a{i}"} for i in range(40)])
  templates = tmp_path / "templates.json"
  templates.write_text(json.dumps({"templates": [
      {"inputs": "Question: {question}\nAnswer:", "targets": "{answer}"},
      {"inputs": "{question}? Reply briefly.", "targets": "{answer}"}]}))
  data = supervised.SupervisedData(train=(rows,), validation=(rows,), templates=str(templates))
  first, _ = supervised.read_examples(data, "validation")
  again, _ = supervised.read_examples(data, "validation")
  assert first == again
  styles = {e["inputs"].startswith("Question:") for e in first}
  assert styles == {True, False}, "both phrasings are used"
  assert all(e["targets"] == "a" + e["inputs"].split("q")[1].split("?")[0].split("\n")[0]
             for e in first)


def test_a_template_naming_an_unknown_field_is_one_clear_error(tmp_path):
  rows = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
  templates = tmp_path / "templates.json"
  templates.write_text(json.dumps({"templates": [
      {"inputs": "{question} {context}", "targets": "{answer}"}]}))
  data = supervised.SupervisedData(train=(rows,), validation=(rows,), templates=str(templates))
  with pytest.raises(CorpusError, match=r"name field\(s\) \['context'\] that no row has"):
    supervised.read_examples(data, "validation")


def test_hash_split_is_deterministic_disjoint_and_complete(tmp_path):
  rows = [{"inputs": f"in {i}", "targets": f"out {i}"} for i in range(400)]
  path = write_jsonl(tmp_path / "rows.jsonl", rows)
  data = supervised.SupervisedData(train=(path,), validation_fraction=0.1)
  train, _ = supervised.read_examples(data, "train")
  validation, _ = supervised.read_examples(data, "validation")
  train_inputs = {e["inputs"] for e in train}
  validation_inputs = {e["inputs"] for e in validation}
  assert not train_inputs & validation_inputs
  assert len(train_inputs | validation_inputs) == 400
  assert 20 <= len(validation) <= 60  # 10% of 400, within a few binomial deviations
  # Row order does not move rows between splits.
  shuffled = write_jsonl(tmp_path / "shuffled.jsonl", rows[::-1])
  again, _ = supervised.read_examples(supervised.SupervisedData(train=(shuffled,),
                                                                validation_fraction=0.1),
                                      "validation")
  assert {e["inputs"] for e in again} == validation_inputs


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_a_supervised_task_trains_through_the_entry_point_bindings(tmp_path, rows_file):
  """gin binds supervised_data.* at the entry point; the trainer fine-tunes on it."""
  gin_utils.parse(helpers.gin_files("prefix_decoder"), helpers.bindings(
      tmp_path / "run", "prefix_decoder", steps=2,
      MIXTURE_OR_TASK_NAME="'supervised.byte'",
      TASK_FEATURE_LENGTHS={"inputs": 24, "targets": 16},
      **{"supervised_data.train": [rows_file], "supervised_data.validation_fraction": 0.2}))
  gin_utils.register_tasks()
  result = trainer.train(gin_utils.resolve_train_spec(), gin_utils.resolve_mesh(),
                         stream=io.StringIO())
  assert result["step"] == 2 and np.isfinite(result["loss"])


def test_rows_are_split_at_newlines_only_and_a_byte_order_mark_is_not_data(tmp_path):
  # JSON allows U+2028 / U+2029 / U+0085 inside strings; str.splitlines would cut there.
  rows = [{"inputs": "one\u2028two", "targets": "three\u2029four\x85five"},
          {"inputs": "plain", "targets": "row"}]
  jsonl = tmp_path / "rows.jsonl"
  jsonl.write_bytes(b"\xef\xbb\xbf" + "".join(
      json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows).encode())
  tsv = tmp_path / "rows.tsv"
  tsv.write_bytes(b"\xef\xbb\xbfinputs\ttargets\nin \xe2\x80\xa8 put\tout\n")
  for path, expected in ((jsonl, rows), (tsv, [{"inputs": "in \u2028 put", "targets": "out"}])):
    data = supervised.SupervisedData(train=(str(path),), validation=(str(path),))
    examples, report = supervised.read_examples(data, "validation")
    assert examples == expected and not report.skipped, path.name


def test_an_empty_validation_split_is_refused_at_start_up_with_the_numbers(tmp_path):
  rows = write_jsonl(tmp_path / "rows.jsonl", ROWS[:3])
  gin_utils.parse(helpers.gin_files("prefix_decoder"), helpers.bindings(
      tmp_path / "run", "prefix_decoder", steps=2, MIXTURE_OR_TASK_NAME="'supervised.byte'",
      TASK_FEATURE_LENGTHS={"inputs": 24, "targets": 16},
      **{"supervised_data.train": [rows], "supervised_data.validation_fraction": 0.01}))
  gin_utils.register_tasks()
  with pytest.raises(CorpusError, match=r"validation split is empty: of 3 usable rows .*"
                                        r"validation_fraction=0.01 holds out 0"):
    trainer.train(gin_utils.resolve_train_spec(), gin_utils.resolve_mesh(),
                  stream=io.StringIO())
  assert not (tmp_path / "run").exists()  # refused before the first step


@pytest.mark.parametrize("content,message", [
    (json.dumps({"templates": [{"inputs": "Q: {}", "targets": "{targets}"}]}),
     r"\{\} is not a field name"),
    (json.dumps({"templates": [{"inputs": "{inputs:qq}", "targets": "{targets}"}]}),
     "Invalid format specifier"),
    (json.dumps({"templates": [{"inputs": "{inputs!z}", "targets": "{targets}"}]}),
     "conversion"),
    (b'{"templates": "\xe9"}', "not UTF-8"),
    (None, "Is a directory"),
])
def test_a_malformed_templates_file_is_one_clear_error_at_load(tmp_path, content, message):
  path = tmp_path / "templates.json"
  if content is None:
    path.mkdir()
  elif isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content)
  with pytest.raises(CorpusError, match=message):
    supervised.load_templates(str(path))
