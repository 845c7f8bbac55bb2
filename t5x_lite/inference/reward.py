"""A trained reward model as a scorer: `RewardScorer(model_dir).score(prompts, completions)`.

The run directory of a reward model (TransformerConfig.head='reward', trained with
preference.loss='bradley_terry': gin/runs/reward_model.gin) is loaded like any other;
each (prompt, completion) is laid out exactly as training laid out each side of a pair
(data/preference.py) and its reward is the head's value at the completion's last token.
Rewards are comparable between completions of one prompt (the Bradley-Terry loss fixes
differences, not levels).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import numpy as np
from flax import nnx

from t5x_lite.common.errors import ConfigError
from t5x_lite.data import preference
from t5x_lite.models import alignment_losses
from t5x_lite.runs import loading, run_dir


@functools.partial(jax.jit, static_argnums=0)
def _rewards(graphdef, state, batch):
  model = nnx.merge(graphdef, state)
  return alignment_losses.last_token_values(model.rewards(batch),
                                            batch["decoder_loss_weights"])


class RewardScorer:
  """Rewards of (prompt, completion) pairs from a reward model's MODEL_DIR."""

  def __init__(self, model_dir: str, feature_lengths: Optional[dict[str, int]] = None):
    record = run_dir.read_record(model_dir)
    spec = (record or {}).get("spec", {})
    if spec.get("TransformerConfig", {}).get("head", "lm") != "reward":
      raise ConfigError(f"{model_dir} is not a reward model (TransformerConfig.head='reward', "
                        "trained with gin/runs/reward_model.gin).")
    self.model = loading.load_model(model_dir)
    self.config = self.model.config
    train = spec.get("train", {})
    self.feature_lengths = dict(feature_lengths or train["feature_lengths"])
    self.vocabulary = preference.vocabulary(train.get("task", "preference"))
    self._graphdef, self._state = nnx.split(self.model)

  def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """One reward per (prompt, completion), float32."""
    batch = preference.completion_features(list(prompts), list(completions), self.vocabulary,
                                           self.feature_lengths, self.config.architecture)
    return np.asarray(_rewards(self._graphdef, self._state, batch), np.float32)
