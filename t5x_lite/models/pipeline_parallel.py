"""Pipeline parallelism: a transformer stack's layers split over the mesh's "stage" axis.

`pipelined_stack(...)` runs a stack of L stacked (scan-layout) layers as S stages of
consecutive layer groups, the batch split into M microbatches, with the GPipe schedule
(all forwards, then all backwards: jax differentiates the scheduled forward) or, with
R repeats, the circular schedule (MaxText's): layer l belongs to repeat
l // (S x L/(S R)), stage (l // (L/(S R))) mod S, so every stage holds R non-contiguous
groups and a microbatch passes through the stages R times.

The schedule is a lax.scan over M R + S - 1 iterations. At iteration t, stage s works
on position p = t - s of the sequence (microbatch p mod M, repeat p // M), all stages at
once: a jax.vmap over the stage dimension with spmd_axis_name="stage", so that dimension
of the stage inputs, parameters and outputs is sharded over the stage axis and each
device computes only its own stage. Between iterations the stage outputs shift one
stage forward with jnp.roll (a collective permute across the stage axis); the last
stage's output goes into a buffer of M microbatches, from which stage 0 reads it back
for the next repeat (so M >= S) and which holds the stack's output at the end.
Positions outside [0, M R) are the bubble: computed on stale inputs and discarded.
Idle fraction: (S - 1) / (R M + S - 1).

Everything per example that the layers read besides the hidden state (masks,
positions, the encoder output for cross-attention) is split into the same
microbatches; a stage gathers its microbatch's slice.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from t5x_lite.common import partitioning
from t5x_lite.common.errors import ConfigError

STAGE_AXIS = "stage"


class PipelineError(ConfigError):
  """A pipeline setting that cannot work with the model, mesh or batch."""


def bubble_fraction(stages: int, microbatches: int, repeats: int = 1) -> float:
  """The schedule's idle fraction, (S - 1) / (R M + S - 1)."""
  return (stages - 1) / (repeats * microbatches + stages - 1)


def check(num_layers: int, stages: int, microbatches: int, repeats: int,
          batch_size: Optional[int] = None, stack: str = "decoder") -> None:
  """Raises PipelineError naming the setting to change."""
  if stages > num_layers:
    raise PipelineError(f"the mesh's stage axis ({stages}) is larger than the {stack}'s "
                        f"{num_layers} layers; use at most {num_layers} stages.")
  if num_layers % (stages * repeats):
    raise PipelineError(f"the {stack}'s {num_layers} layers do not split into {stages} stages "
                        f"x {repeats} repeats (TransformerConfig.pipeline_repeats) = "
                        f"{stages * repeats} equal groups; choose stages x repeats dividing "
                        f"{num_layers}.")
  if microbatches < stages:
    raise PipelineError(f"TransformerConfig.pipeline_microbatches={microbatches} is smaller "
                        f"than the {stages} stages; every stage needs a microbatch in flight "
                        f"(use at least {stages}).")
  if batch_size is not None and batch_size % microbatches:
    raise PipelineError(f"the batch of {batch_size} sequences does not split into "
                        f"TransformerConfig.pipeline_microbatches={microbatches} equal "
                        "microbatches; choose a divisor of the batch size.")


def check_mesh(config, mesh, batch_size: int) -> None:
  """The checks of `check` for every stack of `config` on `mesh`, before a run starts,
  plus: each microbatch's rows split over the mesh's data x fsdp shards."""
  stages = mesh.shape.get(STAGE_AXIS, 1)
  if stages == 1:
    return
  if not config.scan_layers:
    raise PipelineError("pipeline stages need the scanned layout (stacked layers): set "
                        "TransformerConfig.scan_layers = True.")
  stacks = [("decoder", config.num_decoder_layers)]
  if config.is_encoder_decoder:
    stacks.append(("encoder", config.num_encoder_layers))
  for stack, layers in stacks:
    check(layers, stages, config.pipeline_microbatches, config.pipeline_repeats, batch_size,
          stack)
  rows = batch_size // config.pipeline_microbatches
  shards = partitioning.batch_shards(mesh)
  if rows % shards:
    raise PipelineError(f"a microbatch of {rows} sequences (batch {batch_size} / "
                        f"{config.pipeline_microbatches} microbatches) does not split over the "
                        f"mesh's {shards} data x fsdp x expert shards; use fewer microbatches "
                        "or a larger batch.")


