"""`python -m t5x_lite.compile_check`: a run's steps compiled for a pod from a CPU machine,
with per-chip memory, FITS or not, and the time and cost of the run."""

import json

import pytest

from t5x_lite import compile_check
from t5x_lite.pods import chips, compiled

TINY = ["--gin_file=runs/pretrain.gin", "--gin_file=models/tiny_causal_decoder.gin",
        "--gin_file=meshes/fsdp.gin", "--gin.TASK_FEATURE_LENGTHS={'targets': 128}"]


def test_a_tiny_decoder_fits_a_v5e_slice(tmp_path, capsys):
  report_path = tmp_path / "report.json"
  code = compile_check.main([*TINY, "--gin.BATCH_SIZE=8", "--gin.TRAIN_STEPS=1000",
                             "--topology=v5e:2x2", "--mfu=0.5", "--price=1.2",
                             f"--json={report_path}"])
  out = capsys.readouterr().out
  assert code == 0
  assert "train step on v5e:2x2" in out and "decode step on v5e:2x2" in out
  assert out.count("FITS") == 2 and "DOES NOT FIT" not in out
  report = json.loads(report_path.read_text())
  assert report["chips"] == 4 and report["mesh"]["fsdp"] == 4
  train, decode = report["steps"]
  assert train["fits"] and decode["fits"]
  # The time and cost follow from our FLOP count: 1000 steps of 8 x 128 tokens at 50%
  # of 4 x 197 TFLOP/s, at $1.20 per chip-hour.
  tokens = 1000 * 8 * 128
  seconds = report["flops_per_token"] * tokens / (4 * 197e12 * 0.5)
  assert train["tokens"] == tokens
  assert train["chip_hours"] == pytest.approx(4 * seconds / 3600)
  assert train["cost"] == pytest.approx(1.2 * 4 * seconds / 3600)
  # FSDP's weights travel by all-gather; the time is what each chip sends over its link.
  assert train["collectives"]["all-gather"]["data_bytes"] > 0
  assert train["communication_seconds"] == pytest.approx(
      train["sent_bytes"] / chips.get("v5e").interconnect_bytes_per_s)


def test_a_step_that_does_not_fit_exits_1_saying_by_how_much_and_what_to_change(capsys):
  code = compile_check.main([*TINY, "--gin.BATCH_SIZE=8192",
                             "--gin.TransformerConfig.vocab_size=32768", "--topology=v5e:2x2",
                             "--no_decode"])
  captured = capsys.readouterr()
  assert code == 1
  assert "DOES NOT FIT" in captured.out and "RESOURCE_EXHAUSTED" in captured.out
  advice = captured.err.strip().splitlines()[-1]
  assert advice.startswith("the train step does not fit: needs ")
  assert "more than the 16.00 GiB a chip has" in advice
  assert "remat_policy='full'" in advice and "BATCH_SIZE" in advice


def test_a_run_directory_is_neither_needed_nor_written(tmp_path, capsys):
  model_dir = tmp_path / "run"
  assert compile_check.main([*TINY, f"--gin.MODEL_DIR='{model_dir}'", "--topology=h100:1x2",
                             "--no_decode"]) == 0
  assert not model_dir.exists()
  assert "FITS" in capsys.readouterr().out


def test_refused_temporaries_are_read_from_xlas_message():
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for "
             "HLO temporaries (32.50G) exceeds available HBM (15.75G).")
  assert compiled.refused_temporaries(message) == int(32.5 * 2**30)
  assert compiled.refused_temporaries("something else") == 0


@pytest.mark.parametrize("flag", ["--topology=v9:2x2", "--topology=h100", "--mfu=-1"])
def test_bad_flags_are_one_clear_error(capsys, flag):
  with pytest.raises(SystemExit) as exit_:
    compile_check.main([*TINY, flag])
  assert exit_.value.code == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  assert "v5p:4x4x4" in err or "--mfu" in err
