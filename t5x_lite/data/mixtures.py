"""Weighted pretraining mixtures with epoch accounting (GPT-3 Table 2.2, LLaMA Table 1).

A `WeightedMixture` names seqio tasks and their weights: each source's share of the
*tokens* trained on, as GPT-3's and LLaMA's tables state their mixes. seqio samples
examples, not tokens, so the sampling rate of each source is its weight divided by its
mean tokens per example, measured once per source and feature lengths (one pass over a
local corpus's training split, cached next to the corpora; a source without a local
corpus, e.g. TFDS C4, is measured on its first examples and its epoch size is unknown).

`accounting(task, lengths, tokens)` is the per-source table for a number of tokens
trained: tokens seen (the weight's share), share of the mix, epochs elapsed (tokens seen
over the source's tokens per epoch) and whether it passes the mixture's `max_epochs`
(Muennighoff et al. 2023: repeating data past about 4 epochs stops paying). The trainer
prints it at the start (for the planned tokens) and at the end (for the tokens trained).
Tokens are sequence positions, as the trainer counts them for tokens/s and FLOPs, so
packing's padding (a few percent) is attributed to the sources in proportion.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Mapping, Optional

import seqio
import tensorflow as tf

from t5x_lite.data import corpus_store
from t5x_lite.data.providers import DataError, data_fingerprints, get_task

# A source without a local corpus is measured on this many examples (its mean only).
SAMPLE_EXAMPLES = 2000


@dataclasses.dataclass(frozen=True)
class WeightedMixture:
  """A pretraining mix: {seqio task: weight}, weights being token shares (normalized).

  Attributes:
    name: the mixture's task name (MIXTURE_OR_TASK_NAME).
    sources: {registered task: weight >= 0}; weights need not sum to 1.
    max_epochs: warn when a source is repeated more than this many epochs.
  """
  name: str
  sources: Mapping[str, float]
  max_epochs: float = 4.0

  def __post_init__(self):
    if not self.sources:
      raise DataError(f"mixture {self.name!r} has no sources; bind mixture.sources to "
                      "{'task': weight, ...}.")
    bad = {task: w for task, w in self.sources.items()
           if not isinstance(w, (int, float)) or w < 0}
    if bad or sum(self.sources.values()) <= 0:
      raise DataError(f"mixture {self.name!r}: weights must be non-negative numbers with a "
                      f"positive sum; got {dict(self.sources)}.")
    if self.max_epochs <= 0:
      raise DataError(f"mixture {self.name!r}: max_epochs must be positive, got "
                      f"{self.max_epochs}.")

  @property
  def shares(self) -> dict[str, float]:
    """Each source's share of the tokens (the weights normalized)."""
    total = sum(self.sources.values())
    return {task: weight / total for task, weight in self.sources.items()}


@dataclasses.dataclass(frozen=True)
class SourceSize:
  """What one pass over a source's training split holds at given feature lengths."""
  examples: Optional[int]  # None: not measured to the end (no local corpus)
  tokens: Optional[int]
  mean_tokens: float  # per example: inputs + targets after trimming


@dataclasses.dataclass(frozen=True)
class SourceAccount:
  """One row of the mixture table."""
  task: str
  weight: float  # share of the tokens
  tokens_seen: float
  tokens_per_epoch: Optional[int]
  max_epochs: float

  @property
  def epochs(self) -> Optional[float]:
    return self.tokens_seen / self.tokens_per_epoch if self.tokens_per_epoch else None

  @property
  def over_repeated(self) -> bool:
    return self.epochs is not None and self.epochs > self.max_epochs


_MIXTURES: dict[str, WeightedMixture] = {}


def register(mixture: WeightedMixture) -> str:
  """Registers `mixture` with seqio under its name (re-registering replaces it); returns
  the name. The sources must be registered tasks with the same output features."""
  for task in mixture.sources:
    get_task(task)  # a DataError naming the unknown source
  seqio.MixtureRegistry.remove(mixture.name)
  try:
    # Registered at the token weights so the name resolves (features, splits, corpora);
    # batches use the calibrated rates (mixture_for_lengths).
    seqio.MixtureRegistry.add(mixture.name, list(mixture.shares.items()))
  except ValueError as error:
    raise DataError(f"mixture {mixture.name!r}: {error}") from None
  _MIXTURES[mixture.name] = mixture
  return mixture.name


def weighted(task: str) -> Optional[WeightedMixture]:
  """The WeightedMixture registered as `task`, None for a task or plain seqio mixture."""
  return _MIXTURES.get(task)


