"""What document-level deduplication is set to find: the exact key, and MinHash LSH's
detection curve and its error rates.

MinHash with b bands of r rows makes two documents of Jaccard similarity s (over their
word n-gram shingles) a candidate pair with probability P(s) = 1 - (1 - s^r)^b (Leskovec,
Rajaraman and Ullman, "Mining of Massive Datasets", ch. 3.4). The curve's midpoint, the
similarity threshold, is about (1/b)^(1/r). Its error rates, as datasketch defines them
for choosing b and r: the false-positive rate is the mean of P(s) over dissimilar pairs
(s uniform below the threshold), the false-negative rate the mean of 1 - P(s) over
similar ones (s uniform above it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from datatrove.data import Document


def exact_key(doc: Document) -> str:
  """The exact-duplicate key: the text with whitespace runs collapsed (as corpus_store
  compares documents), so re-wrapped copies are duplicates too."""
  return " ".join(doc.text.split())


def candidate_probability(similarity, bands: int, rows: int):
  """P(a pair of Jaccard `similarity` shares a band) = 1 - (1 - s^r)^b."""
  return 1.0 - (1.0 - np.asarray(similarity, dtype=np.float64) ** rows) ** bands


@dataclasses.dataclass(frozen=True)
class MinhashRates:
  """MinHash LSH's threshold and expected error rates for b bands of r rows."""
  bands: int
  rows: int
  threshold: float
  false_positive_rate: float
  false_negative_rate: float

  def line(self) -> str:
    points = ", ".join(f"P({s})={candidate_probability(s, self.bands, self.rows):.3f}"
                       for s in (0.5, 0.7, 0.8, 0.9))
    return (f"MinHash {self.bands} bands x {self.rows} rows: similarity threshold "
            f"{self.threshold:.3f}; expected false-positive rate {self.false_positive_rate:.4f}, "
            f"false-negative rate {self.false_negative_rate:.4f}; {points}")


def minhash_rates(bands: int, rows: int, points: int = 10_001) -> MinhashRates:
  """The threshold and error rates of `bands` x `rows` (module docstring)."""
  threshold = (1.0 / bands) ** (1.0 / rows)
  below = np.linspace(0.0, threshold, points)
  above = np.linspace(threshold, 1.0, points)
  return MinhashRates(bands, rows, float(threshold),
                      float(np.trapezoid(candidate_probability(below, bands, rows), below)
                            / threshold),
                      float(np.trapezoid(1 - candidate_probability(above, bands, rows), above)
                            / (1 - threshold)))
