"""`python -m t5x_lite.infer` and `python -m t5x_lite.evaluate` on a freshly trained tiny model."""

import json
import math
import os
import shutil
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from t5x_lite import evaluate, gin_utils, infer
from t5x_lite.inference import decoding, evaluation, multiple_choice, textio
from t5x_lite.models import TransformerConfig
from t5x_lite.runs import loading

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)

TASK = "pydocs.full_lm.byte"


@pytest.fixture(scope="module")
def model_dir(tiny_run_once):
  """The shared 2-step tiny run (these tests only read it; evaluate writes its
  evaluation.json next to it)."""
  return tiny_run_once


def infer_args(model_dir, output, **bindings):
  values = {"CHECKPOINT_PATH": repr(str(model_dir)), "MIXTURE_OR_TASK_NAME": repr(TASK),
            "INFER_OUTPUT": repr(str(output)), "infer.max_new_tokens": 8, **bindings}
  return ["--gin_file=runs/infer.gin", "--gin_file=models/tiny_causal_decoder.gin"] + [
      f"--gin.{key}={value}" for key, value in values.items()]


def loaded_model(model_dir):
  return loading.load_model(str(model_dir))  # the model its run directory recorded


def test_predictions_from_jsonl_skip_bad_lines_and_match_the_decoder(model_dir, tmp_path,
                                                                     capsys):
  inputs = tmp_path / "prompts.jsonl"
  inputs.write_text('{"inputs": "def f(x):"}\nnot json\n{"inputs": ""}\n'
                    '{"inputs": "import os", "targets": " path"}\n')
  output = tmp_path / "predictions.jsonl"
  assert infer.main(infer_args(model_dir, output, INFER_INPUTS=repr(str(inputs)))) == 0
  captured = capsys.readouterr()
  assert "prompts.jsonl:2: skipped" in captured.err and "prompts.jsonl:3: skipped" in captured.err
  rows = [json.loads(line) for line in output.read_text().splitlines()]
  assert [row["inputs"] for row in rows] == ["def f(x):", "import os"]

  model = loaded_model(model_dir)
  prompts = [list(b"def f(x):"), list(b"import os")]
  ids = [[t + 3 for t in p] for p in prompts]  # seqio's byte vocabulary: byte + 3
  expected = decoding.generate(model, textio.padded(ids), max_new_tokens=8)
  np.testing.assert_allclose([row["score"] for row in rows], expected.scores, rtol=1e-5)


def test_score_mode_reports_the_targets_log_likelihood(model_dir, tmp_path):
  inputs = tmp_path / "pairs.jsonl"
  inputs.write_text('{"inputs": "import os", "targets": " path"}\n')
  output = tmp_path / "scores.jsonl"
  assert infer.main(infer_args(model_dir, output, INFER_INPUTS=repr(str(inputs)),
                               **{"infer.mode": "'score'"})) == 0
  row = json.loads(output.read_text())
  model = loaded_model(model_dir)
  expected, tokens = decoding.score(model, [[t + 3 for t in b"import os"]],
                                    [[t + 3 for t in b" path"]])
  assert row["tokens"] == tokens[0] == 5
  assert row["log_likelihood"] == pytest.approx(float(expected[0]), rel=1e-5)


def test_beam_search_from_the_task_split_returns_ranked_beams(model_dir, tmp_path):
  output = tmp_path / "beams.jsonl"
  assert infer.main(infer_args(model_dir, output, **{
      "infer.method": "'beam'", "infer.beams": 3, "infer.num_examples": 2,
      "infer.prompt_length": 16})) == 0
  rows = [json.loads(line) for line in output.read_text().splitlines()]
  assert len(rows) == 2 and all(row["targets"] for row in rows)  # the split's continuation
  for row in rows:
    scores = [beam["score"] for beam in row["beams"]]
    assert scores == sorted(scores, reverse=True) and row["prediction"] == row["beams"][0]["text"]


