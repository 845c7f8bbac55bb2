"""The coordinate check (Yang et al. 2022, §D.1): does each layer's activation size stay
put as the model widens?

`coordcheck(base, widths)` trains the model at each width for a few AdamW steps on the
same batches, under the standard parametrization and under μP (models/mup.py), and
records the RMS of every layer's output (token embedding, each block's attention and
MLP branches and its residual output, the logits) on a fixed batch. Under a correct μP
the RMS is flat in width (log-log slope ~0); under the standard parametrization with a
width-independent learning rate, the hidden layers' updates grow with fan-in, so some
activations grow with width. `python -m t5x_lite.scaling coordcheck` writes the plot
and a JSON of the slopes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from t5x_lite.common import files
from t5x_lite.common.errors import ConfigError
from t5x_lite.models import TransformerConfig, create_model, losses
from t5x_lite.training import optim

# The task whose training batches each architecture reads by default.
DEFAULT_TASKS = {
    "causal_decoder": ("pydocs.full_lm.byte", {"targets": 64}),
    "prefix_decoder": ("pydocs.prefix_lm.byte", {"inputs": 32, "targets": 32}),
    "encoder_decoder": ("pydocs.span_corruption.byte", {"inputs": 64, "targets": 14}),
}
PARAMETRIZATIONS = ("standard", "mup")


@dataclasses.dataclass
class CoordCheck:
  """RMS of each activation by parametrization and width, and their log-log slopes."""
  widths: list[int]
  rms: dict[str, dict[str, list[float]]]     # parametrization -> activation -> per width
  slopes: dict[str, dict[str, float]]        # parametrization -> activation -> slope

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)

  def largest_slope(self, parametrization: str) -> tuple[str, float]:
    name = max(self.slopes[parametrization], key=lambda k: abs(self.slopes[parametrization][k]))
    return name, self.slopes[parametrization][name]


def widen(base: TransformerConfig, width: int, parametrization: str) -> TransformerConfig:
  """The base model at d_model=width: heads grow with width at the base head_dim, d_ff
  keeps the base's ratio to d_model; μP takes the base width as mup_base_d_model."""
  head_dim = base.resolved_head_dim
  if width % head_dim or (base.d_ff * width) % base.d_model:
    raise ConfigError(f"width {width} is not a multiple of head_dim={head_dim}, or d_ff does "
                      f"not scale to it ({base.d_ff} x {width} / {base.d_model}); choose widths "
                      f"that are multiples of {max(head_dim, base.d_model)}.")
  heads = width // head_dim
  kv_heads = None if base.num_kv_heads is None else max(1, base.kv_heads * heads // base.num_heads)
  fields = dict(d_model=width, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                d_ff=base.d_ff * width // base.d_model, scan_layers=False,
                parametrization=parametrization)
  if parametrization == "mup":
    fields.update(mup_base_d_model=base.d_model)
  return base.replace(**fields)


def activation_rms(model, batch) -> dict[str, float]:
  """RMS of each captured layer output (nnx.capture of every module method's output)."""
  _, captured = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(batch)
  rms = {}
  for path, value in nnx.to_flat_state(captured):
    names = [str(p) for p in path]
    if names[-1] != "__call__" and names != ["embed"]:
      continue
    kind = _activation_name(names[:-1]) if names[-1] == "__call__" else "embedding"
    if kind is None:
      continue
    output = value.get_value()[0] if isinstance(value, nnx.Variable) else value[0]
    if isinstance(output, tuple):  # a block or stack returns (hidden, cache)
      output = output[0]
    rms[kind] = float(jnp.sqrt(jnp.mean(jnp.square(output.astype(jnp.float32)))))
  return rms


def _activation_name(module_path: list[str]) -> Optional[str]:
  """'logits', 'decoder/layer1/mlp', 'encoder/layer0/output', ... for the captured outputs
  worth plotting (the branches and residual outputs of blocks, the logits)."""
  if not module_path:
    return "logits"
  if len(module_path) == 3 and module_path[1] == "layers":
    return f"{module_path[0]}/layer{module_path[2]}/output"
  if (len(module_path) == 4 and module_path[1] == "layers"
      and module_path[3] in ("self_attention", "cross_attention", "mlp")):
    return f"{module_path[0]}/layer{module_path[2]}/{module_path[3]}"
  return None


def train_and_measure(config: TransformerConfig, batches: Sequence[dict], probe: dict,
                      learning_rate: float, seed: int = 0) -> dict[str, float]:
  """Activation RMS on `probe` after AdamW steps on `batches` (constant learning rate,
  no weight decay or clipping: the raw update sizes are what the check is about)."""
  model = create_model(config, seed=seed)
  graphdef, params = nnx.split(model, nnx.Param)
  settings = optim.OptimizerConfig(weight_decay=0.0, clip_norm=None)
  schedule = optax.constant_schedule(learning_rate)
  optimizer = optim.make_optimizer(settings, schedule, config)

  @jax.jit
  def step(params, opt_state, batch):
    def loss(params):
      sums = losses.model_loss_sums(nnx.merge(graphdef, params), batch)
      return sums.loss / jnp.maximum(sums.tokens, 1.0)

    updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = optimizer.init(params)
  for batch in batches:
    params, opt_state = step(params, opt_state, batch)
  return activation_rms(nnx.merge(graphdef, params), probe)


def log_log_slope(widths: Sequence[int], values: Sequence[float]) -> float:
  """Least-squares slope of log(value) against log(width)."""
  return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def coordcheck(base: TransformerConfig, widths: Iterable[int], batches: Sequence[dict],
               probe: dict, learning_rate: float = 1e-2, seed: int = 0,
               parametrizations: Sequence[str] = PARAMETRIZATIONS,
               progress=None) -> CoordCheck:
  """The coordinate check of `base` (its d_model is μP's base width) at `widths`."""
  widths = sorted(widths)
  if len(widths) < 2:
    raise ConfigError("a coordinate check needs at least two widths (four or more to see "
                      "a trend).")
  rms: dict[str, dict[str, list[float]]] = {}
  for parametrization in parametrizations:
    rms[parametrization] = {}
    for width in widths:
      measured = train_and_measure(widen(base, width, parametrization), batches, probe,
                                   learning_rate, seed)
      for name, value in measured.items():
        rms[parametrization].setdefault(name, []).append(value)
      if progress:
        progress(f"{parametrization:8s} d_model {width:5d}: logits RMS "
                 f"{measured['logits']:.3g}")
  slopes = {p: {name: log_log_slope(widths, values) for name, values in by_name.items()}
            for p, by_name in rms.items()}
  return CoordCheck(widths=list(widths), rms=rms, slopes=slopes)


def plot(result: CoordCheck, path: str, title: str = "") -> None:
  """Activation RMS against width, standard and μP side by side (log-log)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  parametrizations = list(result.rms)
  figure, axes = plt.subplots(1, len(parametrizations), figsize=(6 * len(parametrizations), 4.5),
                              sharey=True, squeeze=False)
  for axis, parametrization in zip(axes[0], parametrizations):
    for name, values in sorted(result.rms[parametrization].items()):
      emphasis = dict(linewidth=2.5, color="black") if name == "logits" else dict(alpha=0.7)
      axis.plot(result.widths, values, marker="o", label=name, **emphasis)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("d_model")
    largest = result.largest_slope(parametrization)
    axis.set_title(f"{parametrization}: largest slope {largest[1]:+.2f} ({largest[0]})",
                   fontsize=9)
    axis.grid(alpha=0.3, which="both")
  axes[0][0].set_ylabel("activation RMS after training")
  axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
  if title:
    figure.suptitle(title)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def write_json(result: CoordCheck, path: str) -> None:
  with files.atomic_write(path) as handle:
    json.dump(result.as_dict(), handle, indent=1)
