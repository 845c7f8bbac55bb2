"""Reward functions by name, each on hand-written completions."""

import numpy as np
import pytest

from t5x_lite.alignment import rewards
from t5x_lite.common.errors import ConfigError


def test_exact_match_compares_stripped_text():
  got = rewards.get("exact_match")(["q"] * 3, [" 42 ", "42.", "4 2"], ["42"] * 3)
  np.testing.assert_array_equal(got, [1, 0, 0])


def test_leading_number_takes_the_first_number_of_the_completion():
  got = rewards.get("leading_number")(["q"] * 4, ["= 42.", "42 apples, not 41", "41 or 42",
                                                  "none"], ["42"] * 4)
  np.testing.assert_array_equal(got, [1, 1, 0, 0])


def test_format_wants_one_non_empty_line_and_length_shortens():
  np.testing.assert_array_equal(rewards.get("format")(["q"] * 3, ["ok", "two\nlines", " "],
                                                      [""] * 3), [1, 0, 0])
  np.testing.assert_allclose(rewards.get("length")(["q"] * 2, ["ab", ""], [""] * 2),
                             [-0.02, 0.0])


def test_an_unknown_reward_is_one_clear_error():
  with pytest.raises(ConfigError, match="unknown reward 'nope'; choose one of"):
    rewards.get("nope")
