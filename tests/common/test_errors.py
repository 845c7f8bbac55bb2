"""run_cli: a user mistake is one line and exit 2, Ctrl-C before the training loop is one
line and exit 130, and a bug keeps its traceback."""

import pytest

from t5x_lite.common import errors


def test_ctrl_c_during_setup_is_one_line_and_the_sigint_exit_status(capsys):
  def setup():
    raise KeyboardInterrupt

  with pytest.raises(SystemExit) as exit_info:
    errors.run_cli(setup)
  assert exit_info.value.code == 130
  assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("text,kind,minimum,message", [
    ("-5", int, 0, "-5 is below the minimum 0"), ("x", int, 1, "'x' is not an integer"),
    ("0.5", int, 1, "'0.5' is not an integer")])
def test_at_least_is_the_argparse_form_of_the_number_rule(text, kind, minimum, message):
  with pytest.raises(errors.argparse.ArgumentTypeError, match=message):
    errors.at_least(minimum, kind)(text)
  assert errors.at_least(0)("3") == 3 and errors.positive()("1e20") == 1e20
