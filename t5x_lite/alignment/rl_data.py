"""The batches of an on-policy RL run: rollouts of the current policy, made as the loop
asks for them.

`RolloutBatches` is what the trainer iterates over in an `rl.*` run (train.py hands the
trainer its factory): before each step the loop gives it the policy's parameters
(`set_params`); every `rl.updates_per_batch` steps it draws the next BATCH_SIZE prompts of
the supervised rows (a fresh permutation each epoch, from the run's seed) and makes a
rollout of them (alignment/rollouts.py) with a seed of its own per rollout, so a resumed
run samples what the uninterrupted one sampled. Its position (and the rollout being
reused, if a checkpoint falls inside one) is saved and restored with the checkpoint.
`evaluate(params)` scores the first `rl.eval_prompts` validation prompts with greedy
decoding: the mean reward and the share of full-reward answers.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional

import numpy as np
import seqio
from flax import nnx

from t5x_lite.alignment import rewards as reward_functions
from t5x_lite.alignment.rollouts import rollout
from t5x_lite.common.errors import ConfigError
from t5x_lite.data import get_task
from t5x_lite.data.supervised import RowsSource
from t5x_lite.inference import decoding, textio
from t5x_lite.inference.reward import RewardScorer
from t5x_lite.models import Transformer
from t5x_lite.models.params import abstract_model
from t5x_lite.runs import loading
from t5x_lite.runs.spec import TrainSpec

_STATE = "rollouts.json"
_REUSED = "rollout.npz"


def judge_of(reward: str) -> Callable:
  """A reward function by name, or a trained reward model's MODEL_DIR as one."""
  if os.path.isdir(reward):
    scorer = RewardScorer(reward)
    return lambda prompts, completions, answers: scorer.score(prompts, completions)
  return reward_functions.get(reward)


def prompts_of(task: str, split: str) -> tuple[list[str], list[str]]:
  """(prompts, answers) of a supervised task's rows."""
  source = get_task(task).source
  if not isinstance(source, RowsSource):
    raise ConfigError(f"an RL run prompts with supervised rows: set MIXTURE_OR_TASK_NAME to "
                      f"'supervised' or 'supervised.byte' and bind supervised_data.train "
                      f"(got {task!r}).")
  return source.rows(split)


class RolloutBatches:
  """Rollout batches of the policy the loop last handed over (module doc)."""

  def __init__(self, spec: TrainSpec, vocabulary: seqio.Vocabulary,
               reference: Optional[Transformer], judge: Callable):
    self.spec, self.rl, self.vocabulary = spec, spec.rl, vocabulary
    self.prompts, self.answers = prompts_of(spec.run.task, "train")
    self.reference, self.judge = reference, judge
    self._graphdef = nnx.split(abstract_model(spec.model), nnx.Param)[0]
    self._params: Any = None
    self._current: Optional[dict[str, np.ndarray]] = None
    self.position = 0
    self.stats: dict[str, float] = {}

  def set_params(self, params: Any) -> None:
    self._params = params

  def _policy(self, params: Any) -> Transformer:
    return nnx.merge(self._graphdef, params)

  def _prompt_indices(self, rollout_index: int) -> np.ndarray:
    count, size = len(self.prompts), self.spec.run.batch_size
    first = rollout_index * size
    indices = []
    for position in range(first, first + size):
      epoch, offset = divmod(position, count)
      order = np.random.default_rng([self.spec.run.seed, epoch]).permutation(count)
      indices.append(order[offset])
    return np.asarray(indices)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.position % self.rl.updates_per_batch == 0 or self._current is None:
      if self._params is None:
        raise RuntimeError("RolloutBatches needs the policy's params (set_params) first")
      index = self.position // self.rl.updates_per_batch
      chosen = self._prompt_indices(index)
      made = rollout(self._policy(self._params), self.reference,
                     [self.prompts[i] for i in chosen], [self.answers[i] for i in chosen],
                     self.judge, self.vocabulary, dict(self.spec.run.feature_lengths),
                     self.rl, seed=self.spec.run.seed * 1_000_003 + index)
      self._current, self.stats = made.features, made.stats
    self.position += 1
    return dict(self._current)

  def evaluate(self, params: Any) -> dict[str, float]:
    """Greedy answers to the first rl.eval_prompts validation prompts: mean reward and
    the share that earned the full reward (1)."""
    prompts, answers = prompts_of(self.spec.run.task, "validation")
    prompts, answers = prompts[:self.rl.eval_prompts], answers[:self.rl.eval_prompts]
    eos = self.vocabulary.eos_id
    encoded = [list(self.vocabulary.encode(p)) + [eos] for p in prompts]
    tokens = decoding.generate(self._policy(params), textio.padded(encoded),
                               max_new_tokens=self.rl.max_new_tokens, eos_id=eos).tokens
    texts = [self.vocabulary.decode([t for t in row[:row.index(eos)] if t] if eos in row
                                    else [t for t in row if t]) for row in tokens.tolist()]
    scores = np.asarray(self.judge(prompts, texts, answers), np.float64)
    return {"reward": float(scores.mean()), "solved": float((scores >= 1.0).mean())}

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, _STATE), "w") as handle:
      json.dump({"position": self.position, "stats": self.stats}, handle)
    if self._current is not None and self.position % self.rl.updates_per_batch:
      np.savez(os.path.join(directory, _REUSED), **self._current)  # reused after resume

  def restore(self, directory: str) -> None:
    with open(os.path.join(directory, _STATE)) as handle:
      saved = json.load(handle)
    self.position, self.stats = saved["position"], saved["stats"]  # the reused one's
    reused = os.path.join(directory, _REUSED)
    if self.position % self.rl.updates_per_batch:
      with np.load(reused) as stored:
        self._current = {key: stored[key] for key in stored.files}


def factory(spec: TrainSpec, vocabulary: seqio.Vocabulary) -> Callable[[], RolloutBatches]:
  """What train.py hands the trainer for an `rl.*` run: makes RolloutBatches with the
  reference (train.init_checkpoint's model, held for the KL penalty when rl.kl_beta > 0)
  and the judge loaded once."""
  reference = (loading.load_model(spec.run.init_checkpoint) if spec.rl.kl_beta > 0 else None)
  judge = judge_of(spec.rl.reward)
  return lambda: RolloutBatches(spec, vocabulary, reference, judge)
