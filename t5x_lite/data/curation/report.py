"""The curation report: what each step took out and why, from the run's own records.

Sources: the Tally steps' counts in datatrove's per-task stats (documents and bytes after
each step), the removed documents each step wrote (reason and text), the Redact and C4
steps' stats (redactions, removed lines), MinHash cluster ids on removed and kept
documents, and the decontamination records (which evaluation items each contaminated
document overlaps).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
from typing import Iterable, Iterator, Sequence

from t5x_lite.data.corpus_store import CorpusError, CorpusManifest
from t5x_lite.data.curation import dedup, steps
from t5x_lite.data.curation.config import DEDUP, CurationConfig

EXCERPT = 300  # characters of a sample document quoted in the report


def read_jsonl_folder(folder: str) -> Iterator[dict]:
  """The records of a folder of datatrove's (gzipped) JSONL outputs, in file order."""
  for path in sorted(glob.glob(os.path.join(folder, "**", "*.jsonl*"), recursive=True)):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
      for line in handle:
        if line.strip():
          yield json.loads(line)


def _merge(total: dict, stats: dict) -> None:
  for key, value in stats.items():
    count = value["total"] if isinstance(value, dict) else value
    total[key] = total.get(key, 0) + count


def stage_stats(work: str, stage_name: str, length: int) -> list[dict]:
  """Each step's stats of a stage, summed over its tasks."""
  summed = [dict() for _ in range(length)]
  for path in sorted(glob.glob(os.path.join(work, "logs", stage_name, "stats", "*.json"))):
    with open(path) as handle:
      for step, stats in zip(summed, json.load(handle)):
        _merge(step, stats["stats"])
  return summed


def _excerpt(text: str) -> str:
  return text if len(text) <= EXCERPT else text[:EXCERPT] + "..."


def removals(work: str, step: str, samples: int) -> tuple[dict[str, int], dict[str, list]]:
  """({reason: documents removed}, {reason: sample documents}) of a step."""
  counts: dict[str, int] = collections.Counter()
  quoted: dict[str, list] = collections.defaultdict(list)
  default = "duplicate" if step in DEDUP else step
  for record in read_jsonl_folder(os.path.join(work, "removed", step)):
    metadata = record.get("metadata") or {}
    reason = metadata.get("filter_reason") or default
    counts[reason] += 1
    if len(quoted[reason]) < samples:
      quoted[reason].append({"id": record.get("id"), "text": _excerpt(record["text"])})
  return dict(counts), dict(quoted)


def minhash_clusters(work: str, kept: Sequence[dict], samples: int) -> dict:
  """Duplicate clusters MinHash found: how many, their sizes, and sample clusters (the
  document kept and those removed)."""
  removed = list(read_jsonl_folder(os.path.join(work, "removed", "minhash_dedup")))
  members: dict[int, list] = collections.defaultdict(list)
  for record in removed:
    members[record["metadata"].get("minhash_cluster_id", -1)].append(record)
  survivors = {}
  for record in kept:
    cluster = (record.get("metadata") or {}).get("minhash_cluster_id", -1)
    if cluster in members:
      survivors[cluster] = record
  sizes = collections.Counter(len(records) + 1 for records in members.values())
  shown = []
  for cluster, records in sorted(members.items(), key=lambda item: -len(item[1]))[:samples]:
    survivor = survivors.get(cluster)
    shown.append({"cluster": cluster, "size": len(records) + 1,
                  "kept": survivor and {"id": survivor.get("id"),
                                        "text": _excerpt(survivor["text"])},
                  "removed": [{"id": r.get("id"), "text": _excerpt(r["text"])}
                              for r in records[:3]]})
  return {"clusters": len(members), "documents_removed": len(removed),
          "cluster_sizes": {str(size): count for size, count in sorted(sizes.items())},
          "samples": shown}


