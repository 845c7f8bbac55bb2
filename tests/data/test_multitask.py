"""The offline multitask mixture: enough task types and clusters, several templates
each, held-out clusters never trained on, examples-proportional rates under T5's cap,
answer choices that contain the answer, validation drawn from unseen documents."""

import pytest
import seqio

from t5x_lite.data import multitask


def test_task_types_clusters_and_templates():
  clusters = {cluster for cluster, _, _ in multitask.TASKS.values()}
  assert len(multitask.TASKS) >= 8 and len(clusters) >= 4
  assert set(multitask.HELD_OUT_CLUSTERS) < clusters
  for task in multitask.TASKS:
    assert len(multitask.templates()[task]) >= 2, task


def test_held_out_tasks_never_appear_in_the_training_mixture():
  training = {t.name for t in seqio.get_mixture_or_task("multitask.train").tasks}
  held_out = {t.name for t in seqio.get_mixture_or_task("multitask.held_out").tasks}
  assert training and held_out and not training & held_out
  for name in held_out:
    assert multitask.TASKS[name.split(".")[1]][0] in multitask.HELD_OUT_CLUSTERS
  assert len(training) + len(held_out) == len(multitask.TASKS)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_mixture_rates_are_examples_proportional_under_the_cap():
  mixture = seqio.get_mixture_or_task("multitask.train.byte")
  sizes = {task.name: task.num_input_examples("train") for task in mixture.tasks}
  for task in mixture.tasks:
    assert mixture.get_rate(task) == min(sizes[task.name], multitask.RATE_CAP)
  # Both regimes occur, so the cap is exercised: some tasks capped, some proportional.
  assert max(sizes.values()) > multitask.RATE_CAP > min(sizes.values())


def test_examples_are_deterministic_with_choices_and_unseen_validation_documents():
  for task in multitask.TASKS:
    train, validation = multitask.examples(task, "train"), multitask.examples(task, "validation")
    assert len(train) > 100 and len(validation) > 10, task
    for example in train[:50] + validation[:50]:
      assert example["targets"].strip()
      if example["choices"]:
        assert example["targets"] in example["choices"]
    assert not {e["inputs"] for e in train} & {e["inputs"] for e in validation}
    assert {e["template"] for e in train} == set(range(len(multitask.templates()[task])))
  first = multitask.examples("play_name", "validation")
  multitask.examples.cache_clear()
  assert multitask.examples("play_name", "validation") == first
