"""Naming what a run reads: a registered seqio task or mixture, the fingerprints of the
local corpora behind it, and the error a data request that cannot be served raises."""

from __future__ import annotations

import seqio

from t5x_lite.common.errors import UserError


class DataError(UserError, ValueError):
  """A data request that cannot be served; the message names what to fix."""


def get_task(task: str) -> seqio.DatasetProviderBase:
  """The registered seqio task or mixture `task`, or a DataError naming some that exist
  (the project's tasks exist once `t5x_lite.data.register_tasks()` has run)."""
  try:
    return seqio.get_mixture_or_task(task)
  except ValueError:
    known = ", ".join(sorted(seqio.TaskRegistry.names())[:12])
    raise DataError(f"unknown task or mixture {task!r} (MIXTURE_OR_TASK_NAME); "
                    f"registered tasks include {known}, ...") from None


def data_fingerprints(task: str) -> dict[str, str]:
  """{corpus name: content fingerprint} of the built local corpora a task or mixture reads
  (corpus_store's manifest; building them if needed): what a run records about its data,
  so that a resume on a rebuilt or edited corpus is told apart. TFDS sources have none."""
  provider = get_task(task)
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  found = {}
  for member in tasks:
    manifest = getattr(member.source, "manifest", None)
    if callable(manifest):
      built = manifest()
      found[built.name] = built.fingerprint
  return found
