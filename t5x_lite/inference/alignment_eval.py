"""How far an aligned policy moved from its reference, and whether it moved the right way.

`compare_policies(policy, reference, prompts, judge)` samples a completion per prompt
from each model (the project's sampler, same temperature and seed), then reports:

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

from t5x_lite.inference import decoding
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


def compare_policies(policy: Transformer, reference: Transformer, prompts: Sequence[str],
                     judge: Judge, vocabulary: seqio.Vocabulary, *, max_new_tokens: int,
                     temperature: float = 1.0, seed: int = 0) -> Comparison:
  """Samples one completion per prompt from each model and compares them (module doc).
  Prompts end in EOS, as preference pairs are laid out in training."""
  if not prompts:
    raise decoding.DecodingError("compare_policies needs at least one prompt.")
  eos = vocabulary.eos_id
  encoded = [list(vocabulary.encode(prompt)) + [eos] for prompt in prompts]
  width = max(map(len, encoded))
  inputs = np.zeros((len(encoded), width), np.int32)
  for row, tokens in enumerate(encoded):
    inputs[row, :len(tokens)] = tokens
  sampled = {}
  for name, model in (("policy", policy), ("reference", reference)):
    out = decoding.generate(model, inputs, max_new_tokens=max_new_tokens,
                            temperature=temperature, seed=seed, eos_id=eos)
    sampled[name] = _completions(out.tokens, eos)
  # KL on the policy's own samples: log pi(y|x) - log ref(y|x).
  kept = [i for i, tokens in enumerate(sampled["policy"]) if tokens]
  policy_logps = decoding.score(policy, [encoded[i] for i in kept],
                                [sampled["policy"][i] for i in kept])[0]
  reference_logps = decoding.score(reference, [encoded[i] for i in kept],
                                   [sampled["policy"][i] for i in kept])[0]
  log_ratio = np.asarray(policy_logps, np.float64) - np.asarray(reference_logps, np.float64)
  texts = {name: [vocabulary.decode([t for t in tokens if t != eos]) for tokens in rows]
           for name, rows in sampled.items()}
  scores = {name: np.asarray(judge(list(prompts), texts[name]), np.float64)
            for name in texts}
  wins = np.where(scores["policy"] > scores["reference"], 1.0,
                  np.where(scores["policy"] == scores["reference"], 0.5, 0.0))
  stderr = float(log_ratio.std(ddof=1) / np.sqrt(len(log_ratio))) if len(log_ratio) > 1 else 0.0
  return Comparison(
      kl=float(log_ratio.mean()) if len(log_ratio) else 0.0, kl_stderr=stderr,
      win_rate=float(wins.mean()), policy_score=float(scores["policy"].mean()),
      reference_score=float(scores["reference"].mean()),
      policy_length=float(np.mean([len(t) for t in sampled["policy"]])),
      reference_length=float(np.mean([len(t) for t in sampled["reference"]])),
      policy_completions=texts["policy"], reference_completions=texts["reference"])
