"""The lm-evaluation-harness model (interop/lm_eval.py): it scores what t5x_lite's own
scorer scores, generates what greedy decoding generates, and runs the offline harness
tasks end to end."""

import json
import os

import numpy as np
import pytest
import seqio
from lm_eval.api.instance import Instance

from t5x_lite import lm_eval as command
from t5x_lite.inference import decoding, multiple_choice, textio
from t5x_lite.inference.harness import HarnessError, T5xLiteLM, cut_at_stop, offline_tasks
from t5x_lite.models import TransformerConfig, create_model

pytestmark = pytest.mark.slow  # end-to-end runs (see pytest.ini)

VOCABULARY = seqio.ByteVocabulary()
ARCHITECTURES = ("causal_decoder", "prefix_decoder", "encoder_decoder")


def tiny(architecture: str, max_length: int = 48, **knobs) -> "T5xLiteLM":
  config = TransformerConfig(architecture=architecture, vocab_size=384, d_model=32,
                             num_heads=2, head_dim=16, d_ff=64, num_decoder_layers=2,
                             num_encoder_layers=2 if architecture == "encoder_decoder" else 0,
                             max_length=max_length, **knobs)
  return T5xLiteLM(model=create_model(config), vocabulary=VOCABULARY, batch_size=3)


def requests(kind: str, args: list) -> list[Instance]:
  return [Instance(kind, {}, a, index) for index, a in enumerate(args)]


# A mixture-of-experts decoder with a capacity that drops tokens: scores do not depend on
# how the harness or the scorer batch and pad the requests.
MOE = {"num_experts": 4, "moe_top_k": 2, "moe_capacity_factor": 0.5}


@pytest.mark.parametrize("architecture, knobs", [*((a, {}) for a in ARCHITECTURES),
                                                 ("causal_decoder", MOE)],
                         ids=[*ARCHITECTURES, "moe_decoder"])
def test_loglikelihood_is_the_project_scorer_including_truncated_contexts(architecture, knobs):
  harness = tiny(architecture, **knobs)
  pairs = [("def f(x):", " return x"), ("import", " os"), ("", " start"),
           ("x" * 100, " a context longer than the model")]
  results = harness.loglikelihood(requests("loglikelihood", pairs))
  limit = harness.model.config.max_length
  contexts, continuations = [], []
  for context, continuation in pairs:
    tokens = list(VOCABULARY.encode(continuation))
    context_tokens = list(VOCABULARY.encode(context))
    room = limit if architecture == "encoder_decoder" else limit - len(tokens)
    context_tokens = context_tokens[-room:] or ([1] if architecture == "encoder_decoder" else [])
    contexts.append(context_tokens)
    continuations.append(tokens)
  expected, _, greedy = decoding.score(harness.model, contexts, continuations, greedy=True)
  np.testing.assert_allclose([value for value, _ in results], expected, rtol=1e-5, atol=1e-5)
  assert [flag for _, flag in results] == list(greedy)
  assert len(contexts[3]) < 100  # the long context was cut on the left


def test_a_context_longer_than_the_model_is_refused_when_asked():
  harness = tiny("causal_decoder")
  harness.truncation = "error"
  with pytest.raises(HarnessError, match="does not fit the model's 48 positions"):
    harness.loglikelihood(requests("loglikelihood", [("x" * 100, " y")]))
  with pytest.raises(HarnessError, match="cannot be scored"):
    tiny("causal_decoder").loglikelihood(requests("loglikelihood", [("x", " y" * 40)]))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("max_length", [4096, 48], ids=["fits", "truncated"])
def test_harness_scores_equal_rank_classification_truncated_or_not(architecture, max_length):
  # One truncation rule (ArchitectureSpec.scoring_context): with 48 positions every
  # 3-shot context is cut, and both scorers cut it the same way.
  harness = tiny(architecture, max_length)
  questions = multiple_choice.read_questions("pydocs_cloze")[:6]
  contexts = multiple_choice.prompts(questions, shots=3)
  args = [(context, choice) for context, q in zip(contexts, questions) for choice in q.choices]
  harness_scores = [value for value, _ in harness.loglikelihood(requests("loglikelihood", args))]
  ours = multiple_choice.rank_classify(harness.model, VOCABULARY, questions, shots=3,
                                       batch_size=4)
  scores = iter(harness_scores)
  assert [int(np.argmax([next(scores) for _ in q.choices])) for q in questions] == (
      ours["predictions"])
  if max_length == 48:
    assert ours["truncated_contexts"] == len(questions) and ours["truncated_tokens_max"] > 0
  else:
    assert ours["truncated_contexts"] == 0


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_generate_until_is_greedy_decoding_cut_at_the_stop_sequence(architecture):
  harness = tiny(architecture)
  prompts = ["def f(x):", "import os"]
  greedy = textio.predict(harness.model, [list(VOCABULARY.encode(p)) for p in prompts],
                             VOCABULARY, method="greedy", max_new_tokens=12, temperature=0.0,
                             top_k=0, top_p=1.0, beams=1, alpha=0.0, batch_size=2, seed=0)
  full = [g["prediction"] for g in greedy]
  stop = full[0][3:5] if len(full[0]) > 5 else "\n"  # a stop sequence that occurs
  outputs = harness.generate_until(requests("generate_until", [
      (prompts[0], {"until": [stop], "max_gen_toks": 12}),
      (prompts[1], {"until": [], "max_gen_toks": 12})]))
  assert outputs == [full[0][:full[0].find(stop)] if stop in full[0] else full[0], full[1]]


