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


def validation_prompts(pairs: list[preference.TokenizedPair], count: int) -> list[list[int]]:
  """The first `count` distinct tokenized prompts (with EOS) of `pairs`."""
  prompts = list(dict.fromkeys(pair.prompt for pair in pairs))
  return [list(prompt) for prompt in prompts[:count]]


def evaluator(spec: TrainSpec, vocabulary: seqio.Vocabulary
              ) -> Optional[Callable[[Transformer, list], dict[str, float]]]:
  """What train.py hands the trainer as `evaluate_policy` for a preference run that
  measures its KL (PreferenceConfig.measures_kl); None for any other run. The trainer
  gives it the policy and the run's validation pairs at each evaluation."""
  if spec.preference is None or not spec.preference.measures_kl:
    return None
  config = spec.preference

  # Loaded at the first evaluation, after the trainer has checked the checkpoint (and
  # said what to fix if it is wrong).
  reference = functools.cache(lambda: loading.load_model(spec.run.init_checkpoint))

  def evaluate(policy: Transformer, pairs: list[preference.TokenizedPair]
               ) -> dict[str, float]:
    measured = alignment_eval.policy_kl(
        policy, reference(), validation_prompts(pairs, config.kl_prompts),
        eos_id=vocabulary.eos_id, max_new_tokens=config.kl_max_new_tokens,
        seed=spec.run.seed)
    return {"kl": measured.kl, "kl_stderr": measured.kl_stderr,
            "sample_length": float(np.mean([len(c) for c in measured.completions]))}
  return evaluate
