"""seqio Tasks named `<corpus>.<objective>`, registered by `register_tasks()`.

Every corpus (corpora.py) is offered with every objective (objectives.py):
`pydocs.span_corruption`, `shakespeare.full_lm`, `c4.prefix_lm`, ... with the
default vocabulary (8,000 SentencePiece pieces trained on the embedded
corpus, plus 100 sentinels), and again with seqio's byte vocabulary under a
`.byte` suffix (`pydocs.full_lm.byte`). Entry points call `register_tasks()`
(idempotent) before they name a task; `register_tasks(vocabulary, suffix)`
registers the same set for any other vocabulary. The user's (inputs, targets) data
(supervised.py) is the `supervised` task (and `supervised.byte`) once bound; the
offline multitask mixture (multitask.py) is `multitask.<task>`, `multitask.train` and
`multitask.held_out`.
"""

from __future__ import annotations

import functools
from typing import Optional

import seqio

from t5x_lite.data import corpora, multitask, objectives, supervised, vocabularies
from t5x_lite.data.curation import pipeline as curation_pipeline
from t5x_lite.data.curation.config import CurationConfig

OBJECTIVES = {
    "full_lm": objectives.full_lm,
    "prefix_lm": objectives.prefix_lm,
    "span_corruption": objectives.span_corruption,
}
# `curated`: the corpus data/curation makes of `curation.*` (by default, curated pydocs).
CORPORA = (*corpora.LOCAL_CORPORA, "curated", *corpora.TFDS_CORPORA)


def output_features(objective: str, vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """Full LM has targets only (EOS already separates documents); the others add EOS to both."""
  if objective == "full_lm":
    return {"targets": seqio.Feature(vocabulary, add_eos=False)}
  return {key: seqio.Feature(vocabulary, add_eos=True) for key in ("inputs", "targets")}


def make_task(name: str, corpus: str, objective: str, vocabulary: seqio.Vocabulary,
              text_files: corpora.TextFiles = corpora.TextFiles(),
              curation: Optional[CurationConfig] = None) -> seqio.Task:
  """One corpus x objective Task (not registered)."""
  preprocessors = [
      functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
      functools.partial(seqio.preprocessors.tokenize, copy_pretokenized=False),
      OBJECTIVES[objective],
  ]
  if objective != "full_lm":
    preprocessors.append(seqio.preprocessors.append_eos_after_trim)
  if corpus == "curated":
    curated = curation_pipeline.CuratedCorpus(curation or CurationConfig())
    source = corpora.LocalCorpusSource(lambda: curated)
  else:
    source = corpora.data_source(corpus, text_files)
  return seqio.Task(name, source=source,
                    preprocessors=preprocessors,
                    output_features=output_features(objective, vocabulary), metric_fns=[])


def register_supervised(data: supervised.SupervisedData) -> list[str]:
  """(Re)registers `supervised` (default vocabulary) and `supervised.byte` on `data`."""
  names = []
  for vocabulary, suffix in ((vocabularies.default_vocabulary(), ""),
                             (vocabularies.byte_vocabulary(), ".byte")):
    name = f"supervised{suffix}"
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add_provider(name, supervised.make_task(name, data, vocabulary))
    names.append(name)
  return names


def register_tasks(vocabulary: Optional[seqio.Vocabulary] = None, suffix: str = "",
                   text_files: Optional[corpora.TextFiles] = None,
                   supervised_data: Optional[supervised.SupervisedData] = None,
                   curation: Optional[CurationConfig] = None) -> list[str]:
  """Registers `<corpus>.<objective><suffix>` for every corpus and objective with
  `vocabulary`; returns the names. With no vocabulary, the project's tasks: the default
  vocabulary's and the byte vocabulary's (`.byte`), registered once however often it is
  called. `text_files` (re)binds the `text_files.*` tasks to those files;
  `supervised_data` (re)binds the `supervised` tasks; `curation` (re)binds the
  `curated.*` tasks to the corpus that curation makes."""
  if supervised_data is not None:
    register_supervised(supervised_data)
  if vocabulary is None:
    if not _PROJECT_TASKS:
      _PROJECT_TASKS.extend(register_tasks(vocabularies.default_vocabulary()) +
                            register_tasks(vocabularies.byte_vocabulary(), suffix=".byte") +
                            multitask.register() +
                            multitask.register(vocabularies.byte_vocabulary(), ".byte"))
    if text_files is not None or curation is not None:
      register_tasks(vocabularies.default_vocabulary(), text_files=text_files,
                     curation=curation)
      register_tasks(vocabularies.byte_vocabulary(), suffix=".byte", text_files=text_files,
                     curation=curation)
    return list(_PROJECT_TASKS)
  names = []
  rebound = [corpus for corpus, given in (("text_files", text_files), ("curated", curation))
             if given is not None]
  for corpus in rebound or CORPORA:
    for objective in OBJECTIVES:
      name = f"{corpus}.{objective}{suffix}"
      seqio.TaskRegistry.remove(name)
      seqio.TaskRegistry.add_provider(name, make_task(name, corpus, objective, vocabulary,
                                                      text_files or corpora.TextFiles(),
                                                      curation))
      names.append(name)
  return names


_PROJECT_TASKS: list[str] = []
