"""An lm-evaluation-harness model (`lm_eval.api.model.LM`) over t5x_lite models.

Any t5x_lite checkpoint (a MODEL_DIR, a LoRA run merged on load) or an in-memory model
(a Hugging Face import, with the vocabulary that reads its ids) is scored by the
community harness as the harness's own models are:

  - loglikelihood(context, continuation): the continuation's log-probability and
    whether greedy decoding would produce it. Encoder-decoder: context to the
    encoder, continuation scored by the decoder (the harness's seq2seq models);
    prefix decoder: context as the bidirectional prefix; causal decoder: context
    then continuation. Context and continuation are encoded separately and scored by
    decoding.score, the project's own scorer (multiple_choice.rank_classify uses the
    same path), so the harness's numbers equal ours.
  - loglikelihood_rolling(text): the text's log-probability in windows of the
    model's length, each token predicted once (the harness's rolling windows).
  - generate_until(context, {until, max_gen_toks}): greedy KV-cache decoding cut at
    the first stop sequence.

Context longer than the model: by default its left end is cut so context and
continuation fit the model's maximum length (the harness's own convention);
truncation="error" refuses it instead. A continuation that alone does not fit is
always refused. Registered as `t5x_lite` in the harness's model registry.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from lm_eval import utils as harness_utils
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from t5x_lite.common.errors import UserError
from t5x_lite.data import multitask
from t5x_lite.inference import decoding, evaluation, textio
from t5x_lite.runs import loading

TRUNCATION = ("left", "error")
# The offline harness tasks that ship with t5x_lite (YAML + documents.py).
HARNESS_TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness_tasks")
DEFAULT_MAX_GEN_TOKS = 256


class HarnessError(UserError, ValueError):
  """A request or setting the model cannot serve; the message says what to change."""


def offline_tasks() -> list[str]:
  """Names of the offline harness tasks and groups (one YAML file each)."""
  return sorted(name.removesuffix(".yaml") for name in os.listdir(HARNESS_TASKS_DIR)
                if name.endswith(".yaml") and not name.startswith("_"))


def evaluation_set(task: str) -> Optional[str]:
  """The project's evaluation set an offline harness task scores, by the name curation's
  decontamination reports it under (data/curation/eval_sets.py), or None; its documents
  are that set's items in order, so a sample's doc_id is the item's index."""
  name = task.removeprefix("t5x_lite_")
  if name == "pydocs_cloze":
    return name
  if name in multitask.TASKS:
    return f"multitask.{name}"
  return None


def contamination(samples: Sequence[dict], dirty: set[int]) -> dict:
  """A harness task's logged samples split into clean and contaminated items
  (evaluation.contamination_split), by each sample's accuracy or exact match."""
  scored = {}
  for sample in samples:
    metric = next(key for key in ("acc", "exact_match") if key in sample)
    scored[int(sample["doc_id"])] = bool(sample[metric])
  ordered = [scored.get(i) for i in range(max(scored, default=-1) + 1)]
  if any(value is None for value in ordered):
    raise HarnessError("the harness's samples do not cover doc ids 0..n-1; "
                       "contamination needs every item up to the limit scored.")
  return evaluation.contamination_split(ordered, dirty)


