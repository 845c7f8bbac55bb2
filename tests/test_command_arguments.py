"""Every command refuses a bad number or output path where it reads it: one clear message,
exit status 2, before any work, and nothing written before is touched."""

import pytest

from t5x_lite import evaluate, infer, lm_eval, merge, quantize
from t5x_lite.scaling.__main__ import main as scaling

PREVIOUS = "previous results\n"


def run(main, argv, capsys) -> tuple[int, str]:
  try:
    code = main(argv)
  except SystemExit as exit_:  # argparse's usage errors
    code = exit_.code
  return code, capsys.readouterr().err


@pytest.fixture
def previous(tmp_path):
  path = tmp_path / "out.jsonl"
  path.write_text(PREVIOUS)
  return path


@pytest.mark.parametrize("binding,message", [
    ("infer.batch_size=0", "infer.batch_size must be a positive integer, got 0"),
    ("infer.batch_size=-3", "infer.batch_size must be a positive integer, got -3"),
    ("infer.num_examples=0", "infer.num_examples must be a positive integer"),
    ("infer.max_new_tokens=-1", "infer.max_new_tokens must be a positive integer"),
    ("infer.top_k=-1", "infer.top_k must be an integer >= 0"),
])
def test_infer_refuses_bad_numbers_and_leaves_the_output_as_it_was(binding, message, previous,
                                                                    tmp_path, capsys):
  code, err = run(infer.main, ["--gin_file=runs/infer.gin",
                               f"--gin.CHECKPOINT_PATH='{tmp_path / 'no_run'}'",
                               f"--gin.INFER_OUTPUT='{previous}'", f"--gin.{binding}"], capsys)
  assert code == 2 and message in err and "Traceback" not in err
  assert previous.read_text() == PREVIOUS


@pytest.mark.parametrize("binding,message", [
    ("BATCH_SIZE=0", "evaluate.batch_size must be a positive integer, got 0"),
    ("evaluate.eval_batches=-2", "evaluate.eval_batches must be a positive integer"),
    ("evaluate.shots=[0, -1]", "evaluate.shots[1] must be an integer >= 0"),
    ("evaluate.max_questions=0", "evaluate.max_questions must be a positive integer"),
])
def test_evaluate_refuses_bad_numbers(binding, message, tmp_path, capsys):
  code, err = run(evaluate.main, ["--gin_file=runs/evaluate.gin",
                                  f"--gin.CHECKPOINT_PATH='{tmp_path}'", f"--gin.{binding}"],
                  capsys)
  assert code == 2 and message in err and "Traceback" not in err


def test_an_output_path_that_is_a_directory_is_refused_before_any_work(tmp_path, capsys):
  code, err = run(infer.main, ["--gin_file=runs/infer.gin",
                               f"--gin.CHECKPOINT_PATH='{tmp_path / 'no_run'}'",
                               f"--gin.INFER_OUTPUT='{tmp_path}'"], capsys)
  assert code == 2 and "is a directory; name a file to write" in err


@pytest.mark.parametrize("argv,message", [
    (["--limit=0"], "argument --limit: 0 must be greater than 0"),
    (["--limit=-1"], "argument --limit: -1 must be greater than 0"),
    (["--batch_size=0"], "argument --batch_size: 0 is below the minimum 1"),
    (["--num_fewshot=-1"], "argument --num_fewshot: -1 is below the minimum 0"),
])
def test_lm_eval_refuses_bad_numbers(argv, message, tmp_path, capsys):
  code, err = run(lm_eval.main, [f"--checkpoint_path={tmp_path}", "--tasks=t5x_lite_pydocs_cloze",
                                 *argv], capsys)
  assert code == 2 and message in err


@pytest.mark.parametrize("argv,message", [
    (["fit", "runs.csv", "--bootstrap", "-5"], "argument --bootstrap: -5 is below the minimum 0"),
    (["optimal", "--law", "chinchilla-approach1", "--budget=-1e20"],
     "argument --budget: -1e20 must be greater than 0"),
    (["plan", "--gin_file=models/tiny_causal_decoder.gin", "--budgets", "1e12",
      "--batch_size", "0", "--targets_length", "64"],
     "argument --batch_size: 0 is below the minimum 1"),
    (["coordcheck", "--gin_file=models/tiny_causal_decoder.gin", "--widths", "64", "0",
      "--output", "x.png"], "argument --widths: 0 is below the minimum 1"),
])
def test_scaling_refuses_bad_numbers(argv, message, capsys):
  code, err = run(scaling, argv, capsys)
  assert code == 2 and message in err


@pytest.mark.parametrize("command", ["merge", "quantize"])
def test_merge_and_quantize_refuse_an_output_that_is_an_existing_file(command, previous,
                                                                      tmp_path, capsys):
  main, source = (merge.main, "--adapters") if command == "merge" else (quantize.main,
                                                                          "--checkpoint")
  code, err = run(main, [f"{source}={tmp_path}", f"--output={previous}"], capsys)
  assert code == 2 and f"--output {previous} is an existing file" in err
  assert previous.read_text() == PREVIOUS
