"""The layout search of `compile_check --search`: which mesh, remat policy and microbatch
count trains a run fastest on a pod, found by compiling the trainer's step.

The run's global batch (BATCH_SIZE) is an optimisation choice and stays fixed; what
the search chooses is how a pod computes it:
  * the mesh (data x fsdp x tensor x stage): tensor parallelism over powers of two that
    divide the heads, at most one GPU host (NVLink) or 8 TPU chips; pipeline stages over
    powers of two that divide every stack's layers, up to `max_stages`; the rest of the
    chips split as all FSDP (at most as wide as the model dimension divides), all data
    parallel, or (GPU clusters) data parallel across hosts with FSDP inside each;
    whatever the trainer's own layout checks refuse (trainer.check_layout: batch and
    pipeline divisibility) is left out;
  * the remat policy: none, dots (save matmul outputs) or full;
  * the gradient-accumulation microbatches (train.microbatches), i.e. the per-chip batch
    of one pass: for each mesh and policy, the fewest microbatches that fit, by
    bisection (memory falls as microbatches rise); a policy that recomputes more is
    only tried at fewer microbatches than the cheaper policy needed, since at the same
    count it can only be slower. Pipeline layouts split each pass into 4, else 2, else 1
    pipeline microbatches per stage.
Meshes whose parameters and optimizer state alone exceed a chip are never compiled.

The estimated step time of a fitting layout is its compute at the chip's dense bf16
peak (the model FLOPs of models/counting.py, times the recomputation its remat policy
adds, divided by the pipeline's busy fraction) plus the communication the compiled
program contains (collectives from the optimized HLO with loop trip counts, divided by
the interconnect bandwidth per direction of pods/chips.py, the network's for
collectives that cross GPU hosts), as if nothing overlapped: an upper bound on a
well-scheduled step and a fair ranking, since every layout gets the same treatment.
What it does not see: how efficiently small matmuls run (more microbatches and wider
tensor parallelism shrink them), and overlap. Candidates are compiled in order of
their compute bound, and once `top` layouts fit, a candidate whose compute alone cannot
beat the top-th estimate is skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Callable, ContextManager, Iterator, Optional

import jax

from t5x_lite.common import partitioning
from t5x_lite.common.errors import ConfigError
from t5x_lite.models import pipeline_parallel
from t5x_lite.models.counting import count
from t5x_lite.pods import collectives, compiled, topology
from t5x_lite.runs.spec import TrainSpec
from t5x_lite.training import trainer

REMAT_POLICIES = ("none", "dots", "full")
# Model FLOPs times this is what a policy computes: "full" recomputes the forward pass
# (2 of the 6 FLOPs per parameter and token) in the backward; "dots" saves every matmul
# output and recomputes only elementwise work, which the matmul count leaves out.
RECOMPUTE = {"none": 1.0, "dots": 1.0, "full": 4 / 3}
MAX_TPU_TENSOR = 8
PIPELINE_MICROBATCHES_PER_STAGE = (4, 2, 1)


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a pod computes a run's step."""
  mesh_shape: tuple[int, int, int, int]  # data, fsdp, tensor, stage
  remat: str
  microbatches: int
  pipeline_microbatches: Optional[int] = None  # with stages only

  @property
  def stages(self) -> int:
    return self.mesh_shape[3]

  def apply(self, spec: TrainSpec) -> TrainSpec:
    """`spec` trained with this layout."""
    model = spec.model.replace(remat_policy=self.remat)
    if self.stages > 1:
      model = model.replace(scan_layers=True, pipeline_microbatches=self.pipeline_microbatches,
                            pipeline_repeats=1)
    return dataclasses.replace(spec, model=model,
                               run=dataclasses.replace(spec.run, microbatches=self.microbatches))

  def per_chip_batch(self, batch_size: int) -> float:
    """Sequences one chip computes per pass (fractions: tensor/stage groups share rows)."""
    data, fsdp = self.mesh_shape[:2]
    return batch_size / self.microbatches / (data * fsdp)

  def describe(self) -> str:
    mesh = " x ".join(f"{name} {size}" for name, size in
                      zip(partitioning.MESH_AXES, self.mesh_shape))
    text = f"{mesh}, remat {self.remat}, microbatches {self.microbatches}"
    if self.stages > 1:
      text += f", pipeline microbatches {self.pipeline_microbatches}"
    return text

  def gin(self) -> str:
    """The bindings that select this layout (after the run's own gin files)."""
    lines = [f"create_mesh.shape = {self.mesh_shape}",
             f"TransformerConfig.remat_policy = '{self.remat}'",
             f"train.microbatches = {self.microbatches}"]
    if self.stages > 1:
      lines += ["TransformerConfig.scan_layers = True",
                f"TransformerConfig.pipeline_microbatches = {self.pipeline_microbatches}",
                "TransformerConfig.pipeline_repeats = 1"]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Trial:
  """One layout compiled (or ruled out before compiling, `skipped` saying why)."""
  layout: Layout
  total_bytes: int
  fits: bool
  compile_seconds: float = 0.0
  temporaries: int = 0
  compute_seconds: Optional[float] = None
  communication_seconds: Optional[float] = None
  skipped: Optional[str] = None
  # The compiled step, kept while this trial is its mesh and policy's fewest fitting
  # microbatches (the one `ranked` may report).
  step: Optional[compiled.CompiledStep] = dataclasses.field(default=None, repr=False)

  @property
  def estimate(self) -> Optional[float]:
    """Estimated step time (compute + communication, no overlap)."""
    if self.compute_seconds is None or self.communication_seconds is None:
      return None
    return self.compute_seconds + self.communication_seconds


