"""Data for t5x_lite: offline corpora, vocabularies, objectives and seqio tasks.

`register_tasks()` registers every `<corpus>.<objective>` task with seqio.
"""

from t5x_lite.data import mixtures
from t5x_lite.data.corpus_store import CorpusError
from t5x_lite.data.mixtures import WeightedMixture
from t5x_lite.data.objectives import ObjectiveError, span_corruption_lengths
from t5x_lite.data.pipeline import (
           BatchIterator,
           DataError,
           DataSpec,
           check_splits,
           check_vocabulary,
           data_fingerprints,
           get_batches,
           get_task,
)
from t5x_lite.data.tasks import register_tasks

__all__ = ["BatchIterator", "CorpusError", "DataError", "DataSpec", "ObjectiveError",
           "WeightedMixture", "check_splits", "check_vocabulary", "data_fingerprints",
           "get_batches", "get_task", "mixtures", "register_tasks", "span_corruption_lengths"]
