"""What a training run is, as plain data: model, optimizer, schedule and run settings.

The entry point (train.py) resolves gin into a `TrainSpec`; the trainer takes it as
an argument; the run directory records it (spec.json, run_dir.py) and, on resume,
compares it with the recorded one by the rules below. Knobs are named as gin names
them (`TransformerConfig.activation`, `train.batch_size`, `make_schedule.*`), so an
error message or an override reads like the command line that set it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from t5x_lite.common.errors import ConfigError, check_at_least, check_field_types, check_positive
from t5x_lite.models import alignment_losses, mup
from t5x_lite.models.configs import LAYOUT_KNOBS, TransformerConfig
from t5x_lite.models.lora import LoraConfig

SCHEDULES = ("warmup_cosine", "rsqrt", "constant", "wsd")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")
OPTIMIZERS = ("adamw", "adafactor")


class OptimizerConfigError(ConfigError):
  """An optimizer or schedule setting that cannot work."""


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """Learning rate by step.

  name: "warmup_cosine": linear warmup to the peak, then cosine decay to
    final_fraction x peak at the run's last step (the usual LM pretraining schedule);
    "rsqrt": T5's inverse square root, peak_learning_rate / sqrt(max(step, warmup_steps))
    x sqrt(warmup_steps), i.e. constant at the peak during warmup (T5: peak 0.01, 10k);
    "constant": linear warmup then constant;
    "wsd": warmup-stable-decay (Hägele et al. 2024; MiniCPM's "trapezoidal"): linear
    warmup, constant at the peak, then over the last `decay_fraction` of the run a
    decay to final_fraction x peak shaped `decay_shape`: "linear" (1 - p), "cosine"
    ((1 + cos(pi p)) / 2) or "1-sqrt" (1 - sqrt(p)), p going 0 -> 1 over the decay. Its
    stable phase does not depend on the run's length, so cooldown branches
    (train.fork_from) can share one run's stable phase.
  """
  name: str = "warmup_cosine"
  peak_learning_rate: float = 3e-4
  warmup_steps: int = 100
  final_fraction: float = 0.1
  decay_fraction: float = 0.2
  decay_shape: str = "linear"

  def __post_init__(self):
    check_field_types(self, "make_schedule")
    if self.name not in SCHEDULES:
      raise OptimizerConfigError(f"make_schedule.name={self.name!r}; choose one of {SCHEDULES}.")
    if not 0 < self.decay_fraction <= 1:
      raise OptimizerConfigError(f"make_schedule.decay_fraction must be in (0, 1], got "
                                 f"{self.decay_fraction}.")
    if self.decay_shape not in DECAY_SHAPES:
      raise OptimizerConfigError(f"make_schedule.decay_shape={self.decay_shape!r}; choose one "
                                 f"of {DECAY_SHAPES}.")

  def stable_end(self, total_steps: int) -> int:
    """The first step of a WSD run's decay: its last round(decay_fraction x total_steps)
    steps (at least one) decay; warmup and the constant phase come before."""
    decay_steps = max(1, round(self.decay_fraction * total_steps))
    stable_end = total_steps - decay_steps
    if stable_end < self.warmup_steps:
      raise OptimizerConfigError(
          f"make_schedule.warmup_steps={self.warmup_steps} runs into the decay, which starts "
          f"at step {stable_end} ({self.decay_fraction} of {total_steps} steps); use fewer "
          "warmup steps, a smaller decay_fraction or more train steps.")
    return stable_end
    if self.warmup_steps < 0 or self.peak_learning_rate < 0:
      raise OptimizerConfigError("make_schedule.warmup_steps and peak_learning_rate must be "
                                 f">= 0, got {self.warmup_steps} and {self.peak_learning_rate}.")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The optimizer.

  name: "adamw" or "adafactor" (T5: factored second moments, no momentum, update
    clipping 1.0, relative step off so the schedule sets the rate).
  weight_decay: decoupled decay on matrices only (see decay_mask).
  b1, b2, eps: AdamW's moment decay rates and epsilon.
  clip_norm: global gradient-norm clip; None disables it.
  """
  name: str = "adamw"
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: Optional[float] = 1.0

  def __post_init__(self):
    check_field_types(self, "make_optimizer")
    if self.name not in OPTIMIZERS:
      raise OptimizerConfigError(f"make_optimizer.name={self.name!r}; choose one of "
                                 f"{OPTIMIZERS}.")
    if self.clip_norm is not None and self.clip_norm <= 0:
      raise OptimizerConfigError(f"make_optimizer.clip_norm must be positive or None, got "
                                 f"{self.clip_norm}.")


NAN_POLICIES = ("halt", "skip")


def check_retention(keep_checkpoints: Optional[int]) -> None:
  """Retention may never delete the newest checkpoint: keep None (all) or at least one."""
  if keep_checkpoints is not None and (isinstance(keep_checkpoints, bool) or not isinstance(
      keep_checkpoints, int) or keep_checkpoints < 1):
    raise ConfigError(f"train.keep_checkpoints must be None (keep all) or at least 1, got "
                      f"{keep_checkpoints!r}: retention never deletes the newest checkpoint.")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything about a training run that is not the model or the optimizer (gin: `train.*`).

  Attributes:
    model_dir: checkpoints, metrics, spec.json and config.gin go here; a run resumes
      from the newest readable checkpoint found in it.
    train_steps: total optimizer steps (the schedule's length).
    task, feature_lengths, batch_size: the data (MIXTURE_OR_TASK_NAME,
      TASK_FEATURE_LENGTHS, BATCH_SIZE); batch_size is global over all hosts.
    seed: fixes initialisation, dropout and data order.
    microbatches: gradient accumulation; batch_size / microbatches rows per pass.
    z_loss, label_smoothing: see losses.token_loss_sums.
    log_every, eval_every, eval_steps, checkpoint_every: cadence, in steps.
    keep_checkpoints: how many of the newest checkpoints to keep (None: all; >= 1).
    init_checkpoint: fine-tuning: take the params (not the optimizer or data
      position) from this MODEL_DIR when model_dir has no checkpoint yet.
    nan_policy: on a non-finite loss, gradient or updated parameter, "halt" (stop
      with an error; the newest checkpoint stays as it was) or "skip" (drop that
      update, say so, and stop after `max_consecutive_skips` skips in a row).
    peak_flops_per_device: the MFU denominator; by default a datasheet figure for
      known accelerators in bfloat16, else measured on this machine.
    allow_changes: knobs (gin names, e.g. "TransformerConfig.dropout_rate") that may
      differ from the run directory's recorded configuration on resume, and model
      knobs that may differ from init_checkpoint's model when fine-tuning (e.g.
      "TransformerConfig.architecture": a causal decoder continued as a prefix decoder);
      "data" lets a resume read corpus content other than the recorded fingerprints.
    keep_steps: steps at which a checkpoint is saved and kept for good, beside the newest
      `keep_checkpoints`: the fork points of cooldown branches.
    fork_from, fork_step: a cooldown branch (make_schedule.name='wsd'): when model_dir
      has no checkpoint yet, the run starts from the checkpoint at `fork_step` of the
      run in `fork_from` (state and data position) instead of from scratch; that run's
      recorded settings must equal this one's but for length, schedule and cadence, and
      its learning rate must equal this one's at every step before the fork, so the
      branch continues exactly what a from-scratch run of its schedule would have done.
      The fork step lies in this run's stable phase (after warmup, before its decay).
    profile_start_step, profile_steps: trace steps profile_start_step + 1 ...
      profile_start_step + profile_steps with jax.profiler into MODEL_DIR/profile
      (open it with TensorBoard's profile plugin or xprof; tools/top_ops.py lists the
      costliest ops). None: no profile.
  """
  model_dir: str
  train_steps: int
  task: str
  feature_lengths: Mapping[str, int]
  batch_size: int
  seed: int = 0
  microbatches: int = 1
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  log_every: int = 10
  eval_every: int = 100
  eval_steps: int = 10
  checkpoint_every: int = 100
  keep_checkpoints: Optional[int] = 3
  init_checkpoint: Optional[str] = None
  nan_policy: str = "halt"
  max_consecutive_skips: int = 5
  peak_flops_per_device: Optional[float] = None
  allow_changes: tuple[str, ...] = ()
  keep_steps: tuple[int, ...] = ()
  fork_from: Optional[str] = None
  fork_step: Optional[int] = None
  profile_start_step: Optional[int] = None
  profile_steps: int = 3

  def __post_init__(self):
    check_field_types(self, "train")
    if not isinstance(self.feature_lengths, Mapping):
      raise ConfigError(f"train.feature_lengths (TASK_FEATURE_LENGTHS) must be a dict such as "
                        f"{{'targets': 512}}, got {self.feature_lengths!r}.")
    # gin hands over lists and dicts; freeze them so the spec compares and records as data.
    object.__setattr__(self, "feature_lengths", dict(self.feature_lengths))
    object.__setattr__(self, "allow_changes", tuple(self.allow_changes))
    object.__setattr__(self, "keep_steps", tuple(sorted(set(self.keep_steps))))
    if any(not 1 <= step <= self.train_steps for step in self.keep_steps):
      raise ConfigError(f"train.keep_steps {list(self.keep_steps)} must lie in 1 ... "
                        f"train_steps ({self.train_steps}).")
    if (self.fork_from is None) != (self.fork_step is None):
      raise ConfigError("a cooldown branch needs both train.fork_from (the run whose stable "
                        "phase it continues) and train.fork_step; set both or neither.")
    if self.fork_from is not None and self.init_checkpoint:
      raise ConfigError("train.fork_from and train.init_checkpoint exclude each other: a "
                        "cooldown branch takes its whole state from the run it forks.")
    if self.fork_step is not None and not 1 <= self.fork_step < self.train_steps:
      raise ConfigError(f"train.fork_step={self.fork_step} must lie in 1 ... train_steps - 1 "
                        f"({self.train_steps - 1}).")
    check_positive("train", train_steps=self.train_steps, batch_size=self.batch_size,
                   microbatches=self.microbatches, log_every=self.log_every,
                   eval_every=self.eval_every, eval_steps=self.eval_steps,
                   checkpoint_every=self.checkpoint_every,
                   max_consecutive_skips=self.max_consecutive_skips,
                   profile_steps=self.profile_steps)
    if self.profile_start_step is not None and self.profile_start_step < 0:
      raise ConfigError(f"train.profile_start_step must be >= 0 or None, got "
                        f"{self.profile_start_step}.")
    check_positive("train.feature_lengths", **self.feature_lengths)
    check_retention(self.keep_checkpoints)
    if self.nan_policy not in NAN_POLICIES:
      raise ConfigError(f"train.nan_policy={self.nan_policy!r}; choose one of {NAN_POLICIES}.")
    if self.batch_size % self.microbatches:
      raise ConfigError(f"BATCH_SIZE {self.batch_size} is not divisible by train.microbatches "
                        f"{self.microbatches}.")
    if self.z_loss < 0 or not 0 <= self.label_smoothing < 1:
      raise ConfigError(f"train.z_loss must be >= 0 and train.label_smoothing in [0, 1); got "
                        f"{self.z_loss} and {self.label_smoothing}.")
    if self.peak_flops_per_device is not None and self.peak_flops_per_device <= 0:
      raise ConfigError("train.peak_flops_per_device must be positive or None.")
    unknown = [name for name in self.allow_changes if name not in KNOBS and name != "data"]
    if unknown:
      raise ConfigError(f"train.allow_changes names unknown knobs {unknown}; knobs look like "
                        "'TransformerConfig.dropout_rate' or 'train.batch_size'.")


REWARD_MODEL_LOSS = "bradley_terry"


@dataclasses.dataclass(frozen=True)
class PreferenceConfig:
  """Direct preference optimization (gin: `preference.*`; models/alignment_losses.py).

  Bound, the run trains on preference pairs (MIXTURE_OR_TASK_NAME 'preference' or
  'preference.byte', rows from `preference_data.*`; BATCH_SIZE counts pairs) with one of
  the losses below instead of the language-modelling loss. The reference is the model
  the run starts from (train.init_checkpoint; for a LoRA run, the base with the adapters
  off): its log-probabilities of every pair are computed once, before the first step,
  and kept in MODEL_DIR.

  With loss "bradley_terry" the run trains a reward model instead (TransformerConfig.head
  = 'reward'): -log s(r_chosen - r_rejected - margin) on the rewards at each completion's
  last token, no reference; its validation metric is the held-out pairwise accuracy.

  Attributes:
    loss: "sigmoid" (DPO; with label_smoothing > 0 conservative DPO), "robust", "hinge",
      "ipo", "simpo" (reference-free, length-normalised, with margin simpo_gamma), or
      "bradley_terry" (a reward model).
    beta: the strength of the KL leash (DPO's beta; IPO's 1 / (2 beta) target margin).
    label_smoothing: the assumed share of flipped labels (cDPO, robust DPO), in [0, 0.5).
    simpo_gamma: SimPO's target reward margin.
    margin: the Bradley-Terry loss's required reward margin (Llama 2 uses one per rating
      gap; here one for every pair).
    sft_weight: adds this times the chosen completion's mean negative log-likelihood per
      token to each pair's loss (RPO, Pang et al. 2024, "Iterative Reasoning Preference
      Optimization": DPO alone can lower the chosen answers' likelihood with the
      rejected ones'; TRL's rpo_alpha). Logged as nll/chosen whatever its weight.
    kl_prompts, kl_max_new_tokens: at each evaluation of a run with a reference, the
      policy samples a completion (temperature 1, up to kl_max_new_tokens) for each of
      the first kl_prompts validation prompts, and its KL to the reference is the mean
      of log pi(y|x) - log ref(y|x) over them (alignment/policy_kl.py; the reference
      model is loaded for it). 0 prompts: not measured, the reference never loaded.
  """
  loss: str = "sigmoid"
  beta: float = 0.1
  label_smoothing: float = 0.0
  simpo_gamma: float = 0.5
  margin: float = 0.0
  sft_weight: float = 0.0
  kl_prompts: int = 16
  kl_max_new_tokens: int = 32

  def __post_init__(self):
    check_field_types(self, "preference")
    losses = (*alignment_losses.PreferenceLoss.__args__, REWARD_MODEL_LOSS)
    if self.loss not in losses:
      raise ConfigError(f"preference.loss={self.loss!r}; choose one of {list(losses)}.")
    if not self.beta > 0:
      raise ConfigError(f"preference.beta must be positive, got {self.beta}.")
    if not 0.0 <= self.label_smoothing < 0.5:
      raise ConfigError(f"preference.label_smoothing must be in [0, 0.5), got "
                        f"{self.label_smoothing}.")
    if not self.sft_weight >= 0:
      raise ConfigError(f"preference.sft_weight must be >= 0, got {self.sft_weight}.")
    if self.sft_weight and self.loss == REWARD_MODEL_LOSS:
      raise ConfigError("preference.sft_weight adds a language-modelling term to a policy's "
                        "loss; a reward model (loss 'bradley_terry') has none: unbind it.")
    check_at_least("preference", 0, kl_prompts=self.kl_prompts)
    check_positive("preference", kl_max_new_tokens=self.kl_max_new_tokens)

  @property
  def measures_kl(self) -> bool:
    """Whether evaluations sample from the policy to measure its KL to the reference."""
    return self.needs_reference and self.kl_prompts > 0

  @property
  def needs_reference(self) -> bool:
    return self.loss not in (*alignment_losses.REFERENCE_FREE, REWARD_MODEL_LOSS)

  @property
  def trains_reward_model(self) -> bool:
    return self.loss == REWARD_MODEL_LOSS


RL_ALGORITHMS = ("grpo", "ppo")


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """On-policy reinforcement learning from rewards (gin: `rl.*`; alignment/).

  Bound, the run samples its own batches: for BATCH_SIZE prompts of the supervised rows
  (MIXTURE_OR_TASK_NAME 'supervised' or 'supervised.byte'; their targets are the answers
  a reward may check) it draws `group_size` completions each from the current policy,
  judges them, and takes policy-gradient steps with a KL penalty to the reference
  (train.init_checkpoint): GRPO (Shao et al. 2024) on group advantages, or PPO (Schulman
  et al. 2017) on per-token advantages from a value head (TransformerConfig.head='value',
  started at zero on the policy's trunk) by generalised advantage estimation.

  Attributes:
    algorithm: "grpo" or "ppo".
    reward: a reward function's name (alignment/rewards.py: exact_match,
      leading_number, format, length) or the MODEL_DIR of a trained reward model.
    group_size: completions per prompt (>= 2).
    max_new_tokens, temperature: the sampler's generation budget and temperature (> 0).
    baseline: "grpo" (group-normalised advantages), "rloo" or "mean" (Dr. GRPO).
    kl_beta, kl_estimator: the per-token KL penalty's weight and estimator (k1, k2, k3).
    clip_epsilon: the importance ratio's clip range (PPO's epsilon).
    updates_per_batch: optimizer steps on each rollout batch (> 1 reuses it, and the
      ratio to the sampling policy and its clipping come into play).
    eval_prompts: validation prompts scored (greedy) at each evaluation.
    gamma, lam: PPO's discount and GAE lambda (per token; the reward comes at the last).
    value_coef, value_clip: the weight of PPO's value loss and the clip range of its
      value estimates around the rollout's (PPO2's clipped value loss).
  """
  algorithm: str = "grpo"
  reward: str = "exact_match"
  group_size: int = 4
  max_new_tokens: int = 16
  temperature: float = 1.0
  baseline: str = "grpo"
  kl_beta: float = 0.04
  kl_estimator: str = "k3"
  clip_epsilon: float = 0.2
  updates_per_batch: int = 1
  eval_prompts: int = 64
  gamma: float = 1.0
  lam: float = 0.95
  value_coef: float = 0.1
  value_clip: float = 0.2

  def __post_init__(self):
    check_field_types(self, "rl")
    choices = {"algorithm": RL_ALGORITHMS, "baseline": alignment_losses.Baseline.__args__,
               "kl_estimator": alignment_losses.KlEstimator.__args__}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ConfigError(f"rl.{name}={getattr(self, name)!r}; choose one of {list(allowed)}.")
    if self.group_size < 2:
      raise ConfigError(f"rl.group_size must be at least 2 (advantages compare the "
                        f"completions of a prompt), got {self.group_size}.")
    if not self.temperature > 0:
      raise ConfigError(f"rl.temperature must be positive (on-policy RL samples), got "
                        f"{self.temperature}.")
    check_positive("rl", max_new_tokens=self.max_new_tokens,
                   updates_per_batch=self.updates_per_batch, eval_prompts=self.eval_prompts)
    if not (0 < self.gamma <= 1 and 0 <= self.lam <= 1 and self.value_coef >= 0
            and self.value_clip > 0):
      raise ConfigError(f"rl.gamma must be in (0, 1], rl.lam in [0, 1], rl.value_coef >= 0 "
                        f"and rl.value_clip > 0; got {self.gamma}, {self.lam}, "
                        f"{self.value_coef}, {self.value_clip}.")
    if self.kl_beta < 0 or not 0 < self.clip_epsilon < 1:
      raise ConfigError(f"rl.kl_beta must be >= 0 and rl.clip_epsilon in (0, 1); got "
                        f"{self.kl_beta} and {self.clip_epsilon}.")


# The spec's sections and the gin names that bind them (gin_utils registers them so).
SECTIONS: dict[str, tuple[str, type]] = {
    "model": ("TransformerConfig", TransformerConfig),
    "optimizer": ("make_optimizer", OptimizerConfig),
    "schedule": ("make_schedule", ScheduleConfig),
    "run": ("train", RunConfig),
}
# Sections present only when bound: `lora.*` makes the run train LoRA adapters over a
# frozen base (train.init_checkpoint) instead of every parameter.
# `preference.*` makes it a preference-optimization run (PreferenceConfig).
OPTIONAL_SECTIONS: dict[str, tuple[str, type]] = {"lora": ("lora", LoraConfig),
                                                  "preference": ("preference",
                                                                 PreferenceConfig),
                                                  "rl": ("rl", RLConfig)}
KNOBS = frozenset(f"{gin_name}.{field.name}"
                  for gin_name, cls in (*SECTIONS.values(), *OPTIONAL_SECTIONS.values())
                  for field in dataclasses.fields(cls))

# Knobs that may differ on resume without being asked for: they change where, how long,
# how often or on what hardware layout the run goes on, or the learning rate from here
# on, not the model, the data or the optimizer's state. Each change is still printed and
# recorded. Any other difference is refused unless named in train.allow_changes.
MAY_CHANGE_ON_RESUME = frozenset({
    "train.model_dir", "train.train_steps", "train.microbatches", "train.log_every",
    "train.eval_every", "train.eval_steps", "train.checkpoint_every", "train.keep_checkpoints",
    "train.init_checkpoint", "train.nan_policy", "train.max_consecutive_skips",
    "train.peak_flops_per_device", "train.allow_changes", "train.profile_start_step",
    "train.profile_steps", "train.keep_steps", "preference.kl_prompts",
    "preference.kl_max_new_tokens",
    *(f"make_schedule.{field.name}" for field in dataclasses.fields(ScheduleConfig)),
    *(f"TransformerConfig.{name}" for name in LAYOUT_KNOBS),
})


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """The configs of a training run (the mesh is chosen separately: it may change).

  `lora` set: the run trains LoRA adapters over the frozen parameters of
  `run.init_checkpoint` (the base), in the unscanned layout.
  """
  model: TransformerConfig
  optimizer: OptimizerConfig
  schedule: ScheduleConfig
  run: RunConfig
  lora: Optional[LoraConfig] = None
  preference: Optional[PreferenceConfig] = None
  rl: Optional[RLConfig] = None

  def __post_init__(self):
    problem = mup.check(self.model, self.optimizer.name)
    if problem:
      raise ConfigError(problem)
    if self.lora is not None and not self.run.init_checkpoint:
      raise ConfigError("LoRA adapts a pretrained model: set CHECKPOINT_PATH (train."
                        "init_checkpoint) to the MODEL_DIR of the base model.")
    if self.run.fork_step is not None:
      self._check_fork()
    if self.preference is not None and self.run.fork_from:
      raise ConfigError("a preference run cannot be a cooldown branch (train.fork_from): its "
                        "reference is the model it starts from.")
    if self.rl is not None:
      if self.preference is not None or self.lora is not None or self.run.fork_from:
        raise ConfigError("an RL run (rl.*) cannot also be a preference run, a LoRA run or a "
                          "cooldown branch; bind one of them.")
      if (self.rl.algorithm == "ppo") != (self.model.head == "value"):
        raise ConfigError(
            "PPO trains a value head beside the policy: set TransformerConfig.head='value' "
            "(from a language model's checkpoint add train.allow_changes="
            "['TransformerConfig.head']); GRPO needs none (head 'lm')."
            if self.rl.algorithm == "ppo" else
            f"rl.algorithm='grpo' trains a language-model head, not "
            f"TransformerConfig.head={self.model.head!r}; use rl.algorithm='ppo' for a value "
            "head.")
      if not self.run.init_checkpoint:
        raise ConfigError("RL improves a model that can already answer: set CHECKPOINT_PATH "
                          "(train.init_checkpoint) to its MODEL_DIR (e.g. an SFT run); it is "
                          "also the reference of the KL penalty.")
    if self.model.head == "value" and self.rl is None:
      raise ConfigError("TransformerConfig.head='value' is PPO's critic: train it in an RL run "
                        "with rl.algorithm='ppo'.")
    reward_model = self.preference is not None and self.preference.trains_reward_model
    if self.model.head != "value" and reward_model != (self.model.head == "reward"):
      raise ConfigError(
          "a reward model (TransformerConfig.head='reward') trains with "
          "preference.loss='bradley_terry', and that loss needs that head: set both (from a "
          "language model's checkpoint add train.allow_changes=['TransformerConfig.head'])."
          if reward_model or self.preference is not None else
          "TransformerConfig.head='reward' is a reward model: train it on preference pairs "
          "with preference.loss='bradley_terry' (gin/runs/reward_model.gin).")
    if self.preference is not None and self.preference.needs_reference and not (
        self.run.init_checkpoint):
      raise ConfigError(f"preference.loss={self.preference.loss!r} compares the policy with "
                        "the model it starts from: set CHECKPOINT_PATH (train.init_checkpoint) "
                        "to that MODEL_DIR (e.g. an SFT run), or use the reference-free "
                        "preference.loss='simpo'.")
    if self.lora is not None and self.model.scan_layers:
      raise ConfigError("LoRA needs the unscanned layout: set TransformerConfig.scan_layers="
                        "False (checkpoints store one layout, so a scanned run's base loads), "
                        "on a mesh without pipeline stages (they need the scanned one).")

  def _check_fork(self) -> None:
    fork, schedule = self.run.fork_step, self.schedule
    if schedule.name != "wsd":
      raise ConfigError("a cooldown branch (train.fork_from) needs make_schedule.name='wsd': "
                        f"its stable phase is what it shares, and {schedule.name!r} has none.")
    stable_end = schedule.stable_end(self.run.train_steps)
    if not schedule.warmup_steps <= fork <= stable_end:
      raise ConfigError(f"train.fork_step={fork} lies outside this run's stable phase (steps "
                        f"{schedule.warmup_steps} ... {stable_end}: after warmup, before the "
                        f"decay of the last {schedule.decay_fraction} of {self.run.train_steps}"
                        " steps); fork later, or train longer.")

  def to_json(self) -> dict[str, dict[str, Any]]:
    """{gin name: {field: value}}: what spec.json holds (optional sections when set)."""
    sections = {**SECTIONS, **OPTIONAL_SECTIONS}
    return {sections[name][0]: _jsonable(dataclasses.asdict(getattr(self, name)))
            for name in sections if getattr(self, name) is not None}

  @classmethod
  def from_json(cls, record: Mapping[str, Mapping[str, Any]]) -> "TrainSpec":
    """The spec recorded by `to_json` (fields added since then take their defaults)."""
    sections = {**SECTIONS, **OPTIONAL_SECTIONS}
    return cls(**{name: config_from_json(config_cls, record[gin_name])
                  for name, (gin_name, config_cls) in sections.items() if gin_name in record})


def config_from_json(cls: type, values: Mapping[str, Any]) -> Any:
  """A config dataclass from its recorded fields, ignoring fields it no longer has."""
  names = {field.name for field in dataclasses.fields(cls)}
  return cls(**{key: (tuple(value) if key == "allow_changes" else value)
                for key, value in values.items() if key in names})


def _jsonable(values: dict) -> dict:
  return {key: list(value) if isinstance(value, tuple) else value
          for key, value in values.items()}


def differences(recorded: Mapping[str, Mapping[str, Any]],
                current: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[Any, Any]]:
  """{knob: (recorded value, current value)} for every knob that differs between two
  `to_json` records (a knob missing from the older record is not a difference; an
  optional section in one record and not the other is, under the section's name)."""
  changed = {}
  for gin_name, _ in OPTIONAL_SECTIONS.values():
    if (gin_name in recorded) != (gin_name in current):
      changed[gin_name] = (recorded.get(gin_name), current.get(gin_name))
  for section, values in current.items():
    for key, value in values.items():
      old = recorded.get(section, {}).get(key, value)
      if _normal(old) != _normal(value):
        changed[f"{section}.{key}"] = (old, value)
  return changed


def _normal(value: Any) -> Any:
  """JSON round trips turn tuples into lists and int keys into strings; compare as JSON."""
  if isinstance(value, (list, tuple)):
    return [_normal(v) for v in value]
  if isinstance(value, Mapping):
    return {str(k): _normal(v) for k, v in value.items()}
  return value


def refused_changes(changed: Mapping[str, tuple[Any, Any]],
                    allowed: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
  """The differences that resuming must refuse: not free, not explicitly allowed."""
  return {knob: values for knob, values in changed.items()
          if knob not in MAY_CHANGE_ON_RESUME and knob not in allowed}
