"""The objectives of learning from preferences and rewards, as functions of arrays.

Everything here takes log-probabilities, rewards or values the caller computed with the
model (one forward path: models/losses.py's), so each formula can be checked by hand:

- `sequence_logps`: a completion's log-probability summed over its loss-weighted tokens.
- `preference_loss`: DPO (sigmoid, Rafailov et al. 2023), conservative DPO (label
  smoothing, Mitchell 2023), IPO (Azar et al. 2023), hinge (SLiC), robust DPO (Chowdhury
  et al. 2024) against a reference; SimPO (Meng et al. 2024) without one. Its metrics use
  TRL's names (rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins,
  logps/chosen, logps/rejected).
- `bradley_terry_loss`: a reward model's pairwise loss, with an optional margin (Llama 2).
- `kl_estimate`: per-token KL(policy || reference) from samples of the policy: k1, k2
  and k3 (Schulman 2020; k3 is tunix's and verl's "low_var_kl"), optionally clamped.
- `group_advantages`: GRPO's group-normalised advantages (Shao et al. 2024), RLOO's
  leave-one-out baseline (Ahmadian et al. 2024) and the mean-only baseline of Dr. GRPO
  (Liu et al. 2025).
- `gae`: PPO's generalised advantage estimation (Schulman et al. 2016).
- `clipped_policy_loss`: PPO's clipped surrogate on per-token importance ratios.

Batches of pairs are laid out as [chosen rows; rejected rows]: row i and row i + B/2
are one pair (data/preference.py builds them so).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp

PreferenceLoss = Literal["sigmoid", "ipo", "hinge", "robust", "simpo"]
REFERENCE_FREE = ("simpo",)
KlEstimator = Literal["k1", "k2", "k3"]
Baseline = Literal["grpo", "rloo", "mean"]


class SequenceLogps(NamedTuple):
  """Per row: the completion's summed log-probability and its token count."""
  logps: jax.Array   # [B]
  tokens: jax.Array  # [B]