def test_infer_with_only_the_checkpoint_path_reproduces_the_training_model(model_dir, tmp_path):
  """No model gin file, no task: both come from the run directory, and the model is the
  one training built (same config, same parameters, same logits)."""
  training_config = gin_utils.model_config(["models/tiny_causal_decoder.gin"])
  trained = loading.load_model(str(model_dir), training_config)
  gin_utils.parse([])
  config = gin_utils.checkpoint_model_config(str(model_dir))
  assert config == training_config
  tokens = jnp.asarray([[0, 70, 71, 72, 73]])
  np.testing.assert_array_equal(
      loading.load_model(str(model_dir), config)({"decoder_input_tokens": tokens}),
      trained({"decoder_input_tokens": tokens}))

  inputs = tmp_path / "prompts.txt"
  inputs.write_text("def f(x):\n")
  output = tmp_path / "out.jsonl"
  assert infer.main(["--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
                     f"--gin.INFER_OUTPUT='{output}'", f"--gin.INFER_INPUTS='{inputs}'",
                     "--gin.infer.max_new_tokens=8"]) == 0
  expected = decoding.generate(trained, textio.padded([[t + 3 for t in b"def f(x):"]]),
                               max_new_tokens=8)
  assert json.loads(output.read_text())["score"] == pytest.approx(float(expected.scores[0]),
                                                                   rel=1e-6)


def test_inference_skips_an_unreadable_newest_checkpoint_with_a_warning(model_dir, tmp_path,
                                                                       capsys):
  copy = tmp_path / "run"
  shutil.copytree(model_dir, copy)
  newest = max(int(n) for n in os.listdir(copy / "checkpoints") if n.isdigit())
  for directory, _, names in os.walk(copy / "checkpoints" / str(newest)):
    for name in names:
      if "/d/" in os.path.join(directory, name):  # every array file of that step
        os.truncate(os.path.join(directory, name), 10)
  model = loading.load_model(str(copy))
  err = capsys.readouterr().err
  assert f"checkpoint step {newest} " in err and "is unreadable" in err and "Traceback" not in err
  assert os.path.isdir(copy / "checkpoints" / str(newest))  # read-only: nothing moved
  assert model.config == loading.load_model(str(model_dir)).config


@pytest.mark.parametrize("bindings,message", [
    ({"TransformerConfig.architecture": "'prefix_decoder'"},
     "TransformerConfig.architecture: checkpoint 'causal_decoder', gin 'prefix_decoder'"),
    ({"MIXTURE_OR_TASK_NAME": "'pydocs.full_lm'"},
     "uses 8100 token ids but TransformerConfig.vocab_size is 512"),
    ({"infer.max_new_tokens": 120}, "maximum length 128 allows 7"),
    ({"TransformerConfig.d_model": 96}, "TransformerConfig.d_model: checkpoint 64, gin 96"),
    ({"CHECKPOINT_PATH": "'/nonexistent/run'"}, "does not exist"),
])
def test_bad_requests_are_one_clear_error(model_dir, tmp_path, capsys, bindings, message):
  inputs = tmp_path / "prompts.txt"
  inputs.write_text("hello world\n")
  with pytest.raises(SystemExit) as exit_info:
    infer.main(infer_args(model_dir, tmp_path / "out.jsonl", INFER_INPUTS=repr(str(inputs)),
                          **bindings))
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "out.jsonl").exists()


def test_rank_classification_on_a_hand_checked_example(monkeypatch):
  """Choice log-likelihoods -2.0 (" a", 2 characters) and -3.0 (" bbbbbb", 7): the raw
  score picks " a"; per character (-1.0 vs -0.43) picks " bbbbbb", the label."""
  question = multiple_choice.Question("context", (" a", " bbbbbb"), label=1)
  monkeypatch.setattr(decoding, "score", lambda model, inputs, targets, greedy: (
      np.array([-2.0, -3.0]), None, np.array([True, False])))

  class Vocabulary:
    def encode(self, text):
      return list(text.encode())

  model = SimpleNamespace(config=TransformerConfig(max_length=2048))  # only its positions
  result = multiple_choice.rank_classify(model, Vocabulary(), [question])
  assert result["predictions"] == [0]
  assert (result["accuracy"], result["accuracy_norm"]) == (0.0, 1.0)
  # The continuous views: the label's log-likelihood per token (7 byte tokens), and the
  # Brier score of the renormalised choice probabilities (e^-2, e^-3 -> 0.731, 0.269).
  assert result["answer_logprob_per_token"] == pytest.approx(-3.0 / 7)
  p_wrong = math.exp(-2) / (math.exp(-2) + math.exp(-3))
  assert result["brier"] == pytest.approx(p_wrong ** 2 + (1 - (1 - p_wrong)) ** 2)
  assert result["exact_match"] == 0.0  # greedy decoding gives " a", not the label


