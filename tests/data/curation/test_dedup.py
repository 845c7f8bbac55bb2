"""MinHash's detection curve and error rates: the formulas against numerical integration,
and datatrove's signatures against the formula on pairs of known Jaccard similarity."""

import numpy as np
import pytest
from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupSignature
from scipy import integrate, stats

from t5x_lite.data.curation import dedup, eval_sets


def test_threshold_and_error_rates_equal_their_integrals():
  rates = dedup.minhash_rates(bands=14, rows=8)
  assert rates.threshold == pytest.approx((1 / 14) ** (1 / 8))
  curve = lambda s: dedup.candidate_probability(s, 14, 8)  # noqa: E731
  fp = integrate.quad(curve, 0, rates.threshold)[0] / rates.threshold
  fn = integrate.quad(lambda s: 1 - curve(s), rates.threshold, 1)[0] / (1 - rates.threshold)
  assert rates.false_positive_rate == pytest.approx(fp, rel=1e-6)
  assert rates.false_negative_rate == pytest.approx(fn, rel=1e-6)
  assert curve(0.0) == 0 and curve(1.0) == 1
  # More rows sharpen the curve: fewer false positives at the same bands.
  assert dedup.minhash_rates(14, 12).false_positive_rate < rates.false_positive_rate


def pair(rng, similarity: float, size: int = 400):
  """Two shingle sets (uint64 hashes) with Jaccard similarity `similarity`."""
  shared = round(2 * size * similarity / (1 + similarity))
  values = rng.integers(0, 2**63, size=shared + 2 * (size - shared), dtype=np.uint64)
  a = values[:size]
  b = np.concatenate([values[:shared], values[size:size + size - shared]])
  assert len(np.intersect1d(a, b)) / len(np.union1d(a, b)) == pytest.approx(similarity, abs=0.01)
  return a.reshape(-1, 1), b.reshape(-1, 1)


@pytest.mark.parametrize("similarity", [0.3, 0.6, 0.72, 0.85, 0.95])
def test_datatrove_signatures_find_pairs_at_the_rate_theory_gives(similarity, tmp_path):
  rng = np.random.default_rng(int(similarity * 100))
  trials = 300
  found = 0
  for seed in range(trials):
    step = MinhashDedupSignature(str(tmp_path), MinhashConfig(seed=seed,
                                                              hash_config=eval_sets.HASH))
    a, b = pair(rng, similarity)
    found += any(x == y for x, y in zip(step.get_signature(a), step.get_signature(b)))
  expected = dedup.candidate_probability(similarity, 14, 8)
  low, high = stats.binom.ppf([0.0005, 0.9995], trials, expected)
  assert low <= found <= high, (found, expected * trials)
