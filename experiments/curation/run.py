"""What each curation step buys, measured on planted faults (CPU scale).

  python experiments/curation/run.py [--work_dir /tmp/t5x_lite_curation] [--quick]

1. A corpus with known faults: 400 documents of the embedded corpora (pydocs and
   Shakespeare, alternating) and, planted at known places, 30 passages repeated 1, 8 or
   32 times (half the copies exact, half with two words changed: near-duplicates), 60
   low-quality pages (repeated spam lines, lorem ipsum, navigation link lists), 50 of the
   pydocs cloze questions pasted into documents whole, and 30 documents carrying an
   email address, a public IP address and a phone number. 60 further documents are the
   clean held-out set no training corpus contains.
2. The pipeline (python -m t5x_lite.curate's, gin/curation/default.gin) on it twice:
   with the published thresholds, and with thresholds loosened for code documentation and
   verse (study.gin). Each step's precision and recall against the planted ground truth.
3. The quick-start model trained at equal compute (same steps, batch and length) on the
   raw corpus and on the loosened curation's corpus: validation loss on the clean
   held-out set; memorisation of the repeated passages (the rate at which greedy decoding
   continues a passage's first 32 tokens with its next 32 exactly, Carlini et al. 2022 /
   Lee et al. 2022, by number of copies); the pydocs cloze accuracy on its clean and its
   planted (contaminated) questions apart, from the raw corpus's decontamination report.

Writes results.json, results.md and curation.png here (--quick: a smoke run into the
work directory only). Runs resume.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from typing import Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from t5x_lite.common import files  # noqa: E402
from t5x_lite.data import pydocs, shakespeare, vocabularies  # noqa: E402
from t5x_lite.data.curation import eval_sets, pipeline, report  # noqa: E402
from t5x_lite.data.curation.config import CurationConfig  # noqa: E402
from t5x_lite.inference import decoding  # noqa: E402
from t5x_lite.runs import loading  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BASE, HELDOUT = 1200, 60
COPIES = (1, 8, 32)
PASSAGES_PER_GROUP = 10
PLANTED_ITEMS = 50
PII_DOCUMENTS = 30
LOW_QUALITY = 20  # of each kind
PREFIX, CONTINUATION = 32, 32
# Loosened for code documentation and verse: Gopher's alphabetic-word ratio and stop-word
# count and C4's terminal-punctuation line rule are written for web prose.
LOOSENED = {"gopher_quality": {"max_non_alpha_words_ratio": None, "min_stop_words": None,
                               "min_doc_words": 20},
            "c4_quality": {"filter_no_terminal_punct": False, "min_num_sentences": -1,
                           "min_words_per_line": -1, "filter_curly_bracket": False}}


# The study plants pydocs cloze questions, so it decontaminates against that set (the
# multitask sets are cut from the same documents as the corpus: every piece would match).
DECONTAMINATE = {"action": "remove", "sets": ["pydocs_cloze"]}


class Scale:
  def __init__(self, quick: bool):
    self.steps = 20 if quick else 300
    self.base, self.heldout = (60, 10) if quick else (BASE, HELDOUT)
    self.items, self.pii, self.low_quality = (10, 5, 5) if quick else (
        PLANTED_ITEMS, PII_DOCUMENTS, LOW_QUALITY)


def chunks(text: str, longest: int = 4000) -> list[str]:
  """A document cut at paragraph breaks into pieces of at most `longest` characters."""
  pieces, current = [], ""
  for paragraph in text.split("\n\n"):
    if current and len(current) + len(paragraph) + 2 > longest:
      pieces.append(current)
      current = ""
    current = f"{current}\n\n{paragraph}" if current else paragraph
  return pieces + [current] if current else pieces


def normalized(text: str) -> str:
  return " ".join(text.lower().split())


def source_documents(count: int) -> list[str]:
  """Pieces of 400-4000 characters of both embedded corpora's documents, alternating
  between them, leaving out every piece that holds a cloze question's context: the cloze
  set was cut from the pydocs documents, and the study plants its own contamination."""
  contexts = [normalized(item.text)[:80] for item in eval_sets.items("pydocs_cloze")]

  def pieces(documents):
    for text in documents():
      yield from (piece for piece in chunks(text) if len(piece) >= 400
                  and not any(c in normalized(piece) for c in contexts))

  chosen = []
  for pair in zip(pieces(pydocs.documents), pieces(shakespeare.documents)):
    chosen += pair
    if len(chosen) >= count:
      break
  return chosen[:count]


def perturb(text: str, rng: random.Random) -> str:
  words = text.split(" ")
  for index in rng.sample(range(len(words)), 2):
    words[index] = rng.choice(("quietly", "meanwhile", "however", "indeed"))
  return " ".join(words)


def low_quality(kind: str, rng: random.Random) -> str:
  if kind == "spam":
    line = rng.choice(("Click here to subscribe now!", "Buy cheap watches online today!",
                       "Best deals, limited offer, act now!"))
    return "\n".join([line] * rng.randint(15, 30))
  if kind == "lorem":
    return ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod "
            "tempor incididunt ut labore et dolore magna aliqua. ") * rng.randint(3, 8)
  links = ["Home", "About", "Contact", "Blog", "Shop", "Login", "Careers", "Press", "FAQ"]
  return "\n".join(" | ".join(rng.sample(links, 5)) for _ in range(rng.randint(10, 20)))


def pii_line(index: int) -> tuple[str, list[str]]:
  email = f"user{index}.name@mail{index}.org"
  ip = f"{23 + index}.{45 + index}.{67 + index}.{89 + index}"
  phone = f"(415) 555-{1000 + index:04d}"
  return f"Contact {email}, server {ip}, phone {phone}.", [email, ip, phone]


def build_corpus(work_dir: str, scale: Scale) -> dict:
  """Writes raw.jsonl (training) and heldout.jsonl; returns the ground truth."""
  rng = random.Random(0)
  documents = source_documents(scale.base + scale.heldout + len(COPIES) * PASSAGES_PER_GROUP)
  heldout = documents[:scale.heldout]
  passages = documents[scale.heldout:scale.heldout + len(COPIES) * PASSAGES_PER_GROUP]
  base = documents[scale.heldout + len(passages):]
  rows = [{"text": t, "label": "clean"} for t in base]
  cloze = eval_sets.items("pydocs_cloze")
  for item in cloze[:scale.items]:
    index = rng.randrange(len(base))
    rows[index]["text"] += "\n" + item.text + "."
    rows[index]["label"] = "planted_item"
  planted_pii = []
  for number, index in enumerate(rng.sample(
      [i for i, r in enumerate(rows) if r["label"] == "clean"], scale.pii)):
    line, strings = pii_line(number)
    rows[index]["text"] += "\n" + line
    rows[index]["label"] = "pii"
    planted_pii += strings
  for kind in ("spam", "lorem", "links"):
    rows += [{"text": low_quality(kind, rng), "label": "low_quality", "kind": kind}
             for _ in range(scale.low_quality)]
  groups = {}
  for group, copies in enumerate(COPIES):
    for p in range(PASSAGES_PER_GROUP):
      passage = passages[group * PASSAGES_PER_GROUP + p]
      groups[passage] = copies
      for copy in range(copies):
        text = passage if copy % 2 == 0 else perturb(passage, rng)
        rows.append({"text": text, "label": "copy" if copies > 1 else "clean",
                     "copies": copies, "passage": len(groups) - 1})
  order = list(range(len(rows)))
  rng.shuffle(order)
  rows = [rows[i] for i in order]
  with open(os.path.join(work_dir, "raw.jsonl"), "w") as handle:
    for row in rows:
      handle.write(json.dumps(row) + "\n")
  with open(os.path.join(work_dir, "heldout.jsonl"), "w") as handle:
    for text in heldout:
      handle.write(json.dumps({"text": text}) + "\n")
  return {"labels": [r["label"] for r in rows], "passages": groups,
          "passage_of": [r.get("passage") for r in rows],
          "planted_items": list(range(scale.items)), "planted_pii": planted_pii}


STEP_TARGETS = {"gopher_repetition": "low_quality", "gopher_quality": "low_quality",
                "c4_quality": "low_quality", "exact_dedup": "copy", "minhash_dedup": "copy",
                "decontaminate": "planted_item"}


def precision_recall(curated: pipeline.Curated, truth: dict, source: str) -> dict:
  """Each removing step's precision (removed documents that carried its fault) and recall
  (documents with its fault it removed), and redaction's over the planted strings."""
  work = curated.directory + ".work"
  labels = truth["labels"]
  removed_by = {}
  for row in curated.report["steps"]:
    for record in report.read_jsonl_folder(os.path.join(work, "removed", row["step"])):
      removed_by[int(record["id"].rsplit("/", 1)[1])] = row["step"]
  results = {}
  for step, fault in STEP_TARGETS.items():
    removed = [i for i, s in removed_by.items() if s == step]
    hits = sum(labels[i] == fault for i in removed)
    # Quality filters share their target: recall counts the faults this step removed
    # among those that reached it.
    reached = [i for i, label in enumerate(labels) if label == fault
               and (removed_by.get(i) is None or list(STEP_TARGETS).index(removed_by[i])
                    >= list(STEP_TARGETS).index(step))]
    # Deduplication's recall needs the copies that reached it less one per passage: only
    # over both of its steps together (below).
    recall = None if fault == "copy" or not reached else hits / len(reached)
    results[step] = {"removed": len(removed), "precision": hits / len(removed) if removed
                     else None, "recall": recall,
                     "clean_removed": sum(labels[i] in ("clean", "pii") for i in removed)}
  quality = [i for i, s in removed_by.items() if s in ("gopher_repetition", "gopher_quality",
                                                         "c4_quality")]
  results["quality_filters"] = {
      "removed": len(quality), "recall": sum(labels[i] == "low_quality" for i in quality)
      / labels.count("low_quality"),
      "precision": sum(labels[i] == "low_quality" for i in quality) / max(len(quality), 1)}
  dedup = [i for i, s in removed_by.items() if s in ("exact_dedup", "minhash_dedup")]
  # The copies deduplication should remove: of each repeated passage, all but one of the
  # copies the quality filters left.
  reaching: dict[int, int] = {}
  for i, passage in enumerate(truth["passage_of"]):
    if labels[i] == "copy" and removed_by.get(i) not in (
        "gopher_repetition", "gopher_quality", "c4_quality"):
      reaching[passage] = reaching.get(passage, 0) + 1
  extra = sum(count - 1 for count in reaching.values())
  results["deduplication"] = {"removed": len(dedup), "recall": sum(
      labels[i] == "copy" for i in dedup) / extra if extra else None, "precision": sum(
      labels[i] == "copy" for i in dedup) / max(len(dedup), 1)}
  kept = "\n".join(r["text"] for r in report.read_jsonl_folder(os.path.join(work, "data",
                                                                             "curated")))
  pii = truth["planted_pii"]
  surviving_docs = [i for i, label in enumerate(labels) if label == "pii" and i not in removed_by]
  left = sum(s in kept for s in pii)
  redactions = sum(v["replaced"] for v in curated.report.get("redactions", {}).values())
  expected = 3 * len(surviving_docs)
  results["pii"] = {"planted_in_kept_documents": expected, "left_unredacted": left,
                    "recall": (expected - left) / expected if expected else None,
                    "replacements": redactions,
                    "precision": (expected - left) / redactions if redactions else None}
  return results


