"""An offline multitask mixture built from the embedded corpora (no download), in the
spirit of T0 and FLAN: several task types grouped into clusters, each with several
prompt templates, whole clusters held out for zero-shot evaluation.

Clusters and task types (`TASKS`):
  identification  play_name (which play is this speech from?), module_name (which
                  standard-library module does this documentation describe?)
  speaker         speaker_name (who says this speech?)
  continuation    true_continuation (pick the sentence that follows), sentence_order
                  (which of two sentences comes first?)
  summary         docstring_summary (write a docstring's first sentence from the rest)
  cloze           masked_word_docs, masked_word_verse (fill the blanked word)
  membership      sentence_in_document (is this sentence from this passage?),
                  same_play (are these two speeches from the same play?)
Training clusters: identification, speaker, continuation, summary; held out: cloze and
membership (`HELD_OUT_CLUSTERS`), so the held-out tasks test transfer to task types
never trained on. Every task but the summary has answer choices (rank classification).

Examples are drawn with a fixed seed from documents split by a hash of their source
(a module, or a play and speech), so validation examples come from documents training
never saw. Templates are data: t5x_lite/data/multitask_templates.json, several per task.

seqio: `multitask.<task>` (and `.byte`) Tasks; `multitask.train` mixes the training
tasks examples-proportionally with T5's cap (seqio.mixing_rate_num_examples, maximum
`RATE_CAP`); `multitask.held_out` mixes the held-out ones for evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import re
from typing import Callable, Optional

import seqio

from t5x_lite.data import pydocs, shakespeare, supervised, vocabularies
from t5x_lite.data.corpus_store import is_validation

TEMPLATES_FILE = os.path.join(os.path.dirname(__file__), "multitask_templates.json")
HELD_OUT_CLUSTERS = ("cloze", "membership")
RATE_CAP = 2000           # T5's `maximum`: no task weighs more than this many examples
# Examples drawn per task and split: up to EXAMPLES_PER_DOCUMENT per source document
# (speech or module) and at most MAX_EXAMPLES, so tasks over the smaller corpus (the
# module docs) are smaller and the mixture's rates differ as T5's do.
MAX_EXAMPLES = {"train": 4000, "validation": 300}
EXAMPLES_PER_DOCUMENT = 3
VALIDATION_FRACTION = 0.1
SEED = 20221  # fixed: every run sees the same examples


@dataclasses.dataclass(frozen=True)
class Speech:
  play: str
  speaker: str
  text: str


@dataclasses.dataclass(frozen=True)
class ModuleDoc:
  module: str
  text: str


def _split_of(key: str) -> str:
  return "validation" if is_validation(key, VALIDATION_FRACTION) else "train"


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences(text: str, shortest: int = 30, longest: int = 200) -> list[str]:
  """Prose sentences of reasonable length, whitespace normalised."""
  found = (" ".join(s.split()) for s in _SENTENCE_END.split(text))
  return [s for s in found if shortest <= len(s) <= longest]


@functools.lru_cache(maxsize=1)
def _speeches() -> dict[str, list[Speech]]:
  """{split: speeches} of every play: paragraphs "SPEAKER.\\nlines" of 2+ lines."""
  found: dict[str, list[Speech]] = {"train": [], "validation": []}
  for path in shakespeare.text_files():
    play = path.name.removesuffix("_gut.txt").replace("_", " ").title()
    for number, paragraph in enumerate(path.read_text(encoding="utf-8").split("\n\n")):
      lines = paragraph.strip().splitlines()
      if len(lines) < 3 or not re.fullmatch(r"[A-Z][A-Z .'-]+\.", lines[0].strip()):
        continue
      speech = Speech(play, lines[0].strip().rstrip(".").title(),
                      " ".join(line.strip() for line in lines[1:]))
      if 60 <= len(speech.text) <= 400:
        found[_split_of(f"{play}:{number}")].append(speech)
  return found


@functools.lru_cache(maxsize=1)
def _modules() -> dict[str, list[ModuleDoc]]:
  """{split: module documentation} of standard-library modules with enough prose."""
  stdlib = pydocs.stdlib_directory()
  found: dict[str, list[ModuleDoc]] = {"train": [], "validation": []}
  seen: set[str] = set()
  for path in pydocs.module_paths(stdlib):
    relative = os.path.relpath(path, stdlib).removesuffix(".py").removesuffix("/__init__")
    module = relative.replace(os.sep, ".")
    text = pydocs.module_docstrings(path)
    # Some modules repeat (the opening of) another's documentation: keep the first of
    # those whose opening four sentences agree, and split by that opening, so no passage
    # drawn from it is in both splits or names two modules.
    opening = " ".join(sentences(text)[:4])
    if len(sentences(text)) >= 4 and not module.startswith("_") and opening not in seen:
      seen.add(opening)
      found[_split_of(opening)].append(ModuleDoc(module, text))
  return found


def _options(choices: list[str]) -> str:
  return "\n".join(f"- {choice}" for choice in choices)


def _with_choices(rng: random.Random, answer: str, distractors: list[str], fields: dict,
                  count: int = 4) -> Optional[dict]:
  pool = sorted({d for d in distractors if d != answer})
  if len(pool) < count - 1:
    return None
  choices = rng.sample(pool, count - 1) + [answer]
  rng.shuffle(choices)
  return dict(fields, answer=answer, choices=choices, options=_options(choices))


# Each maker draws one example's fields (with "answer", and "choices" where it has them)
# from the split's documents, or None to draw again.
def _play_name(rng, speeches, modules):
  speech = rng.choice(speeches)
  return _with_choices(rng, speech.play, [s.play for s in speeches], {"passage": speech.text})


def _module_name(rng, speeches, modules):
  doc = rng.choice(modules)
  passage = " ".join(rng.choice([sentences(doc.text)[:3], sentences(doc.text)[1:4]]))
  return _with_choices(rng, doc.module, [m.module for m in modules], {"passage": passage})


def _speaker_name(rng, speeches, modules):
  speech = rng.choice(speeches)
  same_play = [s.speaker for s in speeches if s.play == speech.play]
  return _with_choices(rng, speech.speaker, same_play, {"passage": speech.text,
                                                        "play": speech.play})


def _true_continuation(rng, speeches, modules):
  doc = rng.choice(modules)
  found = sentences(doc.text)
  index = rng.randrange(len(found) - 1)
  others = [s for m in rng.sample(modules, 8) if m is not doc for s in sentences(m.text)[:5]]
  return _with_choices(rng, found[index + 1], others, {"context": found[index]})


def _sentence_order(rng, speeches, modules):
  found = sentences(rng.choice(modules).text)
  index = rng.randrange(len(found) - 1)
  first, second = found[index], found[index + 1]
  swapped = rng.random() < 0.5
  a, b = (second, first) if swapped else (first, second)
  return dict(sentence_a=a, sentence_b=b, answer="B" if swapped else "A", choices=["A", "B"],
              options=_options(["A", "B"]))


def _docstring_summary(rng, speeches, modules):
  found = sentences(rng.choice(modules).text, longest=400)
  if len(found) < 3:
    return None
  return dict(passage=" ".join(found[1:4]), answer=found[0], choices=[])


def _masked(rng, text: str) -> Optional[dict]:
  words = [w for w in re.findall(r"[A-Za-z]{5,}", text)]
  if len(words) < 4:
    return None
  word = rng.choice(words)
  blanked = re.sub(rf"\b{word}\b", "___", text, count=1)
  return _with_choices(rng, word, words, {"passage": blanked})


def _masked_word_docs(rng, speeches, modules):
  return _masked(rng, " ".join(sentences(rng.choice(modules).text)[:2]))


def _masked_word_verse(rng, speeches, modules):
  return _masked(rng, rng.choice(speeches).text)


def _sentence_in_document(rng, speeches, modules):
  doc, other = rng.sample(modules, 2)
  found = sentences(doc.text)
  passage_end = min(len(found), 4)
  if rng.random() < 0.5:
    candidate, answer = rng.choice(found[passage_end:] or found[-1:]), "yes"
  else:
    candidate, answer = rng.choice(sentences(other.text)), "no"
  return dict(passage=" ".join(found[:passage_end - 1] if passage_end > 1 else found[:1]),
              sentence=candidate, answer=answer, choices=["yes", "no"],
              options=_options(["yes", "no"]))


def _same_play(rng, speeches, modules):
  first = rng.choice(speeches)
  if rng.random() < 0.5:
    second = rng.choice([s for s in speeches if s.play == first.play and s is not first])
    answer = "yes"
  else:
    second = rng.choice([s for s in speeches if s.play != first.play])
    answer = "no"
  return dict(passage_a=first.text, passage_b=second.text, answer=answer,
              choices=["yes", "no"], options=_options(["yes", "no"]))


# task: (cluster, maker, the corpus whose documents bound its size)
TASKS: dict[str, tuple[str, Callable, str]] = {
    "play_name": ("identification", _play_name, "speeches"),
    "module_name": ("identification", _module_name, "modules"),
    "speaker_name": ("speaker", _speaker_name, "speeches"),
    "true_continuation": ("continuation", _true_continuation, "modules"),
    "sentence_order": ("continuation", _sentence_order, "modules"),
    "docstring_summary": ("summary", _docstring_summary, "modules"),
    "masked_word_docs": ("cloze", _masked_word_docs, "modules"),
    "masked_word_verse": ("cloze", _masked_word_verse, "speeches"),
    "sentence_in_document": ("membership", _sentence_in_document, "modules"),
    "same_play": ("membership", _same_play, "speeches"),
}


def training_tasks() -> list[str]:
  return [name for name, (cluster, _, _) in TASKS.items() if cluster not in HELD_OUT_CLUSTERS]


def held_out_tasks() -> list[str]:
  return [name for name, (cluster, _, _) in TASKS.items() if cluster in HELD_OUT_CLUSTERS]


@functools.lru_cache(maxsize=1)
def templates() -> dict[str, list[dict[str, str]]]:
  """{task: [{"inputs": ..., "targets": ...}, ...]} from multitask_templates.json."""
  with open(TEMPLATES_FILE) as handle:
    return json.load(handle)


@functools.lru_cache(maxsize=None)
def examples(task: str, split: str) -> tuple[dict, ...]:
  """The task's examples of a split: {"inputs", "targets", "choices" (rendered through the
  same template as the targets; empty without choices), "cluster", "template"}."""
  cluster, maker, corpus = TASKS[task]
  rng = random.Random(f"{SEED}:{task}:{split}")
  speeches, modules = _speeches()[split], _modules()[split]
  wanted = min(MAX_EXAMPLES[split],
               EXAMPLES_PER_DOCUMENT * len(modules if corpus == "modules" else speeches))
  drawn, seen, attempts = [], set(), 0
  while len(drawn) < wanted and attempts < 20 * wanted:
    attempts += 1
    fields = maker(rng, speeches, modules)
    if fields is None:
      continue
    number = rng.randrange(len(templates()[task]))
    template = templates()[task][number]
    inputs = template["inputs"].format_map(fields)
    if inputs in seen:
      continue
    seen.add(inputs)
    render = lambda answer, t=template, f=fields: t["targets"].format_map(dict(f, answer=answer))  # noqa: E731
    drawn.append({"inputs": inputs, "targets": render(fields["answer"]),
                  "choices": [render(choice) for choice in fields["choices"]],
                  "cluster": cluster, "template": number})
  return tuple(drawn)


class _Source(seqio.FunctionDataSource):
  """A task's examples, drawn on first use (registering reads no corpus)."""

  def __init__(self, task: str):
    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
      del shuffle_files, seed
      found = examples(task, split)
      return supervised.examples_dataset([e["inputs"] for e in found],
                                         [e["targets"] for e in found])
    super().__init__(dataset_fn, splits=("train", "validation"))
    self.task = task

  def num_input_examples(self, split: str) -> int:
    return len(examples(self.task, split))


def register(vocabulary: Optional[seqio.Vocabulary] = None, suffix: str = "") -> list[str]:
  """Registers `multitask.<task><suffix>` for every task and the `multitask.train<suffix>`
  and `multitask.held_out<suffix>` mixtures; returns the task names."""
  vocabulary = vocabulary or vocabularies.default_vocabulary()
  names = []
  for task in TASKS:
    name = f"multitask.{task}{suffix}"
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add_provider(
        name, supervised.text_to_text_task(name, _Source(task), vocabulary))
    names.append(name)
  rate = functools.partial(seqio.mixing_rate_num_examples, maximum=RATE_CAP)
  for mixture, tasks in (("train", training_tasks()), ("held_out", held_out_tasks())):
    name = f"multitask.{mixture}{suffix}"
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [f"multitask.{task}{suffix}" for task in tasks],
                              default_rate=rate)
  return names
