"""The one function the trainer calls for data: a task name in, numpy batches out.

Batches are deterministic for a seed, each host reads a disjoint shard
(seqio.ShardInfo: file-level when the corpus has enough files, example-level
otherwise), and the iterator's position can be saved and restored exactly:
the tf.data iterator state (shuffle buffers, packing state, position in
every file) is checkpointed with tf.train.Checkpoint, as T5X does, next to a
description of the pipeline so a checkpoint cannot be resumed on different
data by mistake.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from t5x_lite.data import mixtures
from t5x_lite.data.providers import DataError, data_fingerprints, get_task  # noqa: F401
from t5x_lite.models import architectures

_STATE_FILE = "pipeline.json"
_TF_CHECKPOINT = "iterator"


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Everything that determines the batch stream; saved with the iterator state."""
  task: str
  feature_lengths: Mapping[str, int]
  split: str
  batch_size: int
  architecture: str
  shard_index: int = 0
  num_shards: int = 1
  seed: int = 0
  shuffle: bool = True
  num_epochs: Optional[int] = None
  pack: bool = True

  def to_json(self) -> dict:
    return dict(dataclasses.asdict(self), feature_lengths=dict(self.feature_lengths))


class BatchIterator(Iterator[dict[str, np.ndarray]]):
  """Numpy batches of model features with `save(directory)` / `restore(directory)`.

  `position` counts the batches handed out. A final partial batch (finite
  epochs) is padded with all-zero examples, which carry zero loss weight.
  """

  def __init__(self, spec: DataSpec, dataset: tf.data.Dataset, per_host_batch: int):
    self.spec = spec
    self.per_host_batch = per_host_batch
    self.position = 0
    self._iterator = iter(dataset)
    self._checkpoint = tf.train.Checkpoint(iterator=self._iterator)

  def __next__(self) -> dict[str, np.ndarray]:
    batch = {key: value.numpy() for key, value in next(self._iterator).items()}
    self.position += 1
    missing = self.per_host_batch - next(iter(batch.values())).shape[0]
    if missing:
      batch = {k: np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}
    return batch

  def save(self, directory: str) -> None:
    """Writes the exact position (tf.data state + batches drawn) into `directory`."""
    os.makedirs(directory, exist_ok=True)
    self._checkpoint.write(os.path.join(directory, _TF_CHECKPOINT))
    with open(os.path.join(directory, _STATE_FILE), "w") as handle:
      json.dump({"spec": self.spec.to_json(), "position": self.position}, handle, indent=1)

  def restore(self, directory: str) -> None:
    """Continues from a position saved by an iterator over the same DataSpec."""
    # A missing or damaged file raises as it is: the checkpoint layer treats that step as
    # unreadable and falls back to an earlier one. A different pipeline is a user error.
    with open(os.path.join(directory, _STATE_FILE)) as handle:
      saved = json.load(handle)
    if saved["spec"] != self.spec.to_json():
      changed = sorted(k for k in saved["spec"] if saved["spec"][k] != self.spec.to_json().get(k))
      raise DataError(f"the saved data position in {directory} belongs to a different pipeline "
                      f"(differs in {changed}); restore with the same data settings or start "
                      "the data from scratch.")
    self._checkpoint.read(os.path.join(directory, _TF_CHECKPOINT)).assert_consumed()
    self.position = saved["position"]


def _with_prefix_mask(spec: architectures.Architecture,
                      dataset: tf.data.Dataset) -> tf.data.Dataset:
  """A prefix decoder fed a targets-only (full LM) task sees an empty prefix: causal."""
  if ("decoder_causal_attention" not in spec.features
      or "decoder_causal_attention" in dataset.element_spec):
    return dataset
  return dataset.map(lambda ex: dict(
      ex, decoder_causal_attention=tf.zeros_like(ex["decoder_target_tokens"])))


def check_splits(task: str) -> None:
  """Reads, now, what a task's sources can check cheaply before training (supervised rows:
  both splits non-empty), so a bad split is refused at start-up, not at the first
  evaluation."""
  provider = get_task(task)
  for member in provider.tasks if isinstance(provider, seqio.Mixture) else [provider]:
    check = getattr(member.source, "check_splits", None)
    if callable(check):
      check()


def check_vocabulary(task: str, vocab_size: int) -> None:
  """Refuses a task whose token ids do not fit a model of `vocab_size` embeddings."""
  for name, feature in get_task(task).output_features.items():
    if feature.vocabulary.vocab_size > vocab_size:
      raise DataError(
          f"task {task!r} feature {name!r} uses {feature.vocabulary.vocab_size} token ids but "
          f"TransformerConfig.vocab_size is {vocab_size}; use a task whose vocabulary fits, or "
          f"set vocab_size >= {feature.vocabulary.vocab_size} (rounded up to a multiple of "
          "128).")


def get_batches(task: str, feature_lengths: Mapping[str, int], split: str, batch_size: int,
                architecture: str, shard: Optional[seqio.ShardInfo] = None, seed: int = 0,
                shuffle: Optional[bool] = None, num_epochs: Optional[int] = None,
                pack: bool = True) -> BatchIterator:
  """Batches of `task` for one host.

  Args:
    task: a registered seqio task or mixture, e.g. "pydocs.span_corruption".
    feature_lengths: task feature lengths, e.g. {"inputs": 512, "targets": 114}.
    split: "train" or "validation".
    batch_size: the global batch size; each of shard.num_shards hosts gets an equal part.
    architecture: TransformerConfig.architecture; its spec picks the seqio feature
      converter and the features (models/architectures.py).
    shard: this host's shard; None for a single host.
    seed: fixes shuffling and every objective's random choices.
    shuffle: defaults to True for "train" and False otherwise.
    num_epochs: None repeats forever (training); 1 for one pass (evaluation).
    pack: pack several examples per row (seqio packing with segment ids/positions).
  """
  shard = shard or seqio.ShardInfo(index=0, num_shards=1)
  if batch_size % shard.num_shards:
    raise DataError(f"batch size {batch_size} does not divide over {shard.num_shards} hosts; "
                    "choose a multiple of the number of hosts.")
  provider = mixtures.mixture_for_lengths(task, feature_lengths)
  if split not in provider.splits:
    raise DataError(f"task {task!r} has no split {split!r}; it has {list(provider.splits)}.")
  spec = DataSpec(task=task, feature_lengths=dict(feature_lengths), split=split,
                  batch_size=batch_size, architecture=architecture, shard_index=shard.index,
                  num_shards=shard.num_shards, seed=seed,
                  shuffle=split == "train" if shuffle is None else shuffle,
                  num_epochs=num_epochs, pack=pack)
  if architecture not in architectures.ARCHITECTURES:
    raise DataError(f"unknown architecture {architecture!r}; choose from "
                    f"{list(architectures.ARCHITECTURES)}.")
  arch = architectures.get(architecture)
  converter = arch.feature_converter(pack)
  if arch.has_encoder and "inputs" not in feature_lengths:
    raise DataError(f"the encoder-decoder needs an inputs length; task {task!r} got "
                    f"{dict(feature_lengths)} (use a span_corruption or prefix_lm task).")
  dataset = seqio.get_dataset(provider, dict(feature_lengths), converter, dataset_split=split,
                              shuffle=spec.shuffle, num_epochs=num_epochs, shard_info=shard,
                              verbose=False, seed=seed)
  dataset = _with_prefix_mask(arch, dataset)
  per_host_batch = batch_size // shard.num_shards
  dataset = dataset.batch(per_host_batch, drop_remainder=False).prefetch(tf.data.AUTOTUNE)
  return BatchIterator(spec, dataset, per_host_batch)