def curate(work_dir: str, name: str, settings: dict, action: str = "remove",
           steps: Optional[Sequence[str]] = None) -> pipeline.Curated:
  config = CurationConfig(inputs=(os.path.join(work_dir, "raw.jsonl"),),
                          settings={**settings, "decontaminate": {
                              "action": action, "sets": ["pydocs_cloze"]}},
                          output_dir=os.path.join(work_dir, name),
                          **({"steps": tuple(steps)} if steps else {}))
  print(f"== curate {name}", flush=True)
  with open(os.devnull, "w") as quiet:
    return pipeline.curate(config, stream=quiet)


def train(work_dir: str, name: str, bindings: list[str], scale: Scale) -> str:
  model_dir = os.path.join(work_dir, name)
  os.makedirs(model_dir, exist_ok=True)
  command = [sys.executable, "-m", "t5x_lite.train", "--gin_file=runs/quickstart.gin",
             *[f"--gin.{b}" for b in [f"MODEL_DIR = '{model_dir}'", f"TRAIN_STEPS = {scale.steps}",
                                      "train.checkpoint_every = 100000", *bindings]]]
  print(f"== train {name}", flush=True)
  with open(os.path.join(model_dir, "train.log"), "a") as log:
    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
  if done.returncode:
    raise RuntimeError(f"{name} failed (exit {done.returncode}); see {model_dir}/train.log")
  return model_dir


