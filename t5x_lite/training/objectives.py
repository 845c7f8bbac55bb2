"""What a train step minimises, and what the loop logs of it.

An objective turns the model and a batch into sums (so microbatches and hosts add them)
and a normaliser (the loss is sum / normaliser over the whole batch); on the host it
turns summed statistics into the logged scalars, "loss" first. `LanguageModelling` is
the token cross-entropy of pretraining and fine-tuning (models/losses.py);
`PreferenceOptimization` the DPO family over [chosen; rejected] rows whose reference
log-probabilities ride in the batch as `reference_logps` (training/reference.py).
`WithRouterLosses` adds an MoE model's router losses to any of them and logs the routing
(load balance, dropped assignments).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

from t5x_lite.models import alignment_losses, losses, moe
from t5x_lite.models.configs import TransformerConfig
from t5x_lite.runs.spec import PreferenceConfig, TrainSpec

REFERENCE_FEATURE = "reference_logps"
# What a rollout (alignment/rollouts.py) adds to its rows for the policy-gradient step:
# one advantage per row, and per token the sampling policy's and the reference's
# log-probabilities.
ADVANTAGES = "advantages"
OLD_LOGPS = "old_logps"
REFERENCE_LOGPS = "reference_token_logps"
# PPO's rows carry per-token advantages and, for the value loss, the returns and the
# rollout's value estimates.
RETURNS = "returns"
OLD_VALUES = "old_values"


@dataclasses.dataclass(frozen=True)
class LanguageModelling:
  """Cross-entropy over the loss-weighted target tokens, with z-loss and smoothing."""
  z_loss: float = 1e-4
  label_smoothing: float = 0.0

  def normaliser(self, batch: Mapping[str, jax.Array]) -> jax.Array:
    return jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)

  def sums(self, model, batch: Mapping[str, jax.Array], rng: Optional[jax.Array]
           ) -> dict[str, jax.Array]:
    return losses.model_loss_sums(model, batch, z_loss=self.z_loss,
                                  label_smoothing=self.label_smoothing,
                                  dropout_rng=rng)._asdict()

  def scalars(self, totals: Mapping[str, float]) -> dict[str, float]:
    tokens = max(float(totals["tokens"]), 1.0)
    return {"loss": float(totals["cross_entropy"]) / tokens,
            "z_loss": float(totals["z_loss"]) / tokens,
            "accuracy": float(totals["correct"]) / tokens}

  def eval_scalars(self, totals: Mapping[str, float]) -> dict[str, float]:
    return losses.eval_metrics(totals)

  def describe_eval(self, metrics: Mapping[str, float]) -> str:
    return (f"loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.2f}, "
            f"accuracy {metrics['accuracy']:.3f}")


class _PerPair:
  """What the pairwise objectives share: rows come as [chosen; rejected], the loss is the
  mean over the pairs, and every logged figure is a per-pair sum over the "pairs" count."""

  def normaliser(self, batch: Mapping[str, jax.Array]) -> jax.Array:
    return jnp.asarray(batch["decoder_target_tokens"].shape[0] // 2, jnp.float32)

  def scalars(self, totals: Mapping[str, float]) -> dict[str, float]:
    pairs = max(float(totals["pairs"]), 1.0)
    return {name: float(value) / pairs for name, value in totals.items() if name != "pairs"}

  def eval_scalars(self, totals: Mapping[str, float]) -> dict[str, float]:
    return self.scalars(totals)


@dataclasses.dataclass(frozen=True)
class PreferenceOptimization(_PerPair):
  """A preference loss per pair, averaged over the pairs; TRL's metrics beside it."""
  config: PreferenceConfig

  def sums(self, model, batch: Mapping[str, jax.Array], rng: Optional[jax.Array]
           ) -> dict[str, jax.Array]:
    logits = model(batch, dropout_rng=rng)
    policy = alignment_losses.sequence_logps(logits, batch["decoder_target_tokens"],
                                             batch["decoder_loss_weights"])
    reference = (alignment_losses.SequenceLogps(batch[REFERENCE_FEATURE], policy.tokens)
                 if self.config.needs_reference else None)
    terms = alignment_losses.preference_loss(
        policy, reference, loss=self.config.loss, beta=self.config.beta,
        label_smoothing=self.config.label_smoothing, simpo_gamma=self.config.simpo_gamma)
    pairs = terms.loss.shape[0]
    means = alignment_losses.preference_metrics(terms, policy)
    nll = alignment_losses.chosen_nll(policy)
    loss = terms.loss + self.config.sft_weight * nll if self.config.sft_weight else terms.loss
    return {"loss": jnp.sum(loss), "pairs": jnp.asarray(pairs, jnp.float32),
            "nll/chosen": jnp.sum(nll), **{name: value * pairs for name, value in means.items()}}

  def describe_eval(self, metrics: Mapping[str, float]) -> str:
    text = (f"loss {metrics['loss']:.4f}, reward accuracy {metrics['rewards/accuracies']:.3f}, "
            f"margin {metrics['rewards/margins']:.4f}")
    if "kl" in metrics:  # measured on the policy's samples (alignment/policy_kl.py)
      text += f", KL to the reference {metrics['kl']:.4f} +- {metrics['kl_stderr']:.4f}"
    return text