def _tokens_per_example(feature_lengths: Mapping[str, int]):
  def count(example):
    return sum(tf.size(example[key], out_type=tf.int64) for key in feature_lengths
               if key in example)
  return count


def source_size(task: str, feature_lengths: Mapping[str, int]) -> SourceSize:
  """Examples and tokens in one pass over `task`'s training split at `feature_lengths`
  (after the task's trimming); cached per corpus fingerprint and lengths for local
  corpora, the mean of the first SAMPLE_EXAMPLES examples for others."""
  lengths = dict(sorted(feature_lengths.items()))
  provider = get_task(task)
  fingerprints = data_fingerprints(task)
  if not fingerprints:
    dataset = provider.get_dataset(lengths, split="train", shuffle=False, num_epochs=1)
    sizes = list(dataset.take(SAMPLE_EXAMPLES).map(_tokens_per_example(lengths))
                 .as_numpy_iterator())
    if not sizes:
      raise DataError(f"mixture source {task!r} has no training examples.")
    return SourceSize(None, None, sum(sizes) / len(sizes))
  key = hashlib.sha256(json.dumps([task, fingerprints, lengths]).encode()).hexdigest()[:16]
  path = os.path.join(corpus_store.cache_root(), "mixture_sources", f"{key}.json")
  if os.path.exists(path):
    with open(path) as handle:
      return SourceSize(**json.load(handle))
  dataset = provider.get_dataset(lengths, split="train", shuffle=False, num_epochs=1, seed=0)
  examples, tokens = dataset.map(lambda ex: (tf.constant(1, tf.int64),
                                             _tokens_per_example(lengths)(ex))).reduce(
      (tf.constant(0, tf.int64), tf.constant(0, tf.int64)),
      lambda total, x: (total[0] + x[0], total[1] + x[1]))
  examples, tokens = int(examples), int(tokens)
  if not examples:
    raise DataError(f"mixture source {task!r} has no training examples.")
  size = SourceSize(examples, tokens, tokens / examples)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as handle:
    json.dump(dataclasses.asdict(size), handle)
  os.replace(tmp, path)  # readers see the whole file or none
  return size


def mixture_for_lengths(task: str, feature_lengths: Mapping[str, int]
                        ) -> seqio.DatasetProviderBase:
  """What batches of `task` are drawn from: for a WeightedMixture, an (unregistered)
  seqio.Mixture sampling each source at weight / mean tokens per example, so that its
  expected share of the tokens is its weight; any other task as registered."""
  mixture = weighted(task)
  if mixture is None:
    return get_task(task)
  rates = {source: share / source_size(source, feature_lengths).mean_tokens
           for source, share in mixture.shares.items() if share > 0}
  return seqio.Mixture(mixture.name, list(rates.items()))


def accounting(task: str, feature_lengths: Mapping[str, int], tokens: float
               ) -> Optional[list[SourceAccount]]:
  """Per source of a WeightedMixture: its tokens among `tokens` trained, and epochs; None
  for anything else."""
  mixture = weighted(task)
  if mixture is None:
    return None
  return [SourceAccount(source, share, share * tokens,
                        source_size(source, feature_lengths).tokens, mixture.max_epochs)
          for source, share in mixture.shares.items()]


def format_accounting(rows: list[SourceAccount], heading: str) -> str:
  """The GPT-3 / LLaMA style table, and a warning per over-repeated source."""
  width = max(len(row.task) for row in rows)
  lines = [heading, f"  {'source':<{width}}  {'share':>6}  {'tokens':>10}  "
                    f"{'epoch size':>10}  {'epochs':>7}"]
  for row in rows:
    epoch_size = f"{row.tokens_per_epoch:>10.4g}" if row.tokens_per_epoch else f"{'n/a':>10}"
    epochs = f"{row.epochs:>7.3g}" if row.epochs is not None else f"{'n/a':>7}"
    lines.append(f"  {row.task:<{width}}  {row.weight:>6.1%}  {row.tokens_seen:>10.4g}  "
                 f"{epoch_size}  {epochs}")
  for row in rows:
    if row.over_repeated:
      lines.append(f"warning: {row.task} is repeated {row.epochs:.1f} epochs, more than "
                   f"mixture.max_epochs={row.max_epochs:g} (returns from repeated data fall "
                   "off after about 4 epochs, Muennighoff et al. 2023); lower its weight, "
                   "add data or train on fewer tokens.")
  return "\n".join(lines)