def test_stop_sequences_cut_at_the_first_one():
  assert cut_at_stop("a. b\nc", ["\n", "."]) == "a"
  assert cut_at_stop("abc", ["x"]) == "abc"


def test_rolling_loglikelihood_predicts_every_token_once():
  harness = tiny("causal_decoder")
  text = "hello world, " * 8  # 104 bytes: three windows of the model's 48 positions
  (total,) = harness.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))
  tokens = list(VOCABULARY.encode(text))
  # The harness's windows by hand (BOS takes one of the 48 positions): 47 tokens after
  # BOS, the next 47 after the token before them, and the last 10 after as many
  # preceding tokens as fill the window.
  expected = decoding.score(harness.model, [[]], [tokens[:47]])[0][0]
  expected += decoding.score(harness.model, [tokens[46:47]], [tokens[47:94]])[0][0]
  expected += decoding.score(harness.model, [tokens[56:94]], [tokens[94:]])[0][0]
  assert total == pytest.approx(expected, rel=1e-5)
  short = "a text that fits one window"
  (whole,) = harness.loglikelihood_rolling(requests("loglikelihood_rolling", [(short,)]))
  assert whole == pytest.approx(decoding.score(harness.model, [[]], [list(
      VOCABULARY.encode(short))])[0][0], rel=1e-5)


def test_offline_tasks_run_end_to_end_on_a_checkpoint(tiny_run_once, tmp_path, capsys):
  output = tmp_path / "results.json"
  # A curation report finding cloze item 1 and same_play item 0 in the training corpus.
  report = tmp_path / "report.json"
  report.write_text(json.dumps({"contamination": {
      "pydocs_cloze": {"items": {"1": []}}, "multitask.same_play": {"items": {"0": []}}}}))
  code = command.main([f"--gin.CHECKPOINT_PATH='{tiny_run_once}'", "--tasks",
                       "t5x_lite_pydocs_cloze,t5x_lite_held_out,t5x_lite_docstring_summary",
                       "--limit", "3", "--output_path", str(output),
                       "--contamination_report", str(report)])
  assert code == 0
  written = json.loads(output.read_text())
  for task, dirty in (("t5x_lite_pydocs_cloze", 1), ("t5x_lite_same_play", 0)):
    correct = {s["doc_id"]: s["acc"] for s in written["samples"][task]}
    split = written["contamination"][task]
    assert split["dirty"] == {"accuracy": correct[dirty], "stderr": 0.0, "questions": 1}
    clean = [v for doc, v in correct.items() if doc != dirty]
    assert split["clean"]["accuracy"] == pytest.approx(sum(clean) / 2)
    assert split["all"] == pytest.approx(written["results"][task]["acc,none"])
  assert set(written["contamination"]) == {"t5x_lite_pydocs_cloze", "t5x_lite_same_play"}
  results = written["results"]
  assert {"t5x_lite_pydocs_cloze", "t5x_lite_held_out", "t5x_lite_same_play",
          "t5x_lite_docstring_summary"} <= set(results)
  assert 0 <= results["t5x_lite_pydocs_cloze"]["acc,none"] <= 1
  assert "exact_match,strip" in results["t5x_lite_docstring_summary"]
  out = capsys.readouterr().out
  assert "t5x_lite_held_out: acc" in out and "t5x_lite_pydocs_cloze: clean " in out
  assert "t5x_lite_held_out" in offline_tasks()


def exit_code(argv) -> int:
  try:
    return command.main(argv)
  except SystemExit as exit_info:
    return exit_info.code


def test_bad_harness_input_is_one_clear_error(tiny_run_once, tmp_path, capsys):
  assert exit_code([f"--gin.CHECKPOINT_PATH='{tiny_run_once}'", "--tasks", "no_such_task"]) == 2
  assert "knows no task ['no_such_task']" in capsys.readouterr().err
  bare = tmp_path / "bare"
  os.makedirs(bare)
  os.symlink(tiny_run_once / "checkpoints", bare / "checkpoints")
  assert exit_code([f"--gin.CHECKPOINT_PATH='{bare}'"]) == 2  # no spec.json: no vocabulary
  assert "records no model configuration" in capsys.readouterr().err
  assert exit_code([]) == 2
  assert "CHECKPOINT_PATH" in capsys.readouterr().err