def evaluate(model_dir: str, work_dir: str, contamination: str) -> dict:
  output = os.path.join(model_dir, "study_evaluation.json")
  if not os.path.exists(output):
    subprocess.run([sys.executable, "-m", "t5x_lite.evaluate", "--gin_file=runs/evaluate.gin",
                    f"--gin.CHECKPOINT_PATH='{model_dir}'",
                    f"--gin.text_files_corpus.patterns=['{work_dir}/heldout.jsonl']",
                    "--gin.evaluate.task='text_files.full_lm'", "--gin.evaluate.split='train'",
                    "--gin.evaluate.eval_batches=16", "--gin.evaluate.metric_examples=0",
                    f"--gin.evaluate.contamination_report='{contamination}'",
                    f"--gin.evaluate.output_path='{output}'"], check=True,
                   stdout=subprocess.DEVNULL)
  with open(output) as handle:
    return json.load(handle)


def memorisation(model_dir: str, truth: dict) -> dict[str, dict[str, float]]:
  """Per number of copies: the share of passages whose next 32 tokens greedy decoding
  reproduces from their first 32 (exact), and those 32 tokens' mean loss (nats per token,
  the continuous view of the same thing)."""
  model = loading.load_model(model_dir)
  vocabulary = vocabularies.default_vocabulary()
  by_copies: dict[int, list[tuple[bool, float]]] = {}
  for passage, copies in truth["passages"].items():
    tokens = list(vocabulary.encode(passage))
    if len(tokens) < PREFIX + CONTINUATION:
      continue
    logprob, _, exact = decoding.score(model, [tokens[:PREFIX]],
                                       [tokens[PREFIX:PREFIX + CONTINUATION]], greedy=True)
    by_copies.setdefault(copies, []).append((bool(exact[0]), -float(logprob[0]) / CONTINUATION))
  return {str(copies): {"exact": float(np.mean([e for e, _ in hits])),
                        "loss": float(np.mean([loss for _, loss in hits]))}
          for copies, hits in sorted(by_copies.items())}


