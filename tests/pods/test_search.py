"""The layout search of `compile_check --search`: the layouts a pod allows, the fewest
microbatches that fit found by bisection, a ranking by compute plus the compiled step's
own communication, and the best layout written as gin that `train` reads back."""

import json

import pytest

from t5x_lite import compile_check, gin_utils
from t5x_lite.common import partitioning
from t5x_lite.models import TransformerConfig
from t5x_lite.pods import chips, search, topology

TINY = ["--gin_file=runs/pretrain.gin", "--gin_file=models/tiny_causal_decoder.gin",
        "--gin.TASK_FEATURE_LENGTHS={'targets': 256}", "--gin.BATCH_SIZE=4"]
GPUS = topology.parse("h100:1x2")
# About 13.7 MiB of each H100: the tiny decoder's step (about 25 MiB with 2 sequences
# per chip) must split its batch into microbatches to fit.
FRACTION = 0.00018


def test_meshes_keep_tensor_parallelism_within_a_host_and_dividing_the_heads():
  config = TransformerConfig(d_model=768, num_heads=12, num_decoder_layers=6)
  shapes = search.mesh_shapes(topology.parse("h100:2x8"), config, max_stages=4)
  assert {shape[2] for shape in shapes} == {1, 2, 4}  # 8 does not divide 12 heads
  assert {shape[3] for shape in shapes} == {1, 2}     # 4 does not divide 6 layers
  assert all(data * fsdp * tensor * stages == 16 for data, fsdp, tensor, stages in shapes)
  # Besides all-FSDP and all-data, FSDP inside each host with data across the two hosts.
  assert (2, 8, 1, 1) in shapes and (1, 16, 1, 1) in shapes and (16, 1, 1, 1) in shapes
  assert (2, 4, 2, 1) in shapes and (2, 2, 2, 2) in shapes


def test_fsdp_is_never_wider_than_the_model_dimension_divides():
  # GPT-3 13B's published width, 5140 = 4 x 1285: FSDP over 32 chips would shard
  # nothing and replicate the whole training state, so 4-way FSDP with data parallelism.
  config = TransformerConfig(d_model=5140, num_heads=40, head_dim=128, num_decoder_layers=40)
  shapes = search.mesh_shapes(topology.parse("v5p:4x4x4"), config, max_stages=1)
  assert all(5140 % fsdp == 0 for _, fsdp, _, _ in shapes)
  assert (16, 4, 1, 1) in shapes and (8, 4, 2, 1) in shapes and (64, 1, 1, 1) in shapes


def test_layouts_follow_the_trainers_batch_and_pipeline_rules(tmp_path):
  spec = compile_check.parse_gin(["runs/pretrain.gin", "models/tiny_causal_decoder.gin"],
                                 ["BATCH_SIZE=8", "TASK_FEATURE_LENGTHS={'targets': 64}"], [])
  devices = topology.devices(topology.parse("v5e:2x2"))
  fsdp = partitioning.create_mesh((1, 4, 1, 1), devices)
  # Each microbatch's rows must split over the 4 shards: 8 / m divisible by 4.
  assert [o.microbatches for o in search.layouts_for(spec, fsdp, "none")] == [1, 2]
  staged = partitioning.create_mesh((1, 2, 1, 2), devices)
  options = search.layouts_for(spec, staged, "full")
  # Pipeline microbatches: 4 per stage when the rows allow, else fewer (each pipeline
  # microbatch still splits over the 2 FSDP shards).
  assert [(o.microbatches, o.pipeline_microbatches) for o in options] == [(1, 4), (2, 2)]
  assert all(o.apply(spec).model.scan_layers for o in options)


def trials_by_memory(temporaries_at_1: int, fixed: int, capacity: int, tried: list):
  """A stand-in for compiling: temporaries fall as 1 / microbatches, plus a margin
  that the guess does not know about."""
  def attempt(layout):
    tried.append(layout.microbatches)
    temporaries = temporaries_at_1 // layout.microbatches + 3 * 2**20
    total = fixed + temporaries
    return search.Trial(layout, total, total <= capacity, temporaries=temporaries)
  return attempt


OPTIONS = [search.Layout((1, 4, 1, 1), "none", m) for m in (1, 2, 4, 8, 16, 32, 64, 128)]


@pytest.mark.parametrize("capacity_mib, fewest, most_compiles", [
    (2000, 1, 1),      # fits at once
    (80, 16, 3),       # the guess fits, one fewer does not
    (12, 128, 3),      # the guess is the last option; one fewer does not fit
    (4, None, 2),      # nothing fits: the guess was the last option
])
def test_the_fewest_microbatches_that_fit_are_found_in_few_compiles(capacity_mib, fewest,
                                                                      most_compiles):
  tried = []
  attempt = trials_by_memory(1024 * 2**20, 2**20, capacity_mib * 2**20, tried)
  found = search._fewest_that_fit(OPTIONS, attempt, capacity_mib * 2**20)
  assert (found.microbatches if found else None) == fewest
  assert len(tried) <= most_compiles
  # Whatever the probes, the answer is the exact boundary: one fewer does not fit.
  if found and fewest > 1:
    previous = OPTIONS[OPTIONS.index(found) - 1]
    assert not attempt(previous).fits


