"""Offline corpora: the embedded pydocs corpus, Shakespeare, user text files, TFDS checks."""

import json
import os
import socket
import sys

import pytest
import tensorflow as tf

from t5x_lite.data import corpora, corpus_store, shakespeare, text_files
from t5x_lite.data.corpus_store import CorpusError
from tests.scripts import load_script


@pytest.fixture
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("a corpus build tried to use the network")
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.slow  # over 5 s on 2 cores: outside the quick loop
def test_pydocs_corpus_builds_offline_with_the_same_fingerprint_twice(tmp_path, monkeypatch,
                                                                        no_network):
  modules_before = set(sys.modules)
  manifests = []
  for name in ("first", "second"):
    monkeypatch.setenv("T5X_LITE_CACHE", str(tmp_path / name))
    manifests.append(corpora.pydocs_corpus().build())
  first, second = manifests
  assert first.fingerprint == second.fingerprint
  assert first.documents == second.documents
  assert first.documents["train"] > 500 and first.documents["validation"] > 10
  assert first.bytes["train"] > 1_000_000  # Megabytes of English prose.
  # Docstrings come from parsing the source: building imports no stdlib module.
  assert {"tkinter", "turtle", "antigravity", "this"}.isdisjoint(set(sys.modules) - modules_before)


def test_split_is_by_document_deduplicated_and_disjoint():
  docs = [f"document number {i} " * 20 for i in range(400)]
  splits = corpus_store.split_documents(docs + ["  " + docs[0] + "\n"], 0.1)
  assert set(splits["train"]).isdisjoint(splits["validation"])
  assert len(splits["train"]) + len(splits["validation"]) == 400
  assert 20 <= len(splits["validation"]) <= 65
  reordered = corpus_store.split_documents(list(reversed(docs)), 0.1)
  assert set(reordered["validation"]) == set(splits["validation"])


def test_a_rebuilt_corpus_is_read_not_rewritten(tmp_path):
  directory = str(tmp_path / "corpus")
  calls = []

  def docs():
    calls.append(1)
    return ["alpha " * 50, "beta " * 50, "gamma " * 50]

  first = corpus_store.ensure_corpus(directory, "tiny", docs, "test")
  second = corpus_store.ensure_corpus(directory, "tiny", docs, "test")
  assert first == second and len(calls) == 1


def test_a_failed_build_leaves_nothing_behind(tmp_path):
  directory = str(tmp_path / "corpus")

  def broken():
    yield "fine " * 10
    raise CorpusError("bad file")

  with pytest.raises(CorpusError):
    corpus_store.ensure_corpus(directory, "broken", broken, "test")
  assert not os.path.exists(directory)
  assert [p for p in os.listdir(tmp_path) if not p.endswith(".lock")] == []


def test_shakespeare_corpus_reads_the_packaged_texts(tmp_path, monkeypatch, no_network):
  assert len(shakespeare.text_files()) == 42
  monkeypatch.setenv("T5X_LITE_CACHE", str(tmp_path))
  manifest = corpora.shakespeare_corpus().build()
  assert sum(manifest.bytes.values()) > 4_900_000
  assert manifest.documents["validation"] >= 20
  assert "Open Knowledge Foundation" in manifest.source


def test_text_files_builder_reads_text_and_jsonl(tmp_path, monkeypatch):
  (tmp_path / "a.txt").write_text("The first document. " * 20)
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "b.jsonl").write_text(
      json.dumps({"text": "Second document. " * 20}) + "\n\n"
      + json.dumps({"text": "Third document. " * 20}) + "\n")
  monkeypatch.setenv("T5X_LITE_CACHE", str(tmp_path / "cache"))
  corpus = corpora.text_files_corpus(patterns=[str(tmp_path)])
  manifest = corpus.build()
  assert sum(manifest.documents.values()) == 3
  with open(os.path.join(corpus.directory, "manifest.json")) as handle:
    assert json.load(handle)["fingerprint"] == manifest.fingerprint