def contamination(work: str, settings: dict) -> dict:
  """Per evaluation set: its n, items checked and too short, and the contaminated items
  (indices) with the documents they were found in."""
  folder = os.path.join(work, "contamination")
  with open(os.path.join(folder, steps.SETS_FILE)) as handle:
    sets = json.load(handle)  # written by the step from the index it used
  found: dict[str, dict[int, list]] = {name: collections.defaultdict(list)
                                       for name in sets["ngram"]}
  documents: dict[str, set] = {name: set() for name in sets["ngram"]}
  for record in read_jsonl_folder(folder):
    for name, item, gram in record["matches"]:
      found[name][item].append({"document": record["id"], "ngram": gram})
      documents[name].add(record["id"])
  report = {}
  for name, ngram in sets["ngram"].items():
    items = found[name]
    report[name] = {
        "ngram": ngram, "checked": sets["checked"][name],
        "too_short": sets["too_short"][name], "contaminated": len(items),
        "documents": len(documents[name]), "action": settings["action"],
        "items": {str(item): matches[:3] for item, matches in sorted(items.items())}}
  return report


def build(config: CurationConfig, work: str, stages: Sequence, kept: Sequence[dict],
          seconds: float) -> dict:
  """The report of a finished run (module docstring)."""
  tallies, extra = [], {}
  for stage in stages:
    stats = stage_stats(work, stage.name, len(stage.pipeline))
    for step, step_stats in zip(stage.pipeline, stats):
      if isinstance(step, steps.Tally):
        tallies.append((step.label, step_stats.get("documents", 0), step_stats.get("bytes", 0)))
      else:
        extra.setdefault(type(step).__name__, {}).update(step_stats)
  documents_in, bytes_in = tallies[0][1], tallies[0][2]
  rows = []
  for (_, docs_before, bytes_before), (step, docs_after, bytes_after) in zip(tallies, tallies[1:]):
    counts, quoted = removals(work, step, config.samples_per_reason)
    rows.append({"step": step, "documents_in": docs_before, "documents_out": docs_after,
                 "bytes_in": bytes_before, "bytes_out": bytes_after,
                 "removed": counts, "samples": quoted})
  c4 = extra.get("C4QualityFilter", {})
  lines = {key.removeprefix("line-filter-"): value for key, value in c4.items()
           if key.startswith("line-filter-")}
  redacted = extra.get("Redact", {})
  report = {
      "inputs": list(config.inputs), "settings": config.effective(),
      "documents_in": documents_in, "bytes_in": bytes_in,
      "documents_out": tallies[-1][1], "bytes_out": tallies[-1][2],
      "seconds": round(seconds, 2),
      "documents_per_second": round(documents_in / max(seconds, 1e-9), 1),
      "steps": rows,
  }
  if lines:
    report["c4_lines_removed"] = lines
  if "pii" in config.steps:
    report["redactions"] = {kind: {"replaced": redacted.get(f"redacted_{kind}", 0),
                                   "documents": redacted.get(f"documents_with_{kind}", 0)}
                            for kind in ("email", "ip", "phone")}
  if "minhash_dedup" in config.steps:
    settings = config.step_settings("minhash_dedup")
    rates = dedup.minhash_rates(settings["num_buckets"], settings["hashes_per_bucket"])
    report["minhash"] = {"threshold": rates.threshold,
                         "false_positive_rate": rates.false_positive_rate,
                         "false_negative_rate": rates.false_negative_rate,
                         **minhash_clusters(work, kept, config.samples_per_reason)}
  if "decontaminate" in config.steps:
    report["contamination"] = contamination(work, config.step_settings("decontaminate"))
  return report


def dirty_items(path: str) -> dict[str, set[int]]:
  """{evaluation set: indices of its contaminated items} from a curation report (its
  report.json, or the curated corpus directory that holds it)."""
  if os.path.isdir(path):
    path = os.path.join(path, "report.json")
  try:
    with open(path) as handle:
      found = json.load(handle)["contamination"]
  except FileNotFoundError:
    raise CorpusError(f"no curation report at {path}; name a curated corpus directory or "
                      "its report.json.") from None
  except (json.JSONDecodeError, KeyError, TypeError):
    raise CorpusError(f"{path} is not a curation report with a decontamination step "
                      "(no 'contamination' section).") from None
  return {name: {int(item) for item in entry["items"]} for name, entry in found.items()}


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
  return lines