def test_few_shot_prompts_answer_other_questions_first():
  questions = [multiple_choice.Question(f"q{i}:", (" yes", " no"), i % 2) for i in range(4)]
  prompts = multiple_choice.prompts(questions, shots=2, seed=0)
  for question, prompt in zip(questions, prompts):
    shots, own = prompt.rsplit("\n\n", 1)
    assert own == question.context and question.context not in shots
    assert shots.count("\n\n") == 1 and (" yes" in shots or " no" in shots)


def test_evaluate_reports_perplexity_and_multiple_choice(model_dir, tmp_path, capsys):
  questions = tmp_path / "mc.jsonl"
  questions.write_text(
      '{"context": "import", "choices": [" os", " zq"], "label": 0}\n'
      '{"context": "def", "choices": [" f():", " xx"], "label": 0}\n'
      '{"context": "x", "choices": [" y"], "label": 0}\n')  # one choice: skipped, line 3
  args = ["--gin_file=runs/evaluate.gin", "--gin_file=models/tiny_causal_decoder.gin",
          f"--gin.CHECKPOINT_PATH='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
          "--gin.TASK_FEATURE_LENGTHS={'targets': 64}", "--gin.evaluate.eval_batches=2",
          f"--gin.evaluate.multiple_choice=['{questions}']", "--gin.evaluate.shots=[0, 1]"]
  assert evaluate.main(args) == 0
  captured = capsys.readouterr()
  assert "mc.jsonl:3: skipped" in captured.err
  results = json.loads((model_dir / "evaluation.json").read_text())
  assert np.isfinite(results["language_modelling"]["perplexity"])
  assert set(results["multiple_choice"]) == {f"{questions}/0-shot", f"{questions}/1-shot"}
  assert results["multiple_choice"][f"{questions}/0-shot"]["questions"] == 2


def test_a_tasks_own_seqio_metrics_are_computed_from_its_predictions_and_scores(model_dir):
  import seqio

  base = seqio.get_mixture_or_task("pydocs.prefix_lm.byte")
  seen = {}

  def exact_match(targets, predictions):
    seen["predict"] = (targets, predictions)
    return {"exact_match": float(np.mean([t == p for t, p in zip(targets, predictions)]))}

  def mean_score(targets, scores):
    seen["score"] = scores
    return {"mean_log_likelihood": float(np.mean(scores))}

  name = "pydocs.prefix_lm.byte.with_metrics"
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(name, source=base.source, preprocessors=base.preprocessors,
                           output_features=base.output_features,
                           metric_fns=[exact_match, mean_score])
  model = loaded_model(model_dir)
  results = evaluation.task_metrics(model, name, "validation", num_examples=2, max_new_tokens=4,
                                  feature_lengths={"inputs": 32, "targets": 32})
  assert set(results) == {"exact_match", "mean_log_likelihood"}
  targets, predictions = seen["predict"]
  assert len(targets) == len(predictions) == 2 and all(len(p) <= 4 for p in predictions)
  assert results["mean_log_likelihood"] == pytest.approx(np.mean(seen["score"]))
  assert results["mean_log_likelihood"] < 0


def test_held_out_multitask_tasks_are_scored_per_task_and_averaged_per_cluster():
  from t5x_lite.data import multitask
  from t5x_lite.models import TransformerConfig, create_model

  sets = multiple_choice.question_sets(["multitask.held_out"], limit=2)
  assert set(sets) == {f"multitask.{task}" for task in multitask.held_out_tasks()}
  for name, questions in sets.items():
    examples = multitask.examples(name.split(".")[1], "validation")
    for question, example in zip(questions, examples):
      assert question.context == example["inputs"]
      assert question.choices[question.label] == " " + example["targets"]
  model = create_model(TransformerConfig(vocab_size=512, d_model=32, num_heads=2, d_ff=64,
                                         num_decoder_layers=1, max_length=2048))
  results = evaluation.report(model, TASK, {"targets": 64}, eval_batches=1,
                                question_sets=sets, metric_examples=0)
  clusters = results["multitask_clusters"]
  assert set(clusters) == {f"{c}/0-shot" for c in multitask.HELD_OUT_CLUSTERS}
  for key, summary in clusters.items():
    members = [outcome for name, outcome in results["multiple_choice"].items()
               if multitask.TASKS[name.split(".")[1].split("/")[0]][0] == key.split("/")[0]]
    assert summary["tasks"] == len(members) == 2
    assert summary["accuracy"] == pytest.approx(np.mean([m["accuracy"] for m in members]))


