"""A preference run's KL to its reference, measured at each evaluation.

DPO's loss moves the policy's log-probabilities of the training pairs; what it costs in
distance from the reference shows on the policy's own samples. At each evaluation the
policy samples one completion (temperature 1, the run's seed) for each of the first
`preference.kl_prompts` distinct validation prompts, and the KL is the mean over them of
log pi(y|x) - log ref(y|x) (inference/alignment_eval.policy_kl), logged as `kl` and
`kl_stderr` beside TRL's rewards/* metrics. The reference is train.init_checkpoint's
model (a LoRA run's base, i.e. its adapters off), loaded once for this; the cached
reference log-probabilities the loss uses cannot score new samples.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import numpy as np
import seqio

from t5x_lite.data import preference
from t5x_lite.inference import alignment_eval
from t5x_lite.models import Transformer
from t5x_lite.runs import loading
from t5x_lite.runs.spec import TrainSpec


def validation_prompts(spec: TrainSpec, vocabulary: seqio.Vocabulary) -> list[list[int]]:
  """The first preference.kl_prompts distinct tokenized validation prompts (with EOS)."""
  pairs, _ = preference.read_pairs(preference.registered(), "validation", vocabulary,
                                   spec.run.feature_lengths)
  prompts = list(dict.fromkeys(pair.prompt for pair in pairs))
  return [list(prompt) for prompt in prompts[:spec.preference.kl_prompts]]


def evaluator(spec: TrainSpec, vocabulary: seqio.Vocabulary
              ) -> Optional[Callable[[Transformer], dict[str, float]]]:
  """What train.py hands the trainer as `evaluate_policy` for a preference run that
  measures its KL (PreferenceConfig.measures_kl); None for any other run."""
  if spec.preference is None or not spec.preference.measures_kl:
    return None
  config = spec.preference

  # Read at the first evaluation, after the trainer has checked the data and the
  # checkpoint (and said what to fix if they are wrong).
  @functools.cache
  def prompts_and_reference() -> tuple[list[list[int]], Transformer]:
    return (validation_prompts(spec, vocabulary),
            loading.load_model(spec.run.init_checkpoint))

  def evaluate(policy: Transformer) -> dict[str, float]:
    prompts, reference = prompts_and_reference()
    measured = alignment_eval.policy_kl(
        policy, reference, prompts, eos_id=vocabulary.eos_id,
        max_new_tokens=config.kl_max_new_tokens, seed=spec.run.seed)
    return {"kl": measured.kl, "kl_stderr": measured.kl_stderr,
            "sample_length": float(np.mean([len(c) for c in measured.completions]))}
  return evaluate