def _split(value: Any, batch: int, microbatches: int) -> tuple[Any, bool]:
  """(value reshaped to [M, B/M, ...], True) for a per-example array, else (value, False)."""
  if isinstance(value, jax.Array) and value.ndim and value.shape[0] == batch and batch > 1:
    return value.reshape(microbatches, batch // microbatches, *value.shape[1:]), True
  return value, False


def mesh_stages() -> int:
  """The size of the active mesh's stage axis (1 outside a mesh or without one)."""
  return dict(jax.sharding.get_abstract_mesh().shape).get(STAGE_AXIS, 1)


def pipelined_stack(block_applier: Callable, graphdef, stacked_state, x_BxTxD: jax.Array,
                    ctx, layer_rngs: Optional[jax.Array], no_stats: dict, *, stages: int,
                    microbatches: int, repeats: int = 1, stack: str = "decoder"
                    ) -> tuple[jax.Array, dict]:
  """(the stack's output [B, T, D], the layers' summed statistics): the layers of
  `stacked_state` (leading axis L) applied in order to every example, scheduled over
  `stages` pipeline stages.

  block_applier(ctx) returns the stack's one-layer function apply_block(graphdef,
  layer_state, h, rng, cache, layer) -> (h, cache, stats) for an AttentionContext (cache
  None here); ctx is the stack's, split into microbatches here. Statistics (an MoE
  layer's routing sums, models/moe.py; `no_stats` is their zero, {} for none) are added
  over the layers and microbatches the schedule really computes (not the bubble).
  """
  num_layers = jax.tree.leaves(stacked_state)[0].shape[0]
  batch = x_BxTxD.shape[0]
  check(num_layers, stages, microbatches, repeats, batch, stack)
  per_group = num_layers // (stages * repeats)

  def by_stage(leaf):  # [L, ...] -> [S, R, L/(S R), ...]: stage s, repeat r, layer j
    grouped = leaf.reshape(repeats, stages, per_group, *leaf.shape[1:])
    return jnp.swapaxes(grouped, 0, 1)

  params_SxR = jax.tree.map(by_stage, stacked_state)
  rngs_SxR = None if layer_rngs is None else by_stage(layer_rngs)
  x_MxbxTxD, _ = _split(x_BxTxD, batch, microbatches)
  split_fields = {}
  for field in dataclasses.fields(ctx):
    value, was_split = _split(getattr(ctx, field.name), batch, microbatches)
    if was_split:
      split_fields[field.name] = value

  def stage_fn(params_R, rngs_R, h_bxTxD, microbatch, repeat):
    """One stage: its layer group of `repeat` on microbatch `microbatch`."""
    group = jax.tree.map(lambda leaf: leaf[repeat], params_R)
    apply_block = block_applier(dataclasses.replace(
        ctx, **{name: value[microbatch] for name, value in split_fields.items()}))
    rngs = None if rngs_R is None else jax.vmap(
        lambda key: jax.random.fold_in(key, microbatch))(rngs_R[repeat])

    def body(carry, xs):
      h, stats = carry
      layer_state, rng = xs
      h, _, layer_stats = apply_block(graphdef, layer_state, h, rng, None, 0)
      return (h, jax.tree.map(jnp.add, stats, layer_stats)), None

    (h_bxTxD, stats), _ = jax.lax.scan(body, (h_bxTxD, no_stats), (group, rngs))
    return h_bxTxD, stats

  run_stages = jax.vmap(stage_fn, in_axes=(0, None if rngs_SxR is None else 0, 0, 0, 0),
                        spmd_axis_name=STAGE_AXIS)
  stage_ids = jnp.arange(stages)
  positions_total = microbatches * repeats

  def iteration(carry, t):
    outputs_SxbxTxD, buffer_MxbxTxD, stats = carry
    # Stage s > 0 takes what stage s - 1 produced last iteration; stage 0 a new
    # microbatch (first repeat) or the last stage's output of the previous repeat.
    shifted = jnp.roll(outputs_SxbxTxD, 1, axis=0)
    first = jnp.where(t < microbatches, x_MxbxTxD[t % microbatches],
                      buffer_MxbxTxD[t % microbatches])
    inputs_SxbxTxD = shifted.at[0].set(first)
    position = t - stage_ids
    microbatch = position % microbatches
    repeat = jnp.clip(position // microbatches, 0, repeats - 1)
    outputs_SxbxTxD, stats_S = run_stages(params_SxR, rngs_SxR, inputs_SxbxTxD, microbatch,
                                          repeat)
    computed_S = (position >= 0) & (position < positions_total)
    stats = jax.tree.map(
        lambda total, by_stage: total + jnp.sum(
            jnp.where(computed_S.reshape(-1, *[1] * (by_stage.ndim - 1)), by_stage, 0), axis=0),
        stats, stats_S)
    last = position[-1]
    done = (last >= 0) & (last < positions_total)
    slot = last % microbatches
    buffer_MxbxTxD = buffer_MxbxTxD.at[slot].set(
        jnp.where(done, outputs_SxbxTxD[-1], buffer_MxbxTxD[slot]))
    return (outputs_SxbxTxD, buffer_MxbxTxD, stats), None

  state = jnp.zeros((stages, *x_MxbxTxD.shape[1:]), x_BxTxD.dtype)
  buffer = jnp.zeros_like(x_MxbxTxD)
  (_, buffer, stats), _ = jax.lax.scan(iteration, (state, buffer, no_stats),
                                       jnp.arange(positions_total + stages - 1))
  return buffer.reshape(x_BxTxD.shape), stats
