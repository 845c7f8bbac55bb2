"""Rollouts for on-policy RL (GRPO, Shao et al. 2024): a group of sampled completions per
prompt, their rewards and advantages, laid out as training rows.

`rollout(policy, reference, prompts, answers, reward, ...)` samples `group_size`
completions for each prompt from the policy with the project's KV-cache sampler (at the
configured temperature and generation budget), judges them with a reward function
(alignment/rewards.py) or a reward model, turns the rewards into group advantages
(models/alignment_losses.group_advantages: GRPO, RLOO or mean-only baselines), and lays
each (prompt, completion) out as the preference rows are laid out (data/preference.py),
the loss weights on the completion. Beside the features it records, per completion
token, the log-probability under the sampling policy (`old_logps`, the denominator of
the importance ratio when a batch is reused) and under the reference (`reference_logps`,
for the KL penalty), so a train step needs only the policy's forward pass. Timings of
sampling and of scoring come with it, so the loop can show them apart from training.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np
import seqio
from flax import nnx

from t5x_lite.common.errors import ConfigError
from t5x_lite.data import preference
from t5x_lite.inference import decoding, textio
from t5x_lite.models import Transformer, alignment_losses
from t5x_lite.runs.spec import RLConfig
from t5x_lite.training.objectives import (
  ADVANTAGES,
  OLD_LOGPS,
  OLD_VALUES,
  REFERENCE_LOGPS,
  RETURNS,
)

Judge = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]


@dataclasses.dataclass
class Rollout:
  """One batch of rollouts: prompts x group_size rows, grouped prompt by prompt."""
  features: dict[str, np.ndarray]
  rewards: np.ndarray  # [prompts, group]
  completions: list[str]
  stats: dict[str, float]


@functools.partial(jax.jit, static_argnums=0)
def _token_logps(graphdef, state, batch):
  model = nnx.merge(graphdef, state)
  return alignment_losses.token_logps(model(batch), batch["decoder_target_tokens"])


@functools.partial(jax.jit, static_argnums=0)
def _values(graphdef, state, batch):
  return nnx.merge(graphdef, state).logits_and_values(batch)[1]


def token_values(model: Transformer, features: dict[str, np.ndarray]) -> np.ndarray:
  """A critic's (head="value") value estimate at every position, zero off the loss."""
  graphdef, state = nnx.split(model)
  values = np.asarray(_values(graphdef, state, _model_features(features)), np.float32)
  return values * (features["decoder_loss_weights"] > 0)


def _model_features(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: v for k, v in features.items()
          if k not in (ADVANTAGES, OLD_LOGPS, REFERENCE_LOGPS, RETURNS, OLD_VALUES)}


def token_logps(model: Transformer, features: dict[str, np.ndarray]) -> np.ndarray:
  """log p(target) at every position of `features` under `model` (evaluation mode),
  zero where the loss weight is zero."""
  graphdef, state = nnx.split(model)
  logps = np.asarray(_token_logps(graphdef, state, _model_features(features)), np.float32)
  return logps * (features["decoder_loss_weights"] > 0)


def _ppo_targets(policy: Transformer, features: dict[str, np.ndarray], rewards_R: np.ndarray,
                 config: RLConfig) -> dict[str, np.ndarray]:
  """PPO's per-token advantages (GAE over the completion, the sequence's reward at its
  last token; whitened over the batch's completion tokens), returns and the rollout's
  value estimates."""
  mask = (features["decoder_loss_weights"] > 0).astype(np.float32)
  values = token_values(policy, features)
  token_rewards = np.zeros_like(values)
  last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1] > 0, axis=1)
  token_rewards[np.arange(len(last)), last] = rewards_R
  advantages, returns = (np.asarray(x, np.float32) for x in alignment_losses.gae(
      token_rewards, values, mask, config.gamma, config.lam))
  valid = advantages[mask > 0]
  whitened = (advantages - valid.mean()) / (valid.std() + 1e-6) * mask
  return {ADVANTAGES: whitened.astype(np.float32), RETURNS: returns, OLD_VALUES: values}


def _until_eos(row: list[int], eos_id: int) -> list[int]:
  return row[:row.index(eos_id) + 1] if eos_id in row else row


def rollout(policy: Transformer, reference: Optional[Transformer], prompts: Sequence[str],
            answers: Sequence[str], judge: Judge, vocabulary: seqio.Vocabulary,
            feature_lengths: dict[str, int], config: RLConfig, seed: int) -> Rollout:
  """Samples config.group_size completions per prompt and lays them out (module doc)."""
  if feature_lengths["targets"] < config.max_new_tokens:
    raise ConfigError(f"TASK_FEATURE_LENGTHS['targets'] ({feature_lengths['targets']}) must "
                      f"hold rl.max_new_tokens ({config.max_new_tokens}).")
  group, eos = config.group_size, vocabulary.eos_id
  prompt_tokens = [list(vocabulary.encode(p)) + [eos] for p in prompts]
  repeated = [tokens for tokens in prompt_tokens for _ in range(group)]
  start = time.perf_counter()
  sampled = decoding.generate(policy, textio.padded(repeated), max_new_tokens=config.max_new_tokens,
                              temperature=config.temperature, seed=seed, eos_id=eos)
  completions = [_until_eos(row, eos) for row in sampled.tokens.tolist()]
  # An empty completion (the first sampled token was padding) still takes one token so
  # that it can be scored; it is judged as the empty text it is.
  completions = [tokens or [eos] for tokens in completions]
  sampling_seconds = time.perf_counter() - start
  texts = [vocabulary.decode([t for t in tokens if t != eos]) for tokens in completions]
  start = time.perf_counter()
  rewards = np.asarray(judge([p for p in prompts for _ in range(group)], texts,
                             [a for a in answers for _ in range(group)]), np.float32)
  rewards = rewards.reshape(len(prompts), group)
  features = preference.token_features(repeated, completions, feature_lengths,
                                       policy.config.architecture)
  features[OLD_LOGPS] = token_logps(policy, features)
  if config.algorithm == "ppo":
    features.update(_ppo_targets(policy, features, rewards.reshape(-1), config))
  else:
    advantages = np.asarray(alignment_losses.group_advantages(rewards, config.baseline))
    features[ADVANTAGES] = advantages.reshape(-1).astype(np.float32)
  if reference is not None:
    features[REFERENCE_LOGPS] = token_logps(reference, features)
  scoring_seconds = time.perf_counter() - start
  lengths = np.array([len(tokens) for tokens in completions], np.float32)
  stats = {"reward": float(rewards.mean()),
           "reward_std_within_groups": float(rewards.std(axis=1).mean()),
           "response_length": float(lengths.mean()),
           "sampling_tokens_per_second": float(lengths.sum() / max(sampling_seconds, 1e-9)),
           "sampling_seconds": sampling_seconds, "scoring_seconds": scoring_seconds}
  return Rollout(features, rewards, texts, stats)