@pytest.mark.parametrize("name, content, message", [
    ("bad.txt", b"caf\xe9 au lait", r"bad.txt: bytes at offset 3 are not UTF-8"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": broken}\n', r"bad.jsonl:2: not valid JSON"),
    ("bad.jsonl", b'{"body": "no text key"}\n', r"bad.jsonl:1: expected an object with a string"),
])
def test_text_files_errors_name_the_file_and_place(tmp_path, name, content, message):
  (tmp_path / name).write_bytes(content)
  with pytest.raises(CorpusError, match=message):
    list(text_files.read_documents(str(tmp_path / name)))


def test_missing_files_and_empty_corpora_are_clear_errors(tmp_path):
  with pytest.raises(CorpusError, match="matches no .*jsonl.* file"):
    text_files.resolve_files(str(tmp_path / "nowhere" / "*.txt"))
  (tmp_path / "empty.txt").write_text("   \n")
  with pytest.raises(CorpusError, match="no documents"):
    corpus_store.write_corpus(str(tmp_path / "c"), "empty",
                              text_files.read_documents(str(tmp_path / "empty.txt")), "test")


def test_tfds_corpora_fail_fast_with_instructions_when_not_prepared(tmp_path, monkeypatch,
                                                                   no_network):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  source = corpora.data_source("c4")
  with pytest.raises(CorpusError, match=r"tfds build c4/en.*TFDS_DATA_DIR"):
    source.get_dataset("train")


def test_build_corpus_tool_builds_once_and_never_overwrites(tmp_path, capsys):
  build_corpus = load_script("tools/build_corpus.py")
  for i in range(3):
    (tmp_path / f"doc{i}.txt").write_text(f"Document {i} says something different. " * 10)
  output = tmp_path / "built"
  assert build_corpus.main(["files", str(tmp_path / "*.txt"), "--output", str(output)]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert sum(printed["documents"].values()) == 3
  before = sorted(os.listdir(output))
  assert build_corpus.main(["files", str(tmp_path / "*.txt"), "--output", str(output)]) == 2
  assert "already exists" in capsys.readouterr().err
  assert sorted(os.listdir(output)) == before


@pytest.fixture
def built(tmp_path):
  """A small built corpus: (directory, documents callback, manifest)."""
  directory = str(tmp_path / "corpus")
  docs = lambda: [f"document {i} " * 40 for i in range(40)]  # noqa: E731
  manifest = corpus_store.ensure_corpus(directory, "tiny", docs, "test")
  corpus_store._VERIFIED.clear()  # as a new process would find it
  return directory, docs, manifest


def damage(directory, manifest, how):
  shard = os.path.join(directory, manifest.files["train"][0])
  if how == "cut":  # a quarter of the records, cut at a record boundary: still valid TFRecord
    records = list(tf.data.TFRecordDataset(shard).as_numpy_iterator())
    with tf.io.TFRecordWriter(shard) as writer:
      for record in records[:max(1, len(records) // 4)]:
        writer.write(record)
  elif how == "flipped":  # same size, one byte changed
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(shard, "wb").write(bytes(data))
  elif how == "missing":
    os.remove(shard)
  elif how == "fingerprint":
    path = os.path.join(directory, corpus_store.MANIFEST)
    record = json.load(open(path))
    record["fingerprint"] = "0" * 64
    json.dump(record, open(path, "w"))
  return shard


@pytest.mark.parametrize("how,message", [
    ("cut", "has .* bytes, its manifest says"), ("flipped", "does not match its checksum"),
    ("missing", "is missing"), ("fingerprint", "was edited")])
def test_a_damaged_corpus_is_refused_naming_the_shard_and_the_rebuild(built, how, message):
  directory, docs, manifest = built
  shard = damage(directory, manifest, how)
  with pytest.raises(CorpusError, match=message) as error:
    corpus_store.ensure_corpus(directory, "tiny", docs, "test")
  assert f"delete {directory}" in str(error.value)
  if how != "fingerprint":
    assert shard in str(error.value)


def test_a_corpus_built_before_checksums_is_rebuilt_not_trusted(built):
  directory, docs, manifest = built
  path = os.path.join(directory, corpus_store.MANIFEST)
  old = {k: v for k, v in json.load(open(path)).items() if k not in ("shards", "seal")}
  json.dump(old, open(path, "w"))
  rebuilt = corpus_store.ensure_corpus(directory, "tiny", docs, "test")
  assert rebuilt.seal and rebuilt.fingerprint == manifest.fingerprint


@pytest.mark.parametrize("argv", [["pydocs", "--output=/tmp/elsewhere"],
                                  ["shakespeare", "--validation_fraction=0.2"],
                                  ["files", "notes", "--validation_fraction=0.2"]])
def test_build_corpus_refuses_options_it_would_ignore(argv, capsys):
  build_corpus = load_script("tools/build_corpus.py")
  with pytest.raises(SystemExit) as exit_info:
    build_corpus.main(argv)
  assert exit_info.value.code == 2
  assert "apply to `files` built with --output only" in capsys.readouterr().err
