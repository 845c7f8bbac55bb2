"""infer's inputs files: one example per line ("\n" only), JSONL rows checked one by one,
and a file that is not UTF-8 is one clear error naming the offset."""

import json

import pytest

from t5x_lite.common.errors import UserError
from t5x_lite.inference import textio


def test_examples_are_read_per_newline_and_bad_rows_are_named(tmp_path, capsys):
  path = tmp_path / "inputs.jsonl"
  path.write_text(json.dumps({"inputs": "a\u2028b"}, ensure_ascii=False) + "\n"
                  + "not json\n" + json.dumps({"inputs": "c", "targets": "d"}) + "\n")
  assert textio.read_examples(str(path)) == [{"inputs": "a\u2028b"},
                                             {"inputs": "c", "targets": "d"}]
  assert f"{path}:2: skipped" in capsys.readouterr().err


def test_an_inputs_file_that_is_not_utf8_is_one_clear_error(tmp_path):
  path = tmp_path / "inputs.txt"
  path.write_bytes(b"caf\xe9\n")
  with pytest.raises(UserError, match="offset 3 are not UTF-8"):
    textio.read_examples(str(path))