@register_model("t5x_lite")
class T5xLiteLM(LM):
  """lm-eval's LM interface over a t5x_lite model (see the module docstring).

  Args:
    checkpoint_path: a MODEL_DIR; model and vocabulary come from its run record.
    model, vocabulary: instead of a checkpoint, an in-memory model and the seqio
      vocabulary of its token ids (e.g. an imported Hugging Face model).
    batch_size: requests scored or generated together.
    max_length: positions available to a request (default: the model's max_length).
    truncation: "left" cuts the context's left end to fit; "error" refuses.
    lora_base: where a LoRA run's base is now, when it has moved (fingerprint-checked).
  """

  def __init__(self, checkpoint_path: Optional[str] = None, *, model=None, vocabulary=None,
               batch_size: int | str = 16, max_length: Optional[int] = None,
               truncation: str = "left", lora_base: Optional[str] = None) -> None:
    super().__init__()
    if (checkpoint_path is None) == (model is None):
      raise HarnessError("give the t5x_lite model either as checkpoint_path=MODEL_DIR or as "
                         "model= with vocabulary=.")
    if truncation not in TRUNCATION:
      raise HarnessError(f"truncation={truncation!r}; choose from {TRUNCATION}.")
    if checkpoint_path is not None:
      model = loading.load_model(checkpoint_path, base=lora_base)
      task = textio.resolve_task(checkpoint_path, None, model.config.vocab_size)
      vocabulary = textio.task_vocabularies(task)[1]
    elif vocabulary is None:
      raise HarnessError("an in-memory model needs the vocabulary= that reads its token ids.")
    self.model, self.vocabulary = model, vocabulary
    self.batch_size = int(batch_size)
    self.max_length = int(max_length or model.config.max_length)
    self.truncation = truncation
    self.has_encoder = model.config.architecture_spec.has_encoder

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: Optional[dict] = None
                             ) -> "T5xLiteLM":
    """`--model_args checkpoint_path=DIR,batch_size=8` as the harness's CLI passes them."""
    args = harness_utils.simple_parse_args_string(arg_string)
    args.update({k: v for k, v in (additional_config or {}).items()
                 if k == "batch_size" and v is not None})
    return cls(**args)

  # ------------------------------------------------------------------ tokens

  def encode(self, text: str) -> list[int]:
    return list(self.vocabulary.encode(text)) if text else []

  def fit(self, context: list[int], continuation: list[int]) -> list[int]:
    """The context cut (left) so that it and the continuation fit the model."""
    if len(continuation) > self.max_length:
      raise HarnessError(f"a continuation of {len(continuation)} tokens does not fit the "
                         f"model's {self.max_length} positions; it cannot be scored.")
    spec = self.model.config.architecture_spec
    kept = spec.scoring_context(context, len(continuation), self.max_length)
    context = self.truncated(context, len(kept), f"with its {len(continuation)}-token "
                             "continuation")
    if self.has_encoder and not context:
      context = [self.vocabulary.eos_id]  # the encoder needs one token: an empty document
    return context

  def _score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    """(log-likelihood, greedy) of token pairs, batched longest first (fewer shapes)."""
    order = sorted(range(len(pairs)), key=lambda i: -sum(map(len, pairs[i])))
    results: list[Any] = [None] * len(pairs)
    for start in range(0, len(order), self.batch_size):
      chunk = order[start:start + self.batch_size]
      sums, _, greedy = decoding.score(self.model, [pairs[i][0] for i in chunk],
                                       [pairs[i][1] for i in chunk], greedy=True)
      for i, value, is_greedy in zip(chunk, sums, greedy):
        results[i] = (float(value), bool(is_greedy))
    return results

  # ------------------------------------------------------------------ the LM interface

  def loglikelihood(self, requests) -> list[tuple[float, bool]]:
    pairs = []
    for request in requests:
      context, continuation = request.args
      # The harness's convention: a context's trailing spaces belong to the continuation.
      stripped = context.rstrip()
      context, continuation = stripped, context[len(stripped):] + continuation
      tokens = self.encode(continuation)
      if not tokens:
        raise HarnessError(f"the continuation {continuation!r} encodes to no tokens.")
      pairs.append((self.fit(self.encode(context), tokens), tokens))
    return self._score(pairs)

  def loglikelihood_rolling(self, requests) -> list[float]:
    totals = []
    for request in requests:
      (text,) = request.args
      tokens = self.encode(text)
      # The harness's windows: every token predicted once, with as much context as fits.
      # Its prefix token stands for the start of the sequence, which decoding.score
      # supplies itself (BOS for decoders, an EOS-only document for the encoder). A
      # decoder's BOS takes a position, so its windows are one token shorter.
      windows = [harness_utils.make_disjoint_window(window) for window in
                 harness_utils.get_rolling_token_windows(
                     token_list=tokens, prefix_token=-1,
                     max_seq_len=self.max_length - (0 if self.has_encoder else 1),
                     context_len=1)]
      pairs = [(self.fit([t for t in context if t >= 0], predicted), predicted)
               for context, predicted in windows]
      totals.append(sum(value for value, _ in self._score(pairs)) if pairs else 0.0)
    return totals

  def generate_until(self, requests) -> list[str]:
    outputs: list[Optional[str]] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for index, request in enumerate(requests):
      _, kwargs = request.args
      until = kwargs.get("until") or []
      until = [until] if isinstance(until, str) else list(until)
      if kwargs.get("do_sample") or kwargs.get("temperature", 0.0) not in (0, 0.0):
        raise HarnessError("generate_until: t5x_lite's harness model decodes greedily; "
                           "set do_sample=false and temperature=0.")
      groups.setdefault((tuple(until), int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))),
                        []).append(index)
    for (until, max_new), indices in groups.items():
      limit = self.model.config.architecture_spec.prompt_limit(self.max_length, max_new)
      prompts = [self._prompt(requests[i].args[0], limit, max_new) for i in indices]
      predictions = textio.predict(
          self.model, prompts, self.vocabulary, method="greedy", max_new_tokens=max_new,
          temperature=0.0, top_k=0, top_p=1.0, beams=1, alpha=0.0,
          batch_size=self.batch_size, seed=0)
      for i, prediction in zip(indices, predictions):
        outputs[i] = cut_at_stop(prediction["prediction"], until)
    return outputs

  def _prompt(self, context: str, limit: int, max_new: int) -> list[int]:
    tokens = self.truncated(self.encode(context), limit, f"with {max_new} new tokens")
    return tokens or [self.vocabulary.eos_id]

  def truncated(self, context: list[int], room: int, what: str) -> list[int]:
    """The context's last `room` tokens (truncation="left"), or an error ("error")."""
    if len(context) <= room:
      return context
    if self.truncation == "error":
      raise HarnessError(f"a context of {len(context)} tokens does not fit the model's "
                         f"{self.max_length} positions ({what}); pass truncation=left to cut "
                         "its left end.")
    return context[len(context) - room:]


def cut_at_stop(text: str, until: Sequence[str]) -> str:
  """`text` up to the first occurrence of any stop sequence."""
  cut = min((text.find(stop) for stop in until if stop and stop in text), default=len(text))
  return text[:cut]
