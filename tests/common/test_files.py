"""files.atomic_write: a result file is replaced whole or left as it was, by one writer
at a time; files.exclusive: a second process writing the same path is refused."""

import subprocess
import sys

import pytest

from t5x_lite.common import files
from t5x_lite.common.errors import FileSystemError


def test_writes_the_file_and_leaves_no_temporary(tmp_path):
  path = tmp_path / "sub" / "results.csv"
  with files.atomic_write(str(path), newline="") as handle:
    handle.write("a,b\r\n1,2\r\n")
  assert path.read_bytes() == b"a,b\r\n1,2\r\n"
  assert sorted(p.name for p in path.parent.iterdir()) == [".results.csv.lock", "results.csv"]


def test_a_failure_mid_write_keeps_the_previous_file(tmp_path):
  path = tmp_path / "results.json"
  path.write_text('{"complete": true}')
  with pytest.raises(RuntimeError):
    with files.atomic_write(str(path)) as handle:
      handle.write('{"compl')
      raise RuntimeError("killed while writing")
  assert path.read_text() == '{"complete": true}'
  assert sorted(p.name for p in tmp_path.iterdir()) == [".results.json.lock", "results.json"]


def test_a_second_process_writing_the_same_path_is_refused_and_the_first_result_stands(
    tmp_path):
  path = tmp_path / "predictions.jsonl"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys; from t5x_lite.common import files\n"
       f"with files.atomic_write({str(path)!r}) as handle:\n"
       "  handle.write('first\\n'); print('writing', flush=True); sys.stdin.read()"],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "writing"
    with pytest.raises(FileSystemError, match="is being written by another process"):
      with files.atomic_write(str(path)) as handle:
        handle.write("second\n")
  finally:
    holder.communicate("")
  assert holder.returncode == 0 and path.read_text() == "first\n"
  with files.atomic_write(str(path)) as handle:  # once the first is done, the path is free
    handle.write("second\n")
  assert path.read_text() == "second\n"


def test_a_command_holds_its_output_for_its_whole_run_and_its_own_writes_pass(tmp_path):
  path = str(tmp_path / "evaluation.json")
  with files.exclusive(path):
    with files.atomic_write(path) as handle:  # re-entrant within the holding process
      handle.write("{}")
  assert (tmp_path / "evaluation.json").read_text() == "{}"


def test_a_directory_is_not_a_file_to_write(tmp_path):
  with pytest.raises(FileSystemError, match="is a directory"):
    with files.atomic_write(str(tmp_path)):
      pass