@dataclasses.dataclass
class Result:
  """Every trial, ranked fitting layouts first (fastest estimate first)."""
  trials: list[Trial]
  roofline_seconds: float                      # model FLOPs at the pod's peak
  unexplored: int                              # candidates left when the budget ran out

  @property
  def ranked(self) -> list[Trial]:
    """For each mesh and remat policy its layout with the fewest microbatches that fits
    (bisection also compiles fitting layouts with more), fastest estimate first; ties
    go to fewer microbatches (larger matmuls, which the estimate does not credit)."""
    return sorted(_fewest_fitting(self.trials).values(),
                  key=lambda t: (t.estimate, t.layout.microbatches))


def _fewest_fitting(trials: list[Trial]) -> dict[tuple, Trial]:
  """{(mesh shape, remat): its fitting trial with the fewest microbatches}."""
  chosen: dict[tuple, Trial] = {}
  for trial in trials:
    key = (trial.layout.mesh_shape, trial.layout.remat)
    if trial.estimate is not None and (
        key not in chosen or trial.layout.microbatches < chosen[key].layout.microbatches):
      chosen[key] = trial
  return chosen


def _powers_of_two(limit: int) -> Iterator[int]:
  value = 1
  while value <= limit:
    yield value
    value *= 2


def mesh_shapes(pod: topology.Topology, config, max_stages: int) -> list[tuple[int, ...]]:
  """Candidate (data, fsdp, tensor, stage) shapes of the pod for `config` (before the
  trainer's batch and pipeline checks)."""
  chips = pod.num_chips
  tensor_limit = pod.shape[-1] if pod.chip.platform == "cuda" else MAX_TPU_TENSOR
  layers = [config.num_decoder_layers] + ([config.num_encoder_layers]
                                          if config.is_encoder_decoder else [])
  shapes = []
  for tensor in _powers_of_two(min(tensor_limit, chips)):
    if config.num_heads % tensor:
      continue
    for stages in _powers_of_two(min(max_stages, chips // tensor)):
      if chips % (tensor * stages) or any(n % stages for n in layers):
        continue
      rest = chips // (tensor * stages)
      # FSDP shards the model dimension ("embed"); a width it does not divide would be
      # replicated on every shard (GPT-3 13B's 5140 over 32), so FSDP goes no wider
      # than the widest split of the width and data parallelism takes the rest.
      widest = math.gcd(rest, config.d_model)
      splits = {(rest // widest, widest), (rest, 1)}
      hosts = pod.hosts
      if 1 < hosts < rest and rest % hosts == 0 and config.d_model % (rest // hosts) == 0:
        splits.add((hosts, rest // hosts))  # FSDP inside each host, data across hosts
      shapes += [(data, fsdp, tensor, stages) for data, fsdp in sorted(splits)]
  return shapes


def layouts_for(spec: TrainSpec, mesh: jax.sharding.Mesh, remat: str) -> list[Layout]:
  """The layouts of one mesh and remat policy the trainer accepts, fewest microbatches
  (largest per-chip batch) first."""
  shape = tuple(mesh.shape[axis] for axis in partitioning.MESH_AXES[:4])
  found = []
  for microbatches in range(1, spec.run.batch_size + 1):
    if spec.run.batch_size % microbatches:
      continue
    options = ([None] if shape[3] == 1 else
               [shape[3] * k for k in PIPELINE_MICROBATCHES_PER_STAGE])
    for pipeline_microbatches in options:
      layout = Layout(shape, remat, microbatches, pipeline_microbatches)
      try:
        trainer.check_layout(layout.apply(spec), mesh)
      except ConfigError:
        continue
      found.append(layout)
      break
  return found


def compute_seconds(layout: Layout, roofline: float) -> float:
  """The layout's compute at the pod's peak: model FLOPs plus recomputation, over the
  pipeline's busy fraction."""
  busy = 1.0
  if layout.stages > 1:
    busy -= pipeline_parallel.bubble_fraction(layout.stages, layout.pipeline_microbatches)
  return roofline * RECOMPUTE[layout.remat] / busy


def search(spec: TrainSpec, pod: topology.Topology, devices: list[jax.Device], *,
           capacity: Optional[int] = None, max_stages: int = 8, top: int = 3,
           max_compiles: Optional[int] = None, log: Callable[[str], None] = print,
           watch: Callable[[str], ContextManager] = lambda _: contextlib.nullcontext()
           ) -> Result:
  """Compiles the run's train step over the pod's candidate layouts (module docstring);
  `capacity` (default: the chip's memory) is what a layout may use per chip. Each trial
  is logged as it ends; `watch(what)` wraps each compile (compile_check's ticking)."""
  capacity = capacity or pod.chip.hbm_bytes
  config, run = spec.model, spec.run
  counts = count(config, inputs_length=run.feature_lengths.get("inputs", 0),
                 targets_length=run.feature_lengths["targets"])
  roofline = (counts.step_flops_per_token(frozen_base=spec.lora is not None)
              * run.batch_size * counts.tokens_per_sequence
              / (pod.num_chips * pod.chip.peak_flops))
  trials: list[Trial] = []
  candidates = []
  for shape in mesh_shapes(pod, config, max_stages):
    mesh = partitioning.create_mesh(shape, devices)
    # The trainer's layout checks do not depend on the remat policy: one list per mesh.
    fewest = layouts_for(spec, mesh, REMAT_POLICIES[0])
    if not fewest:
      continue
    state = compiled.state_bytes(fewest[0].apply(spec), mesh)
    if state > capacity:
      trials.append(Trial(fewest[0], state, False, skipped=(
          f"parameters and optimizer state alone take {compiled.size(state)} per chip")))
      continue
    candidates.append((compute_seconds(fewest[0], roofline), shape, mesh, fewest))
  candidates.sort(key=lambda c: (c[0], c[1][2], c[1][0]))
  compiles = [0]

  def bar() -> float:
    """The estimate a candidate must beat to enter the top `top`."""
    estimates = sorted(t.estimate for t in trials if t.estimate is not None)
    return estimates[top - 1] if len(estimates) >= top else math.inf

  def attempt(layout: Layout, mesh) -> Trial:
    compiles[0] += 1
    with watch(f"compiling {layout.describe()}"):
      step = compiled.compile_train_step(layout.apply(spec), mesh, capacity)
    fits = step.memory.fits and step.refusal is None
    trial = Trial(layout, step.memory.total, fits, step.compile_seconds,
                  temporaries=step.memory.temporaries)
    if fits:
      trial.compute_seconds = compute_seconds(layout, roofline)
      trial.communication_seconds = collectives.seconds(collectives.of_step(step.hlo, pod),
                                                        pod.chip)
      key = (layout.mesh_shape, layout.remat)
      kept = _fewest_fitting(trials).get(key)
      if kept is None or layout.microbatches < kept.layout.microbatches:
        trial.step = step
        if kept is not None:
          kept.step = None  # superseded: `ranked` never reports it
    trials.append(trial)
    verdict = (f"fits, {trial.compute_seconds:.3g} s compute + "
               f"{trial.communication_seconds:.3g} s communication" if fits
               else "does not fit")
    log(f"  [{compiles[0]}] {layout.describe()}: {compiled.size(step.memory.total)}, "
        f"{verdict} (compiled in {step.compile_seconds:.0f} s)")
    return trial

  unexplored = 0
  for index, (_, shape, mesh, fewest) in enumerate(candidates):
    limit = None  # a costlier policy is worth trying only below this many microbatches
    for remat in REMAT_POLICIES:
      options = [dataclasses.replace(option, remat=remat) for option in fewest]
      if limit is not None:
        options = [o for o in options if o.microbatches < limit]
      if not options or compute_seconds(options[0], roofline) >= bar():
        continue
      if max_compiles is not None and compiles[0] >= max_compiles:
        unexplored = len(candidates) - index
        break
      fitting = _fewest_that_fit(options, lambda layout: attempt(layout, mesh), capacity)
      if fitting is not None:
        limit = fitting.microbatches
    if unexplored:
      break
  return Result(trials, roofline, unexplored)


def _fewest_that_fit(options: list[Layout], attempt: Callable[[Layout], Trial],
                     capacity: int) -> Optional[Layout]:
  """The first of `options` (ordered by falling memory) that fits. The first is tried
  first (it often fits); if it does not, the next guess is where its temporaries, falling
  as 1 / microbatches, would fit, then its neighbour, and bisection only if both
  guesses miss (so a typical search costs three compiles, not a full bisection)."""
  first = attempt(options[0])
  if first.fits or len(options) == 1:
    return options[0] if first.fits else None
  fixed = first.total_bytes - first.temporaries
  count = options[0].microbatches
  guess = next((index for index, option in enumerate(options)
                if fixed + first.temporaries * count / option.microbatches <= capacity),
               len(options) - 1)
  low, high = 0, None  # options[low] does not fit; options[high] does
  probes = [max(guess, 1)]
  while probes:
    probe = probes.pop()
    if attempt(options[probe]).fits:
      high = probe
    else:
      low = probe
    if high is None:
      if low == len(options) - 1:
        return None
      probes.append(low + 1 if low == guess else len(options) - 1)
    elif high - low > 1:
      probes.append(high - 1 if high == guess else (low + high) // 2)
  return options[high]