def study(work_dir: str, scale: Scale) -> dict:
  os.makedirs(work_dir, exist_ok=True)
  truth = build_corpus(work_dir, scale)
  results = {"documents": len(truth["labels"]),
             "labels": {label: truth["labels"].count(label) for label in set(truth["labels"])}}
  published = curate(work_dir, "curated_published", {})
  loosened = curate(work_dir, "curated_loosened", LOOSENED)
  # The raw corpus's contamination, flagged not removed: which cloze items it holds.
  flagged = curate(work_dir, "raw_flagged", {}, action="flag", steps=["decontaminate"])
  results["curation"] = {
      name: {"documents_out": c.report["documents_out"], "bytes_out": c.report["bytes_out"],
             "bytes_in": c.report["bytes_in"], "seconds": c.report["seconds"],
             "steps": precision_recall(c, truth, name)}
      for name, c in (("published", published), ("loosened", loosened))}
  dirty = flagged.report["contamination"]["pydocs_cloze"]
  results["raw_contamination"] = {"pydocs_cloze_items": dirty["contaminated"]}
  runs = {
      "raw": train(work_dir, "train_raw", [
          f"text_files_corpus.patterns = ['{work_dir}/raw.jsonl']",
          "MIXTURE_OR_TASK_NAME = 'text_files.full_lm'"], scale),
      "curated": train(work_dir, "train_curated", [
          f"curation.inputs = ['{work_dir}/raw.jsonl']",
          f"curation.output_dir = '{loosened.directory}'",
          f"curation.settings = {({**LOOSENED, 'decontaminate': DECONTAMINATE})!r}",
          "MIXTURE_OR_TASK_NAME = 'curated.full_lm'"], scale),
  }
  results["training"] = {}
  vocabulary = vocabularies.default_vocabulary()
  corpus_texts = {"raw": [r["text"] for r in map(json.loads, open(
      os.path.join(work_dir, "raw.jsonl")))],
                  "curated": [r["text"] for r in report.read_jsonl_folder(
                      os.path.join(loosened.directory + ".work", "data", "curated"))]}
  trained_tokens = scale.steps * 8 * 256  # quickstart.gin's batch and length
  for name, model_dir in runs.items():
    evaluation = evaluate(model_dir, work_dir, flagged.directory)
    corpus_tokens = sum(len(vocabulary.encode(text)) + 1 for text in corpus_texts[name])
    results["training"][name] = {
        "corpus_tokens": corpus_tokens, "epochs": trained_tokens / corpus_tokens,
        "heldout_loss": evaluation["language_modelling"]["loss"],
        "cloze": evaluation["contamination"]["pydocs_cloze/0-shot"],
        "memorisation": memorisation(model_dir, truth)}
  return results