@dataclasses.dataclass(frozen=True)
class RewardModelling(_PerPair):
  """The Bradley-Terry loss on a reward model's rewards at each completion's last token."""
  config: PreferenceConfig

  def sums(self, model, batch: Mapping[str, jax.Array], rng: Optional[jax.Array]
           ) -> dict[str, jax.Array]:
    rewards = alignment_losses.last_token_values(model.rewards(batch, dropout_rng=rng),
                                                 batch["decoder_loss_weights"])
    loss, correct = alignment_losses.bradley_terry_loss(rewards, self.config.margin or None)
    chosen, rejected = alignment_losses.split_pairs(rewards)
    return {"loss": jnp.sum(loss), "pairs": jnp.asarray(loss.shape[0], jnp.float32),
            "accuracy": jnp.sum(correct), "rewards/chosen": jnp.sum(chosen),
            "rewards/rejected": jnp.sum(rejected),
            "rewards/margins": jnp.sum(chosen - rejected)}

  def describe_eval(self, metrics: Mapping[str, float]) -> str:
    return (f"loss {metrics['loss']:.4f}, pairwise accuracy {metrics['accuracy']:.3f}, "
            f"margin {metrics['rewards/margins']:.4f}")


@dataclasses.dataclass(frozen=True)
class PolicyGradient:
  """GRPO's and PPO's loss per completion token: the clipped surrogate of the importance
  ratio to the sampling policy times the advantage (the row's for GRPO, the token's for
  PPO), plus kl_beta times the per-token KL estimate to the reference when the rows carry
  its log-probs, plus for PPO value_coef times the clipped value loss
  0.5 max((V - R)^2, (V_old + clip(V - V_old, +-value_clip) - R)^2); averaged over the
  completion tokens of the batch (the token mean of DAPO and Dr. GRPO)."""
  clip_epsilon: float = 0.2
  kl_beta: float = 0.04
  kl_estimator: str = "k3"
  value_coef: float = 0.1
  value_clip: float = 0.2

  def normaliser(self, batch: Mapping[str, jax.Array]) -> jax.Array:
    return jnp.maximum(jnp.sum(batch["decoder_loss_weights"].astype(jnp.float32)), 1.0)

  def sums(self, model, batch: Mapping[str, jax.Array], rng: Optional[jax.Array]
           ) -> dict[str, jax.Array]:
    mask = batch["decoder_loss_weights"].astype(jnp.float32)
    critic = RETURNS in batch
    if critic:
      logits, values = model.logits_and_values(batch, dropout_rng=rng)
    else:
      logits = model(batch, dropout_rng=rng)
    logps = alignment_losses.token_logps(logits, batch["decoder_target_tokens"])
    advantages = batch[ADVANTAGES]
    if advantages.ndim == 1:  # one per row (GRPO)
      advantages = advantages[:, None]
    terms = alignment_losses.clipped_policy_loss(logps, batch[OLD_LOGPS], advantages,
                                                 self.clip_epsilon)
    loss = terms.loss
    value_loss = jnp.zeros_like(loss)
    if critic:
      old, returns = batch[OLD_VALUES], batch[RETURNS]
      clipped = old + jnp.clip(values - old, -self.value_clip, self.value_clip)
      value_loss = 0.5 * jnp.maximum(jnp.square(values - returns),
                                     jnp.square(clipped - returns))
      loss = loss + self.value_coef * value_loss
    kl = jnp.zeros_like(loss)
    if REFERENCE_LOGPS in batch:
      kl = alignment_losses.kl_estimate(logps, batch[REFERENCE_LOGPS], self.kl_estimator)
      loss = loss + self.kl_beta * kl
    total = lambda x: jnp.sum(x.astype(jnp.float32) * mask)  # noqa: E731
    sums = {"loss": total(loss), "tokens": jnp.sum(mask), "kl": total(kl),
            "clip_fraction": total(terms.clipped), "ratio": total(terms.ratio)}
    if critic:
      sums["value_loss"] = total(value_loss)
    return sums

  def scalars(self, totals: Mapping[str, float]) -> dict[str, float]:
    tokens = max(float(totals["tokens"]), 1.0)
    return {name: float(value) / tokens for name, value in totals.items() if name != "tokens"}

  def eval_scalars(self, totals: Mapping[str, float]) -> dict[str, float]:
    return self.scalars(totals)

  def describe_eval(self, metrics: Mapping[str, float]) -> str:
    return f"loss {metrics['loss']:.4f}, KL {metrics['kl']:.4f}"


def for_spec(spec: TrainSpec, z_loss: float, label_smoothing: float):
  """The run's objective: the policy gradient of an `rl.*` run, a reward model's or
  preference optimization when `preference.*` is bound, else language modelling; with
  an MoE model's router losses."""
  return with_router_losses(_objective(spec, z_loss, label_smoothing), spec.model)