def test_generation_tasks_are_scored_by_exact_match_and_join_their_cluster(monkeypatch):
  from t5x_lite.data import multitask
  from t5x_lite.models import TransformerConfig, create_model

  sets = multiple_choice.generation_sets(["multitask.docstring_summary", "multitask.held_out"],
                                         limit=3)
  assert list(sets) == ["multitask.docstring_summary"]  # the held-out ones have choices
  assert multiple_choice.question_sets(["multitask.docstring_summary"]) == {}
  examples = sets["multitask.docstring_summary"]
  assert examples == list(multitask.examples("docstring_summary", "validation"))[:3]
  # Exact match up to whitespace: two of three predictions are the targets.
  answers = [" " + examples[0]["targets"] + "\n", "wrong", examples[2]["targets"]]
  monkeypatch.setattr(evaluation.textio, "predict", lambda *args, **kwargs: [
      {"prediction": answer} for answer in answers])
  model = create_model(TransformerConfig(vocab_size=512, d_model=32, num_heads=2, d_ff=64,
                                         num_decoder_layers=1, max_length=2048))
  results = evaluation.report(model, TASK, {"targets": 64}, eval_batches=1,
                                question_sets={}, generation_sets=sets, metric_examples=0)
  outcome = results["generation"]["multitask.docstring_summary/0-shot"]
  assert outcome == {"exact_match": pytest.approx(2 / 3), "examples": 3}
  cluster = results["multitask_clusters"]["summary/0-shot"]
  assert cluster["accuracy"] == pytest.approx(2 / 3) and cluster["chance"] == 0.0


def test_the_zero_shot_suite_has_two_thousand_validation_questions():
  from t5x_lite.data import multitask

  sets = multiple_choice.question_sets([multiple_choice.SUITE])
  assert sum(len(questions) for questions in sets.values()) >= 2000 and len(sets) >= 4
  assert {"pydocs_cloze", "shakespeare_cloze"} <= set(sets)
  for name, questions in sets.items():
    if name.startswith("multitask."):  # validation examples only
      validation = multitask.examples(name.removeprefix("multitask."), "validation")
      assert [q.context for q in questions] == [e["inputs"] for e in validation]


def test_evaluate_writes_every_prediction_and_the_standard_error(model_dir, tmp_path, capsys):
  output = tmp_path / "evaluation.json"
  report = tmp_path / "report.json"  # a curation report: cloze items 1 and 3 were in training
  report.write_text(json.dumps({"contamination": {"pydocs_cloze": {
      "items": {"1": [], "3": []}}}}))
  code = evaluate.main(["--gin_file=runs/evaluate.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
                        "--gin.evaluate.multiple_choice=['pydocs_cloze']",
                        "--gin.evaluate.max_questions=5", "--gin.evaluate.eval_batches=1",
                        "--gin.evaluate.metric_examples=0",
                        f"--gin.evaluate.contamination_report='{report}'",
                        f"--gin.evaluate.output_path='{output}'"])
  assert code == 0
  rows = [json.loads(line) for line in (tmp_path / "evaluation_predictions.jsonl").open()]
  assert [row["index"] for row in rows] == list(range(5))
  outcome = json.loads(output.read_text())["multiple_choice"]["pydocs_cloze/0-shot"]
  assert outcome["accuracy"] == sum(row["correct"] for row in rows) / 5
  assert outcome["stderr"] == pytest.approx((outcome["accuracy"] * (1 - outcome["accuracy"])
                                             / 5) ** 0.5)
  assert f"± {outcome['stderr']:.3f}" in capsys.readouterr().out
  split = json.loads(output.read_text())["contamination"]["pydocs_cloze/0-shot"]
  assert split["dirty"]["questions"] == 2 and split["clean"]["questions"] == 3
  assert split["dirty"]["accuracy"] == (rows[1]["correct"] + rows[3]["correct"]) / 2
  assert split["clean"]["accuracy"] == sum(rows[i]["correct"] for i in (0, 2, 4)) / 3


def test_clean_and_dirty_accuracy_by_hand():
  split = evaluation.contamination_split([True, False, True, True], dirty={1, 3})
  assert split["clean"] == {"accuracy": 1.0, "stderr": 0.0, "questions": 2}
  assert split["dirty"]["accuracy"] == 0.5
  assert split["dirty"]["stderr"] == pytest.approx((0.5 * 0.5 / 2) ** 0.5)
  assert split["all"] == 0.75 and split["clean_minus_all"] == 0.25
  assert evaluation.contamination_split([True], dirty=set())["dirty"]["accuracy"] is None