def report_markdown(results: dict) -> str:
  out = ["# Curation study: results", "",
         f"{results['documents']} training documents with planted faults: "
         + ", ".join(f"{k} {v}" for k, v in sorted(results["labels"].items())) + ".", "",
         "## Each step against the planted faults", "",
         "| settings | step | removed | precision | recall | clean documents removed |",
         "|---|---|---|---|---|---|"]
  fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
  for name, c in results["curation"].items():
    for step, r in c["steps"].items():
      out.append(f"| {name} | {step} | {r.get('removed', r.get('replacements'))} | "
                 f"{fmt(r['precision'])} | {fmt(r['recall'])} | {r.get('clean_removed', '-')} |")
  out += ["", "## Training at equal compute", "",
          "| corpus | tokens | epochs | held-out loss | cloze clean | cloze contaminated | "
          "memorised by copies: exact (continuation loss) |", "|---|---|---|---|---|---|---|"]
  for name, r in results["training"].items():
    cloze = r["cloze"]
    out.append(f"| {name} | {r['corpus_tokens']:,} | {r['epochs']:.2f} | "
               f"{r['heldout_loss']:.4f} | {fmt(cloze['clean']['accuracy'])} "
               f"({cloze['clean']['questions']}) | {fmt(cloze['dirty']['accuracy'])} "
               f"({cloze['dirty']['questions']}) | "
               + ", ".join(f"{k}: {v['exact']:.2f} ({v['loss']:.2f})"
                           for k, v in r["memorisation"].items()) + " |")
  return "\n".join(out) + "\n"


def plot(results: dict, path: str) -> None:
  import matplotlib  # noqa: PLC0415  (optional extra)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  for name, r in results["training"].items():
    copies = list(r["memorisation"])
    left.plot([int(c) for c in copies], [r["memorisation"][c]["loss"] for c in copies], "o-",
              label=name)
  left.set_xscale("log")
  left.set_xlabel("copies of a passage in the raw corpus")
  left.set_ylabel("loss of its next 32 tokens (nats/token)")
  left.legend()
  names = list(results["training"])
  for offset, subset in ((-0.2, "clean"), (0.2, "dirty")):
    values = [results["training"][n]["cloze"][subset]["accuracy"] or 0 for n in names]
    right.bar(np.arange(len(names)) + offset, values, 0.4, label=f"cloze {subset}")
  right.set_xticks(range(len(names)), names)
  right.set_ylabel("pydocs cloze accuracy")
  right.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--work_dir", default="/tmp/t5x_lite_curation")
  parser.add_argument("--quick", action="store_true", help="a smoke run into the work dir")
  return parser.parse_args(argv)


def main() -> None:
  args = parse_args()
  results = study(args.work_dir, Scale(args.quick))
  output = args.work_dir if args.quick else HERE
  with files.atomic_write(os.path.join(output, "results.json")) as handle:
    json.dump(results, handle, indent=1)
  with files.atomic_write(os.path.join(output, "results.md")) as handle:
    handle.write(report_markdown(results))
  plot(results, os.path.join(output, "curation.png"))
  print(report_markdown(results))


if __name__ == "__main__":
  main()