def _objective(spec: TrainSpec, z_loss: float, label_smoothing: float):
  preference = spec.preference
  if spec.rl is not None:
    return PolicyGradient(spec.rl.clip_epsilon, spec.rl.kl_beta, spec.rl.kl_estimator,
                          spec.rl.value_coef, spec.rl.value_clip)
  if preference is not None and preference.trains_reward_model:
    return RewardModelling(preference)
  if preference is not None:
    return PreferenceOptimization(preference)
  return LanguageModelling(z_loss, label_smoothing)


ROUTING = "moe/"  # the prefix of the router statistics' sums and scalars


@dataclasses.dataclass(frozen=True)
class WithRouterLosses:
  """An MoE model's objective: `inner`'s loss plus aux_coef x the Switch load-balancing
  loss plus z_coef x the router z-loss, each the mean over the forward pass's MoE layers
  (models/moe.py), weighted like the loss (a microbatch by its share of the normaliser).
  Logged beside `inner`'s figures: both router losses, the fraction of assignments
  dropped for capacity, each expert's share of the assignments and the largest share
  over the uniform 1 / E ("max load"). `inner`'s own "loss" scalar stays its own (the
  cross-entropy of language modelling)."""
  inner: Any
  aux_coef: float
  z_coef: float
  experts: int

  def normaliser(self, batch: Mapping[str, jax.Array]) -> jax.Array:
    return self.inner.normaliser(batch)

  def sums(self, model, batch: Mapping[str, jax.Array], rng: Optional[jax.Array]
           ) -> dict[str, jax.Array]:
    with moe.collect() as reports:
      sums = dict(self.inner.sums(model, batch, rng))
    stats = functools.reduce(moe.add_stats, reports, {})
    aux, z = moe.mean_losses(stats)
    weight = self.inner.normaliser(batch)
    sums["loss"] = sums["loss"] + (self.aux_coef * aux + self.z_coef * z) * weight
    per_expert = {f"{ROUTING}expert_{e}": stats["expert_assignments"][e]
                  for e in range(self.experts)}
    return {**sums, f"{ROUTING}aux_loss": aux * weight, f"{ROUTING}z_loss": z * weight,
            f"{ROUTING}weight": weight, f"{ROUTING}assignments": stats["assignments"],
            f"{ROUTING}dropped": stats["dropped"], **per_expert}

  def _split(self, totals: Mapping[str, float]) -> tuple[dict, dict]:
    own = {k: v for k, v in totals.items() if not k.startswith(ROUTING)}
    return own, routing_scalars(totals, self.experts)

  def scalars(self, totals: Mapping[str, float]) -> dict[str, float]:
    own, routing = self._split(totals)
    return {**self.inner.scalars(own), **routing}

  def eval_scalars(self, totals: Mapping[str, float]) -> dict[str, float]:
    own, routing = self._split(totals)
    return {**self.inner.eval_scalars(own), **routing}

  def describe_eval(self, metrics: Mapping[str, float]) -> str:
    return f"{self.inner.describe_eval(metrics)}, {describe_routing(metrics)}"


def routing_scalars(totals: Mapping[str, float], experts: int) -> dict[str, float]:
  """The logged routing figures from WithRouterLosses' sums (see there)."""
  weight = max(float(totals[f"{ROUTING}weight"]), 1e-9)
  assignments = max(float(totals[f"{ROUTING}assignments"]), 1.0)
  shares = [float(totals[f"{ROUTING}expert_{e}"]) / assignments for e in range(experts)]
  return {f"{ROUTING}aux_loss": float(totals[f"{ROUTING}aux_loss"]) / weight,
          f"{ROUTING}z_loss": float(totals[f"{ROUTING}z_loss"]) / weight,
          f"{ROUTING}dropped_fraction": float(totals[f"{ROUTING}dropped"]) / assignments,
          f"{ROUTING}max_load": max(shares) * experts,
          **{f"{ROUTING}expert_{e}_share": share for e, share in enumerate(shares)}}


def describe_routing(scalars: Mapping[str, float]) -> str:
  """The progress line's routing part ("" for a dense model)."""
  if f"{ROUTING}aux_loss" not in scalars:
    return ""
  return (f"balance {scalars[f'{ROUTING}aux_loss']:.3f}, router z "
          f"{scalars[f'{ROUTING}z_loss']:.2f}, dropped "
          f"{100 * scalars[f'{ROUTING}dropped_fraction']:.1f}%, max load "
          f"{scalars[f'{ROUTING}max_load']:.2f}x")


def with_router_losses(objective: Any, config: TransformerConfig) -> Any:
  """`objective` with the router losses of `config`'s MoE layers (itself for a dense
  model or one already wrapped)."""
  if not config.num_experts or isinstance(objective, WithRouterLosses):
    return objective
  return WithRouterLosses(objective, config.moe_aux_loss_coef, config.moe_z_loss_coef,
                          config.routed_experts)
