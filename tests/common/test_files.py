"""files.atomic_write: a result file is replaced whole or left as it was."""

import pytest

from t5x_lite.common import files


def test_writes_the_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "sub" / "results.csv"
  with files.atomic_write(str(path), newline="") as handle:
    handle.write("a,b\r\n1,2\r\n")
  assert path.read_bytes() == b"a,b\r\n1,2\r\n"
  assert [p.name for p in path.parent.iterdir()] == ["results.csv"]


def test_a_failure_mid_write_keeps_the_previous_file(tmp_path):
  path = tmp_path / "results.json"
  path.write_text('{"complete": true}')
  with pytest.raises(RuntimeError):
    with files.atomic_write(str(path)) as handle:
      handle.write('{"compl')
      raise RuntimeError("killed while writing")
  assert path.read_text() == '{"complete": true}'
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