def token_logps(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  """log p(target) at every position, in float32: [B, L]."""
  logits = logits_BxLxV.astype(jnp.float32)
  target_logits = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  return target_logits - jax.nn.logsumexp(logits, axis=-1)


def sequence_logps(logits_BxLxV: jax.Array, targets_BxL: jax.Array,
                   weights_BxL: jax.Array) -> SequenceLogps:
  """Each row's log-probability over its weighted (completion) tokens: the prompt and
  padding carry weight 0."""
  weights = weights_BxL.astype(jnp.float32)
  return SequenceLogps(jnp.sum(token_logps(logits_BxLxV, targets_BxL) * weights, axis=-1),
                       jnp.sum(weights, axis=-1))


def split_pairs(x_2P: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[chosen; rejected] rows -> (chosen [P], rejected [P])."""
  half = x_2P.shape[0] // 2
  return x_2P[:half], x_2P[half:]


def chosen_nll(policy: SequenceLogps) -> jax.Array:
  """Per pair, the chosen completion's mean negative log-likelihood per token: [P] (the
  SFT term RPO adds to DPO, Pang et al. 2024; TRL's rpo_alpha weighs it)."""
  logps, tokens = split_pairs(policy.logps)[0], split_pairs(policy.tokens)[0]
  return -logps / jnp.maximum(tokens, 1)


class PreferenceTerms(NamedTuple):
  """Per pair: the loss and the implicit rewards (beta x log-ratio to the reference, or
  beta x mean log-prob for reference-free losses)."""
  loss: jax.Array             # [P]
  chosen_rewards: jax.Array   # [P]
  rejected_rewards: jax.Array  # [P]


def preference_loss(policy: SequenceLogps, reference: Optional[SequenceLogps], *,
                    loss: PreferenceLoss = "sigmoid", beta: float = 0.1,
                    label_smoothing: float = 0.0, simpo_gamma: float = 0.5
                    ) -> PreferenceTerms:
  """Per-pair preference losses over [chosen; rejected] sequence log-probs.

  With h = (log pi(c) - log pi(r)) - (log ref(c) - log ref(r)):
    sigmoid: -(1 - e) log s(beta h) - e log s(-beta h)      (DPO; e > 0: conservative DPO)
    robust:  ((1 - e)(-log s(beta h)) + e log s(-beta h)) / (1 - 2e)
    hinge:   max(0, 1 - beta h)
    ipo:     (h - 1 / (2 beta))^2
  and without a reference, with mean log-probs m = log pi / tokens:
    simpo:   -(1 - e) log s(beta (m_c - m_r) - gamma) - e log s(-(...))
  """
  if loss not in PreferenceLoss.__args__:
    raise ValueError(f"unknown preference loss {loss!r}; choose from "
                     f"{list(PreferenceLoss.__args__)}")
  if not beta > 0:
    raise ValueError(f"beta must be positive, got {beta}")
  if not 0.0 <= label_smoothing < 0.5:
    raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
  pi_c, pi_r = split_pairs(policy.logps)
  if loss in REFERENCE_FREE:
    tokens_c, tokens_r = split_pairs(jnp.maximum(policy.tokens, 1.0))
    chosen, rejected = beta * pi_c / tokens_c, beta * pi_r / tokens_r
    z = chosen - rejected - simpo_gamma
    terms = (-(1 - label_smoothing) * jax.nn.log_sigmoid(z)
             - label_smoothing * jax.nn.log_sigmoid(-z))
    return PreferenceTerms(terms, chosen, rejected)
  if reference is None:
    raise ValueError(f"the {loss!r} loss needs reference log-probs")
  ref_c, ref_r = split_pairs(reference.logps)
  chosen, rejected = beta * (pi_c - ref_c), beta * (pi_r - ref_r)
  h = (pi_c - pi_r) - (ref_c - ref_r)
  if loss == "sigmoid":
    terms = (-(1 - label_smoothing) * jax.nn.log_sigmoid(beta * h)
             - label_smoothing * jax.nn.log_sigmoid(-beta * h))
  elif loss == "robust":
    terms = ((-(1 - label_smoothing) * jax.nn.log_sigmoid(beta * h)
              + label_smoothing * jax.nn.log_sigmoid(-beta * h)) / (1 - 2 * label_smoothing))
  elif loss == "hinge":
    terms = jax.nn.relu(1 - beta * h)
  else:  # ipo
    terms = jnp.square(h - 1 / (2 * beta))
  return PreferenceTerms(terms, chosen, rejected)


def preference_metrics(terms: PreferenceTerms, policy: SequenceLogps) -> dict[str, jax.Array]:
  """Means over the pairs, under TRL's names."""
  pi_c, pi_r = split_pairs(policy.logps)
  return {"rewards/chosen": jnp.mean(terms.chosen_rewards),
          "rewards/rejected": jnp.mean(terms.rejected_rewards),
          "rewards/accuracies": jnp.mean((terms.chosen_rewards > terms.rejected_rewards)
                                         .astype(jnp.float32)),
          "rewards/margins": jnp.mean(terms.chosen_rewards - terms.rejected_rewards),
          "logps/chosen": jnp.mean(pi_c), "logps/rejected": jnp.mean(pi_r)}


def last_token_values(values_BxL: jax.Array, weights_BxL: jax.Array) -> jax.Array:
  """Each row's value at its last loss-weighted position (a completion's final token,
  its EOS): where a reward model reads its reward. [B]"""
  length = weights_BxL.shape[1]
  last = length - 1 - jnp.argmax(weights_BxL[:, ::-1] > 0, axis=1)
  return jnp.take_along_axis(values_BxL, last[:, None], axis=1)[:, 0]


def bradley_terry_loss(rewards_2P: jax.Array, margin: Optional[jax.Array] = None
                       ) -> tuple[jax.Array, jax.Array]:
  """Per pair -log s(r_chosen - r_rejected - margin), and whether chosen scored higher."""
  chosen, rejected = split_pairs(rewards_2P.astype(jnp.float32))
  difference = chosen - rejected - (0.0 if margin is None else margin)
  return -jax.nn.log_sigmoid(difference), (chosen > rejected).astype(jnp.float32)


def kl_estimate(policy_logps: jax.Array, reference_logps: jax.Array,
                estimator: KlEstimator = "k3", clamp: Optional[float] = None) -> jax.Array:
  """Per-token estimates of KL(policy || reference) at tokens sampled from the policy.

  With log r = log ref - log pi: k1 = -log r (unbiased, high variance, can be negative);
  k2 = (log r)^2 / 2 (biased, low variance); k3 = r - 1 - log r (unbiased, never
  negative). `clamp` bounds the estimate to [-clamp, clamp] (tunix and verl clamp k3 at
  10 so that one token the reference finds unlikely cannot dominate).
  """
  log_ratio = reference_logps.astype(jnp.float32) - policy_logps.astype(jnp.float32)
  if estimator == "k1":
    kl = -log_ratio
  elif estimator == "k2":
    kl = 0.5 * jnp.square(log_ratio)
  elif estimator == "k3":
    kl = jnp.expm1(log_ratio) - log_ratio
  else:
    raise ValueError(f"unknown KL estimator {estimator!r}; choose k1, k2 or k3")
  return kl if clamp is None else jnp.clip(kl, -clamp, clamp)


def group_advantages(rewards_PxG: jax.Array, baseline: Baseline = "grpo",
                     eps: float = 1e-6) -> jax.Array:
  """Advantages of G completions per prompt from their rewards, [P, G].

    grpo: (r - mean) / (std + eps)    (Shao et al. 2024; std over the group, ddof 0)
    rloo: r - mean of the other G - 1 = G / (G - 1) (r - mean)
    mean: r - mean                   (Dr. GRPO: no division by the std)
  A group whose rewards are all equal gets zero advantages: it teaches nothing.
  """
  rewards = rewards_PxG.astype(jnp.float32)
  group = rewards.shape[-1]
  centred = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
  if baseline == "grpo":
    return centred / (jnp.std(rewards, axis=-1, keepdims=True) + eps)
  if baseline == "rloo":
    if group < 2:
      raise ValueError("RLOO needs at least 2 completions per prompt")
    return centred * group / (group - 1)
  if baseline == "mean":
    return centred
  raise ValueError(f"unknown baseline {baseline!r}; choose grpo, rloo or mean")


def gae(rewards_BxT: jax.Array, values_BxT: jax.Array, mask_BxT: jax.Array,
        gamma: float = 1.0, lam: float = 0.95) -> tuple[jax.Array, jax.Array]:
  """Generalised advantage estimation over each row's valid (mask 1) tokens.

  delta_t = r_t + gamma V_{t+1} - V_t, with V after the last valid token 0 (the episode
  ends there); A_t = delta_t + gamma lam A_{t+1}. Returns (advantages, returns = A + V),
  zero where the mask is 0.
  """
  mask = mask_BxT.astype(jnp.float32)
  rewards, values = rewards_BxT.astype(jnp.float32) * mask, values_BxT.astype(jnp.float32) * mask
  next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
  next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
  deltas = rewards + gamma * next_values * next_mask - values

  def step(following, inputs):
    delta, valid, valid_next = inputs
    advantage = (delta + gamma * lam * following * valid_next) * valid
    return advantage, advantage

  _, advantages = jax.lax.scan(step, jnp.zeros_like(deltas[:, 0]),
                               (deltas.T, mask.T, next_mask.T), reverse=True)
  advantages = advantages.T
  return advantages, (advantages + values) * mask


class PolicyLossTerms(NamedTuple):
  loss: jax.Array           # per token [B, T]
  clipped: jax.Array        # per token: the clipped term was the one taken
  ratio: jax.Array


def clipped_policy_loss(logps: jax.Array, old_logps: jax.Array, advantages: jax.Array,
                        epsilon: float = 0.2) -> PolicyLossTerms:
  """PPO's clipped surrogate per token: -min(rho A, clip(rho, 1 - eps, 1 + eps) A) with
  rho = exp(log pi - log pi_old). Where the clipped term is taken its gradient is zero."""
  ratio = jnp.exp(logps.astype(jnp.float32) - old_logps.astype(jnp.float32))
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1 - epsilon, 1 + epsilon) * advantages
  return PolicyLossTerms(-jnp.minimum(unclipped, clipped), clipped < unclipped, ratio)
