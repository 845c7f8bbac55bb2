"""Shared test setup."""

import gin
import pytest


@pytest.fixture(autouse=True)
def clear_gin_bindings():
  """gin bindings are process-global; a preset parsed by one test must never
  leak into configs another test builds directly."""
  gin.clear_config()
  yield
  gin.clear_config()
