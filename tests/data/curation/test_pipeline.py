"""The curation pipeline end to end on a hand-written corpus: every document meant to fail
one step is removed by that step for the stated reason, planted PII is replaced and
nothing else is, a planted evaluation item is found, duplicates go, and the result is a
corpus the project's tasks read. Changing a threshold names (and builds) another corpus."""

import json
import os
import random

import pytest
import seqio

from t5x_lite import curate
from t5x_lite.common.errors import ConfigError
from t5x_lite.data import register_tasks
from t5x_lite.data.corpus_store import CorpusError
from t5x_lite.data.curation import eval_sets, pipeline, report
from t5x_lite.data.curation.config import CurationConfig

WORDS = ("the of and to in is was for on that with as by at from this which are be it "
         "river garden window morning letter village summer winter doctor teacher music "
         "evening kitchen market station harbor forest mountain valley castle bridge "
         "painter farmer sailor writer student captain soldier merchant baker walked "
         "carried opened painted watched followed gathered finished borrowed answered "
         "quiet bright heavy narrow ancient gentle distant golden patient careful").split()


def sentence(rng: random.Random) -> str:
  words = [rng.choice(WORDS) for _ in range(rng.randint(9, 14))]
  return " ".join(words).capitalize() + "."


def good_document(rng: random.Random) -> str:
  """Five lines of three sentences: passes Gopher's and C4's published thresholds."""
  return "\n".join(" ".join(sentence(rng) for _ in range(3)) for _ in range(5))


PII_LINE = ("Write to ada.lovelace@example.org or call (415) 555-0132 or +44 20 7946 0958; "
            "the mirror is at 8.8.8.8 and the router at 192.168.0.1, version 3.11.2, "
            "released 2024-01-15.")
PII_REDACTED = ("Write to <EMAIL> or call <PHONE_NUMBER> or <PHONE_NUMBER>; "
                "the mirror is at <IP_ADDRESS> and the router at 192.168.0.1, version 3.11.2, "
                "released 2024-01-15.")


def corpus() -> dict[str, str]:
  rng = random.Random(0)
  docs = {f"good{i}": good_document(rng) for i in range(10)}
  # Forty distinct words: under Gopher's 50 (and long enough that one 4-gram is under
  # 16% of the characters, which the repetition filter checks first).
  docs["short"] = ("Every single one of these forty words differs from all its neighbours, "
                   "so only a length rule can object here. Gopher wants fifty at least; "
                   "this page stops early because brevity makes tests quick, clear, "
                   "honest and rather pleasant to read twice over.")
  line = sentence(rng) + " " + sentence(rng)
  docs["repetitive"] = "\n".join([line] * 8)
  docs["lorem"] = good_document(rng) + "\nLorem ipsum dolor sit amet, consectetur adipiscing."
  docs["exact_copy"] = "  " + docs["good0"].replace(" ", "  ", 5) + "\n"
  near = docs["good1"].split(" ")
  near[7] = "lighthouse"
  docs["near_copy"] = " ".join(near)
  cloze = eval_sets.items("pydocs_cloze")[5]
  # Ending in a full stop, or C4's line filter would drop the line first.
  docs["contaminated"] = good_document(rng) + "\n" + cloze.text + "."
  docs["pii"] = good_document(rng) + "\n" + PII_LINE
  return docs


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
  root = tmp_path_factory.mktemp("curation")
  docs = corpus()
  with open(root / "input.jsonl", "w") as handle:
    for name, text in docs.items():
      handle.write(json.dumps({"text": text, "name": name}) + "\n")
  config = CurationConfig(inputs=(str(root / "input.jsonl"),), output_dir=str(root / "out"))
  built = pipeline.curate(config)
  names = {f"{root / 'input.jsonl'}/{index}": name for index, name in enumerate(docs)}
  return built, config, names, docs


def removed_by(built, names) -> dict[str, tuple[str, str]]:
  """{document name: (step, reason)} of every removed document."""
  work = built.directory + ".work"
  found = {}
  for row in built.report["steps"]:
    for record in report.read_jsonl_folder(os.path.join(work, "removed", row["step"])):
      reason = (record.get("metadata") or {}).get("filter_reason") or "duplicate"
      found[names[record["id"]]] = (row["step"], reason)
  return found


def test_each_fault_is_removed_by_its_step_for_its_reason(curated):
  built, _, names, _ = curated
  assert removed_by(built, names) == {
      "short": ("gopher_quality", "gopher_short_doc"),
      "repetitive": ("gopher_repetition", "dup_line_frac"),
      "lorem": ("c4_quality", "lorem_ipsum"),
      "exact_copy": ("exact_dedup", "duplicate"),
      "near_copy": ("minhash_dedup", "duplicate"),
      "contaminated": ("decontaminate", "contaminated"),
  }
  rows = {row["step"]: row for row in built.report["steps"]}
  assert rows["gopher_repetition"]["documents_in"] == 17
  assert built.report["documents_out"] == 11
  assert built.manifest.documents["train"] + built.manifest.documents["validation"] == 11
  assert rows["c4_quality"]["samples"]["lorem_ipsum"][0]["text"].startswith(
      curated[3]["lorem"][:40])


