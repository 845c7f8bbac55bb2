"""How far an aligned policy moved from its reference, and whether it moved the right way.

`policy_kl(policy, reference, prompts)` is the KL part alone (a preference run measures
it at each evaluation). `compare_policies(policy, reference, prompts, judge)` samples a
completion per prompt from each model (the project's sampler, same temperature and seed),
then reports:

- the policy's KL to the reference on these prompts: the mean over the policy's samples
  of log pi(y | x) - log ref(y | x) (the k1 estimator at the sequence level: unbiased for
  KL(pi || ref); its standard error beside it);
- the win rate of the policy's completion over the reference's under `judge` (a function
  of (prompt, completion) -> score, e.g. a rule that checks a property, or a trained
  reward model's `RewardScorer.score`), ties counting one half;
- mean judge scores and completion lengths of both.

DPO's promise, measured as its paper does: a higher win rate at a bounded KL.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import seqio

from t5x_lite.inference import decoding, textio
from t5x_lite.models import Transformer

Judge = Callable[[Sequence[str], Sequence[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Comparison:
  kl: float
  kl_stderr: float
  win_rate: float
  policy_score: float
  reference_score: float
  policy_length: float
  reference_length: float
  policy_completions: list[str]
  reference_completions: list[str]

  def summary(self) -> dict[str, float]:
    return {k: v for k, v in dataclasses.asdict(self).items() if not isinstance(v, list)}


def _completions(tokens_BxN: np.ndarray, eos_id: int) -> list[list[int]]:
  """Each row up to and including its EOS (0s after EOS are padding)."""
  rows = []
  for row in tokens_BxN.tolist():
    cut = row.index(eos_id) + 1 if eos_id in row else len(row)
    rows.append(row[:cut])
  return rows


@dataclasses.dataclass(frozen=True)
class PolicyKL:
  """KL(pi || ref) on the policy's own samples, and those samples."""
  kl: float
  kl_stderr: float
  completions: list[list[int]]  # each up to and including its EOS


def policy_kl(policy: Transformer, reference: Transformer, prompts: Sequence[Sequence[int]],
              *, eos_id: int, max_new_tokens: int, temperature: float = 1.0, seed: int = 0
              ) -> PolicyKL:
  """Samples one completion per tokenized prompt (ending in EOS) from `policy` and
  estimates KL(pi || ref) as the mean over them of log pi(y|x) - log ref(y|x) (the k1
  estimator at the sequence level), with its standard error."""
  if not prompts:
    raise decoding.DecodingError("policy_kl needs at least one prompt.")
  out = decoding.generate(policy, textio.padded(prompts), max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=seed, eos_id=eos_id)
  completions = _completions(out.tokens, eos_id)
  kept = [i for i, tokens in enumerate(completions) if tokens]
  if not kept:
    return PolicyKL(0.0, 0.0, completions)
  scored = ([prompts[i] for i in kept], [completions[i] for i in kept])
  log_ratio = (np.asarray(decoding.score(policy, *scored)[0], np.float64)
               - np.asarray(decoding.score(reference, *scored)[0], np.float64))
  stderr = (float(log_ratio.std(ddof=1) / np.sqrt(len(log_ratio))) if len(log_ratio) > 1
            else 0.0)
  return PolicyKL(float(log_ratio.mean()), stderr, completions)


def compare_policies(policy: Transformer, reference: Transformer, prompts: Sequence[str],
                     judge: Judge, vocabulary: seqio.Vocabulary, *, max_new_tokens: int,
                     temperature: float = 1.0, seed: int = 0) -> Comparison:
  """Samples one completion per prompt from each model and compares them (module doc).
  Prompts end in EOS, as preference pairs are laid out in training."""
  if not prompts:
    raise decoding.DecodingError("compare_policies needs at least one prompt.")
  eos = vocabulary.eos_id
  encoded = [list(vocabulary.encode(prompt)) + [eos] for prompt in prompts]
  measured = policy_kl(policy, reference, encoded, eos_id=eos, max_new_tokens=max_new_tokens,
                       temperature=temperature, seed=seed)
  out = decoding.generate(reference, textio.padded(encoded), max_new_tokens=max_new_tokens,
                          temperature=temperature, seed=seed, eos_id=eos)
  sampled = {"policy": measured.completions, "reference": _completions(out.tokens, eos)}
  texts = {name: [vocabulary.decode([t for t in tokens if t != eos]) for tokens in rows]
           for name, rows in sampled.items()}
  scores = {name: np.asarray(judge(list(prompts), texts[name]), np.float64)
            for name in texts}
  wins = np.where(scores["policy"] > scores["reference"], 1.0,
                  np.where(scores["policy"] == scores["reference"], 0.5, 0.0))
  return Comparison(
      kl=measured.kl, kl_stderr=measured.kl_stderr,
      win_rate=float(wins.mean()), policy_score=float(scores["policy"].mean()),
      reference_score=float(scores["reference"].mean()),
      policy_length=float(np.mean([len(t) for t in sampled["policy"]])),
      reference_length=float(np.mean([len(t) for t in sampled["reference"]])),
      policy_completions=texts["policy"], reference_completions=texts["reference"])