def test_a_single_option_costs_one_compile():
  tried = []
  attempt = trials_by_memory(1024 * 2**20, 2**20, 4 * 2**20, tried)
  assert search._fewest_that_fit(OPTIONS[:1], attempt, 4 * 2**20) is None and tried == [1]


def test_when_the_guess_is_far_off_bisection_still_finds_the_boundary():
  tried = []
  # Temporaries that do not fall with microbatches (a guess of 1 / m is wildly wrong).
  def attempt(layout):
    tried.append(layout.microbatches)
    total = (100 if layout.microbatches < 32 else 10) * 2**20
    return search.Trial(layout, total, total <= 50 * 2**20, temporaries=total)
  assert search._fewest_that_fit(OPTIONS, attempt, 50 * 2**20).microbatches == 32
  assert len(tried) <= 6


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
  """One search on two H100s under a tight memory limit (as a module-wide fixture: each
  of its tiny compiles takes seconds)."""
  out = tmp_path_factory.mktemp("search")
  code = compile_check.main([*TINY, f"--topology={GPUS.name}", "--search", "--max_stages=1",
                             f"--memory_fraction={FRACTION}", "--no_decode",
                             f"--write_gin={out / 'best.gin'}", f"--json={out / 'report.json'}"])
  return code, out, json.loads((out / "report.json").read_text())


def test_each_mesh_and_policy_gets_the_fewest_microbatches_that_fit(searched):
  code, _, report = searched
  assert code == 0
  capacity = int(GPUS.chip.hbm_bytes * FRACTION)
  rows = report["search"]
  assert {tuple(row["layout"]["mesh_shape"]) for row in rows} == {
      (1, 2, 1, 1), (2, 1, 1, 1), (1, 1, 2, 1)}
  for row in rows:
    assert row["fits"] == (row["total_bytes"] <= capacity)
  fitted = {}
  for row in rows:
    if row["fits"]:
      key = (tuple(row["layout"]["mesh_shape"]), row["layout"]["remat"])
      fitted[key] = min(fitted.get(key, 10**9), row["layout"]["microbatches"])
  assert fitted, "nothing fit: the memory limit is too tight for the test"
  for (shape, remat), fewest in fitted.items():
    fewer = [row for row in rows if tuple(row["layout"]["mesh_shape"]) == shape
             and row["layout"]["remat"] == remat and row["layout"]["microbatches"] < fewest]
    # Bisection compiles one microbatch first: the fewest that fit is 1, or 1 did not fit.
    assert fewest == 1 or (fewer and not any(row["fits"] for row in fewer))
  assert max(fitted.values()) > 1  # the memory limit binds somewhere
  # A policy that recomputes more was only compiled at fewer microbatches than the one
  # that recomputes less needed.
  for shape in {key[0] for key in fitted}:
    none = fitted.get((shape, "none"))
    for row in rows:
      if tuple(row["layout"]["mesh_shape"]) == shape and row["layout"]["remat"] != "none":
        assert none is None or row["layout"]["microbatches"] < none


def test_layouts_are_ranked_by_compute_plus_the_compiled_communication(searched, capsys):
  _, _, report = searched
  rows = [row for row in report["search"] if row["fits"]]
  for row in rows:
    assert row["estimate_seconds"] == pytest.approx(row["compute_seconds"]
                                                    + row["communication_seconds"])
    assert row["communication_seconds"] > 0  # two chips always exchange something
  # The report's own train step is the best layout's: its communication is the least.
  train = report["steps"][0]
  best = min(rows, key=lambda row: (row["estimate_seconds"], row["layout"]["microbatches"]))
  assert train["communication_seconds"] == pytest.approx(best["communication_seconds"])
  assert train["communication_seconds"] == pytest.approx(
      train["sent_bytes"] / chips.get("h100").interconnect_bytes_per_s)


def test_the_best_layout_is_gin_that_train_reads_back(searched):
  _, out, report = searched
  best = min((row for row in report["search"] if row["fits"]),
             key=lambda row: (row["estimate_seconds"], row["layout"]["microbatches"]))
  text = (out / "best.gin").read_text()
  assert text.startswith("# compile_check --search on h100:1x2")
  spec = compile_check.parse_gin(
      ["runs/pretrain.gin", "models/tiny_causal_decoder.gin", str(out / "best.gin")],
      ["BATCH_SIZE=4", "TASK_FEATURE_LENGTHS={'targets': 256}"], [])
  mesh = gin_utils.resolve_mesh(devices=topology.devices(GPUS))
  # Layouts are (data, fsdp, tensor, stage): the search leaves the expert axis at 1.
  shape = (*best["layout"]["mesh_shape"], 1)
  assert tuple(mesh.shape.values()) == shape
  assert spec.model.remat_policy == best["layout"]["remat"]
  assert spec.run.microbatches == best["layout"]["microbatches"]
  assert report["mesh"] == dict(zip(partitioning.MESH_AXES, shape))


def test_when_nothing_fits_the_search_exits_1_saying_what_to_change(tmp_path, capsys):
  code = compile_check.main([*TINY, "--topology=h100:1x2", "--search", "--max_stages=1",
                             "--memory_fraction=0.0000001", f"--write_gin={tmp_path / 'x.gin'}"])
  captured = capsys.readouterr()
  assert code == 1
  assert "parameters and optimizer state alone take" in captured.out
  assert captured.err.strip().splitlines()[-1].startswith("no layout fits h100:1x2")
  assert not (tmp_path / "x.gin").exists()