def markdown(report: dict) -> str:
  """report.md: the tables a person reads."""
  out = ["# Curation report", "",
         f"Inputs {report['inputs']}: {report['documents_in']:,} documents, "
         f"{report['bytes_in']:,} bytes in; {report['documents_out']:,} documents, "
         f"{report['bytes_out']:,} bytes out ({report['seconds']} s, "
         f"{report['documents_per_second']} documents/s).", "", "## Steps", ""]
  out += _table(["step", "documents in", "documents out", "bytes in", "bytes out",
                 "removed (reason: documents)"],
                [(r["step"], r["documents_in"], r["documents_out"], r["bytes_in"],
                  r["bytes_out"],
                  ", ".join(f"{k}: {v}" for k, v in sorted(r["removed"].items())) or "-")
                 for r in report["steps"]])
  if "c4_lines_removed" in report:
    out += ["", "C4 line filter, lines removed: " + ", ".join(
        f"{k}: {v}" for k, v in sorted(report["c4_lines_removed"].items()))]
  if "redactions" in report:
    out += ["", "## Redactions", ""]
    out += _table(["kind", "replaced", "documents"],
                  [(k, v["replaced"], v["documents"]) for k, v in report["redactions"].items()])
  if "minhash" in report:
    m = report["minhash"]
    out += ["", "## MinHash duplicates", "",
            f"Threshold {m['threshold']:.3f} (expected false-positive rate "
            f"{m['false_positive_rate']:.4f}, false-negative rate {m['false_negative_rate']:.4f}); "
            f"{m['clusters']} clusters, {m['documents_removed']} documents removed; cluster "
            f"sizes {m['cluster_sizes']}."]
  if "contamination" in report:
    out += ["", "## Contamination", ""]
    out += _table(["set", "n-gram", "items checked", "too short", "contaminated", "documents"],
                  [(name, s["ngram"], s["checked"], s["too_short"], s["contaminated"],
                    s["documents"]) for name, s in report["contamination"].items()])
  out += ["", "## Removed documents, a sample per reason", ""]
  for row in report["steps"]:
    for reason, quoted in sorted(row["samples"].items()):
      for sample in quoted:
        text = sample["text"].replace("\n", " ")
        out.append(f"- {row['step']} / {reason} ({sample['id']}): {text}")
  return "\n".join(out) + "\n"


def summary(report: dict, directory: str, manifest: CorpusManifest) -> str:
  """The lines `curate` prints when it is done."""
  lines = [f"curated corpus: {directory}",
           f"  {report['documents_in']:,} documents in, {report['documents_out']:,} out "
           f"(train {manifest.documents['train']:,}, validation "
           f"{manifest.documents['validation']:,}); fingerprint "
           f"{manifest.provenance.get('fingerprint', '')[:16]}"]
  for row in report["steps"]:
    removed = ", ".join(f"{k} {v}" for k, v in sorted(row["removed"].items()))
    lines.append(f"  {row['step']:<18} {row['documents_in']:>8,} -> {row['documents_out']:>8,}"
                 + (f"  ({removed})" if removed else ""))
  for name, s in report.get("contamination", {}).items():
    lines.append(f"  contamination {name}: {s['contaminated']} of {s['checked']} items "
                 f"({s['too_short']} too short to check, n={s['ngram']})")
  if "redactions" in report:
    lines.append("  redacted: " + ", ".join(f"{k} {v['replaced']}"
                                            for k, v in report["redactions"].items()))
  lines.append(f"  report: {os.path.join(directory, 'report.md')}")
  return "\n".join(lines)