def test_redaction_replaces_every_planted_pii_and_nothing_else(curated):
  built, _, names, docs = curated
  kept = {names[r["id"]]: r["text"] for r in
          report.read_jsonl_folder(os.path.join(built.directory + ".work", "data", "curated"))}
  assert kept["pii"] == docs["pii"].replace(PII_LINE, PII_REDACTED)
  for name, text in kept.items():
    if name != "pii":
      assert text == docs[name], name
  assert built.report["redactions"] == {"email": {"replaced": 1, "documents": 1},
                                        "ip": {"replaced": 1, "documents": 1},
                                        "phone": {"replaced": 2, "documents": 1}}


def test_report_names_the_contaminated_item_and_the_duplicate_cluster(curated):
  built = curated[0]
  cloze = built.report["contamination"]["pydocs_cloze"]
  assert cloze["contaminated"] == 1 and list(cloze["items"]) == ["5"]
  assert all(s["contaminated"] == 0 for name, s in built.report["contamination"].items()
             if name != "pydocs_cloze")
  minhash = built.report["minhash"]
  assert minhash["clusters"] == 1 and minhash["cluster_sizes"] == {"2": 1}
  assert minhash["samples"][0]["kept"]["text"].startswith(curated[3]["good1"][:40])
  assert os.path.isfile(os.path.join(built.directory, "report.md"))


def test_the_curated_corpus_is_found_again_and_a_changed_threshold_builds_another(curated):
  built, config, _, _ = curated
  again = pipeline.curate(config)
  assert again.manifest == built.manifest
  looser = CurationConfig(inputs=config.inputs,
                          settings={"gopher_quality": {"min_doc_words": 5}})
  assert looser.fingerprint("x") != config.fingerprint("x")
  with pytest.raises(CorpusError, match="other inputs or settings"):
    pipeline.curate(CurationConfig(inputs=config.inputs, output_dir=config.output_dir,
                                   settings={"gopher_quality": {"min_doc_words": 5}}))


def test_a_training_task_reads_the_curated_corpus(curated):
  built, config, _, docs = curated
  register_tasks(curation=config)
  try:
    dataset = seqio.get_mixture_or_task("curated.full_lm.byte").source.get_dataset(
        "train", shuffle=False)
    texts = {example["text"].decode() for example in dataset.as_numpy_iterator()}
  finally:
    register_tasks(curation=CurationConfig())
  assert texts and texts <= {text for text in docs.values()} | {
      docs["pii"].replace(PII_LINE, PII_REDACTED)}
  assert docs["lorem"] not in texts


def test_everything_removed_is_one_clear_error(tmp_path):
  path = tmp_path / "short.jsonl"
  path.write_text(json.dumps({"text": "Too short."}) + "\n")
  with pytest.raises(CorpusError, match="no document survived stage"):
    pipeline.curate(CurationConfig(inputs=(str(path),), output_dir=str(tmp_path / "out"),
                                   steps=("gopher_quality", "exact_dedup")))


def test_unreadable_input_is_one_clear_error(tmp_path):
  path = tmp_path / "latin1.txt"
  path.write_bytes("caf\xe9".encode("latin-1"))
  with pytest.raises(CorpusError, match="not UTF-8"):
    pipeline.curate(CurationConfig(inputs=(str(path),), output_dir=str(tmp_path / "out")))
  with pytest.raises(CorpusError, match="matches no"):
    pipeline.curate(CurationConfig(inputs=(str(tmp_path / "missing/*.jsonl"),)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=("gopher_quality", "dedupe")), "unknown curation step 'dedupe'"),
    (dict(steps=("pii", "pii")), "twice"),
    (dict(settings={"gopher_quality": {"min_words": 3}}), "no setting 'min_words'"),
    (dict(settings={"pii": {"phones": False}}, steps=("gopher_quality",)), "not in curation.steps"),
    (dict(settings={"decontaminate": {"action": "drop"}}), "'remove' or 'flag'"),
    (dict(settings={"decontaminate": {"sets": ["mmlu"]}}), "unknown evaluation set 'mmlu'"),
    (dict(settings={"minhash_dedup": {"num_buckets": 0}}), "positive integer"),
    (dict(executor="spark"), "executor must be one of"),
    (dict(tasks=0), "curation.tasks must be a positive integer"),
    (dict(inputs=()), "inputs is empty"),
])
def test_bad_settings_are_one_clear_error_each(kwargs, message):
  with pytest.raises(ConfigError, match=message):
    CurationConfig(**kwargs)


def test_a_changed_threshold_builds_a_second_corpus_in_the_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("T5X_LITE_CACHE", str(tmp_path / "cache"))
  path = tmp_path / "docs.jsonl"
  rng = random.Random(1)
  path.write_text("".join(json.dumps({"text": good_document(rng)}) + "\n" for _ in range(6)))
  built = [pipeline.curate(CurationConfig(inputs=(str(path),), steps=("gopher_quality",),
                                          settings={"gopher_quality": {"min_doc_words": n}}))
           for n in (50, 40, 50)]
  assert built[0].directory != built[1].directory
  assert built[2].directory == built[0].directory
  assert built[0].directory.startswith(str(tmp_path / "cache" / "curated-"))
  assert (built[1].manifest.provenance["settings"]["steps"]["gopher_quality"]
          ["min_doc_words"] == 40)


def test_the_command_refuses_an_unknown_step_with_exit_2(capsys):
  with pytest.raises(SystemExit) as exit_info:
    curate.main(["--gin.curation.steps=['gopher_quality', 'dedupe']"])
  assert exit_info.value.code == 2
  assert "unknown curation step 'dedupe'" in capsys.readouterr().err
