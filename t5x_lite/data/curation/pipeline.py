"""A curation run on datatrove: the stages, their executors, the curated corpus and the
report.

Streaming steps (filters, decontamination, redaction) run one after another in a stage
of `tasks` shards; each deduplication step ends the stage (its survivors written as
JSONL) and adds datatrove's own stages (exact: signatures, finding duplicates; MinHash:
signatures, buckets, clusters), after which the next stage reads the survivors back
through the duplicates filter. This is datatrove's documented shape for deduplication,
so the same stages run on its Slurm and Ray executors. Every stage keeps its logs and
completion marks under `<output>.work/`, so an interrupted run resumes where it stopped.

The curated documents become a corpus in the project's format (corpus_store: TFRecord
shards, manifest, seal) named by the fingerprint of the inputs' content and the
effective settings (config.py), with report.json and report.md beside the shards:
documents and bytes in and out of each step, each removal reason with sample documents,
duplicate clusters, redactions, and the contaminated evaluation items of each set.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable, Iterable, Optional, Sequence, TextIO

import multiprocess
from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.dedup import (
  ExactDedupConfig,
  ExactDedupFilter,
  ExactDedupSignature,
  ExactFindDedups,
  MinhashConfig,
  MinhashDedupBuckets,
  MinhashDedupCluster,
  MinhashDedupFilter,
  MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from loguru import logger

from t5x_lite.data import corpus_store, pydocs, shakespeare, text_files
from t5x_lite.data.corpus_store import CorpusError, CorpusManifest
from t5x_lite.data.curation import dedup, eval_sets, report, steps
from t5x_lite.data.curation.config import DEDUP, FILTERS, CurationConfig

BUILT_IN = {"pydocs": pydocs.documents, "shakespeare": shakespeare.documents}
REPORT_JSON, REPORT_MD = "report.json", "report.md"


@dataclasses.dataclass(frozen=True)
class Stage:
  """One datatrove job: its name, steps and number of tasks."""
  name: str
  pipeline: list
  tasks: int


@dataclasses.dataclass(frozen=True)
class Curated:
  """A built curated corpus: where, its manifest, and its report."""
  directory: str
  manifest: CorpusManifest
  report: dict


def input_sources(config: CurationConfig) -> list[tuple[str, Callable[[], Iterable[str]]]]:
  """(name, documents) of every input: a built-in corpus or the files a pattern names."""
  sources = []
  for name in config.inputs:
    if name in BUILT_IN:
      sources.append((name, BUILT_IN[name]))
    else:
      files = text_files.resolve_files(name)
      sources.append((name, functools.partial(text_files.read_documents, files,
                                              config.jsonl_key)))
  return sources


def inputs_fingerprint(sources) -> tuple[str, int]:
  """A digest of every input document in order, and how many there are (unreadable
  files and bad JSON lines fail here, before any stage starts)."""
  digest, count = hashlib.sha256(), 0
  for name, documents in sources:
    digest.update(f"\0source={name}\0".encode())
    for text in documents():
      encoded = text.encode("utf-8")
      digest.update(len(encoded).to_bytes(8, "big"))
      digest.update(encoded)
      count += 1
  return digest.hexdigest(), count


def corpus_directory(config: CurationConfig, fingerprint: str) -> str:
  return config.output_dir or os.path.join(corpus_store.cache_root(),
                                           f"curated-{fingerprint[:16]}")


def _removed(work: str, step: str) -> JsonlWriter:
  return JsonlWriter(os.path.join(work, "removed", step), expand_metadata=False)


def _streaming_step(config: CurationConfig, step: str, work: str):
  settings = config.step_settings(step)
  if step in FILTERS:
    return FILTERS[step](exclusion_writer=_removed(work, step), **settings)
  if step == "decontaminate":
    return steps.Decontaminate(records_folder=os.path.join(work, "contamination"),
                               exclusion_writer=_removed(work, step), **settings)
  return steps.Redact(**settings)


def plan(config: CurationConfig, work: str) -> list[Stage]:
  """The stages of a run (module docstring), in order."""
  stages: list[Stage] = []
  current = [steps.InputReader(input_sources(config)), steps.Tally("input")]
  for index, step in enumerate(config.steps):
    if step not in DEDUP:
      current += [_streaming_step(config, step, work), steps.Tally(step)]
      continue
    survivors = os.path.join(work, "data", f"{index:02d}-before-{step}")
    signatures = os.path.join(work, step, "signatures")
    found = os.path.join(work, step, "duplicates")
    stages.append(Stage(f"{index:02d}-until-{step}", current + [JsonlWriter(survivors)],
                        config.tasks))
    reread = JsonlReader(survivors)
    if step == "exact_dedup":
      exact = ExactDedupConfig(content_getter=dedup.exact_key, hash_config=eval_sets.HASH)
      stages += [Stage(f"{index:02d}-{step}-signatures",
                       [reread, ExactDedupSignature(signatures, exact)], config.tasks),
                 Stage(f"{index:02d}-{step}-find", [ExactFindDedups(signatures, found, exact)], 1)]
      dedup_filter = ExactDedupFilter(found, exact, exclusion_writer=_removed(work, step))
    else:
      settings = config.step_settings(step)
      minhash = MinhashConfig(**settings, hash_config=eval_sets.HASH)
      buckets = os.path.join(work, step, "buckets")
      stages += [Stage(f"{index:02d}-{step}-signatures",
                       [reread, MinhashDedupSignature(signatures, minhash)], config.tasks),
                 Stage(f"{index:02d}-{step}-buckets",
                       [MinhashDedupBuckets(signatures, buckets, config=minhash)],
                       settings["num_buckets"]),
                 Stage(f"{index:02d}-{step}-clusters",
                       [MinhashDedupCluster(buckets, found, config=minhash,
                                            save_cluster_id=True, save_cluster_size=True)], 1)]
      dedup_filter = MinhashDedupFilter(found, exclusion_writer=_removed(work, step),
                                        load_cluster_ids=True, load_cluster_sizes=True)
    current = [reread, dedup_filter, steps.Tally(step)]
  stages.append(Stage("final", current + [JsonlWriter(os.path.join(work, "data", "curated"),
                                                      expand_metadata=False)], config.tasks))
  return stages


def _executor(config: CurationConfig, stage: Stage, work: str, depends):
  logging_dir = os.path.join(work, "logs", stage.name)
  if config.executor == "local":
    return LocalPipelineExecutor(stage.pipeline, tasks=stage.tasks, logging_dir=logging_dir,
                                 workers=min(config.workers, stage.tasks), depends=depends,
                                 **dict(config.executor_options))
  if config.executor == "slurm":
    return SlurmPipelineExecutor(stage.pipeline, tasks=stage.tasks, logging_dir=logging_dir,
                                 depends=depends, job_name=f"curate-{stage.name}",
                                 **dict(config.executor_options))
  return RayPipelineExecutor(stage.pipeline, tasks=stage.tasks, logging_dir=logging_dir,
                             depends=depends, **dict(config.executor_options))


def _finished(work: str, stage: Stage) -> bool:
  completions = os.path.join(work, "logs", stage.name, "completions")
  return all(os.path.exists(os.path.join(completions, f"{rank:05d}"))
             for rank in range(stage.tasks))


def _check_survivors(work: str, stage: Stage) -> None:
  """A stage ending in a JSONL writer that wrote nothing removed everything: the next
  stage would find no files, so say which steps did it."""
  writer = stage.pipeline[-1]
  if isinstance(writer, JsonlWriter) and not writer.output_folder.list_files():
    raise CorpusError(f"no document survived stage {stage.name!r}; loosen the thresholds in "
                      "curation.settings (the removed documents and their reasons are under "
                      f"{os.path.join(work, 'removed')}).")


def run_stages(config: CurationConfig, work: str, stages: Sequence[Stage],
               stream: TextIO = sys.stderr) -> bool:
  """Runs (or resumes) every stage; True when all have finished (a Slurm or Ray run may
  still be queued when this returns)."""
  if config.datatrove_logs:
    logger.enable("datatrove")
  else:  # curate prints its own progress; datatrove's per-task tables are for debugging
    logger.disable("datatrove")
  if config.executor != "local":
    executor = None
    for stage in stages:  # each waits for the one before (datatrove's `depends`)
      executor = _executor(config, stage, work, executor)
    executor.run()
    return all(_finished(work, stage) for stage in stages)
  # Locally, stage by stage, saying where the run is. The local executor starts a
  # multiprocess Manager even for one worker; from a process running JAX's threads that
  # must not be a fork (a child can inherit a lock held mid-operation), so its processes
  # come from a fork server started clean.
  if multiprocess.get_start_method(allow_none=True) in (None, "fork"):
    multiprocess.set_start_method("forkserver", force=True)
  for number, stage in enumerate(stages, start=1):
    if _finished(work, stage):
      print(f"curate: stage {number}/{len(stages)} {stage.name}: done before", file=stream)
      continue
    start = time.monotonic()
    print(f"curate: stage {number}/{len(stages)} {stage.name} ({stage.tasks} tasks)",
          file=stream, flush=True)
    _executor(config, stage, work, None).run()
    _check_survivors(work, stage)
    print(f"curate: stage {number}/{len(stages)} {stage.name} took "
          f"{time.monotonic() - start:.1f} s", file=stream, flush=True)
  return all(_finished(work, stage) for stage in stages)


def curate(config: CurationConfig, stream: TextIO = sys.stderr) -> Optional[Curated]:
  """Builds the curated corpus of `config` (or finds it built) and returns it; None when
  a Slurm or Ray run is still under way (run the same command again once it finishes)."""
  sources = input_sources(config)
  fingerprint_in, documents_in = inputs_fingerprint(sources)
  if documents_in == 0:
    raise CorpusError(f"the curation inputs {list(config.inputs)} hold no documents.")
  fingerprint = config.fingerprint(fingerprint_in)
  directory = corpus_directory(config, fingerprint)
  with corpus_store.file_lock(directory.rstrip("/") + ".lock"):
    if os.path.exists(os.path.join(directory, corpus_store.MANIFEST)):
      manifest = corpus_store.read_manifest(directory)
      if manifest.provenance.get("fingerprint") == fingerprint:
        corpus_store.verify(directory, manifest)
        print(f"curate: {directory} is already built from these inputs and settings",
              file=stream)
        with open(os.path.join(directory, REPORT_JSON)) as handle:
          return Curated(directory, manifest, json.load(handle))
      raise CorpusError(f"{directory} holds a corpus curated from other inputs or settings; "
                        "choose another curation.output_dir or delete it.")
    work = directory.rstrip("/") + ".work"
    started = time.monotonic()
    stages = plan(config, work)
    if not run_stages(config, work, stages, stream):
      print(f"curate: the {config.executor} jobs are submitted; run the same command again "
            "when they finish to write the corpus.", file=stream)
      return None
    kept = list(report.read_jsonl_folder(os.path.join(work, "data", "curated")))
    if not kept:
      raise CorpusError(f"every one of the {documents_in} input documents was removed; "
                        "loosen the thresholds in curation.settings (the removal reasons are "
                        f"in {os.path.join(work, 'removed')}).")
    built = report.build(config, work, stages, kept,
                         seconds=time.monotonic() - started)
    provenance = {"fingerprint": fingerprint, "inputs_fingerprint": fingerprint_in,
                  "inputs": list(config.inputs), "settings": config.effective()}
    manifest = corpus_store.write_corpus(
        directory, "curated", [record["text"] for record in kept],
        source=f"curated from {list(config.inputs)}",
        validation_fraction=config.validation_fraction, provenance=provenance,
        extra_files={REPORT_JSON: json.dumps(built, indent=1),
                     REPORT_MD: report.markdown(built)})
  return Curated(directory, manifest, built)


def describe(curated: Curated) -> str:
  """The lines `curate` prints at the end."""
  return report.summary(curated.report, curated.directory, curated.manifest)


def settings_line(config: CurationConfig) -> Any:
  """The MinHash line printed before a run (rates the settings imply)."""
  if "minhash_dedup" not in config.steps:
    return None
  settings = config.step_settings("minhash_dedup")
  return dedup.minhash_rates(settings["num_buckets"], settings["hashes_per_bucket"]).line()


class CuratedCorpus:
  """The corpus a curation run makes (data/curation), curated the first time it is read
  and found by its fingerprint ever after (gin: `curation.*`)."""

  def __init__(self, config: CurationConfig):
    self.config = config
    self._curated = None

  def _built(self) -> Curated:
    if self._curated is None:
      curated = curate(self.config)
      if curated is None:
        raise CorpusError("the curated corpus is still being built by the "
                          f"{self.config.executor} executor; train once it is done.")
      self._curated = curated
    return self._curated

  @property
  def directory(self) -> str:
    return self._built().directory

  def build(self) -> CorpusManifest:
    return self._built().manifest
