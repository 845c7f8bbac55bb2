"""`TransformerConfig`: every architecture knob of the model family.

One frozen dataclass describes encoder-decoder (T5), causal decoder (GPT) and
non-causal prefix decoder models. Entry points bind it with gin (presets live
as gin files under gin/models/); library code receives it as an argument.
`validate()` turns a knob combination we cannot build into one clear error.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Optional

from t5x_lite.common.errors import ConfigError, check_field_types
from t5x_lite.models import architectures, mup

ARCHITECTURES = tuple(architectures.ARCHITECTURES)
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")
NORMS = ("rms", "layer")
NORM_POSITIONS = ("pre", "post")
POSITION_ENCODINGS = ("t5_relative", "rope", "learned", "sinusoidal", "none")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLEMENTATIONS = (None, "einsum", "xla", "cudnn")
DTYPES = ("float32", "bfloat16", "float16")
HEADS = ("lm", "reward", "value")
MOE_ROUTERS = ("mixtral", "switch")

# Knobs that change how the model is computed or stored, not the function it computes
# from its parameters: a checkpoint may be resumed, fine-tuned from or loaded for
# inference with different values (see run_dir.py). Every other knob is the model.
LAYOUT_KNOBS = ("scan_layers", "remat_policy", "attention_impl", "pipeline_microbatches",
                "pipeline_repeats")
# Precision: a legitimate choice at inference (e.g. bfloat16 decoding of a float32 run),
# but a change of numerics on resume, where it must be asked for explicitly.
PRECISION_KNOBS = ("dtype", "param_dtype")
# Knobs that only matter while training (dropout) or at initialisation.
TRAINING_KNOBS = ("dropout_rate", "embedding_init_std", "moe_aux_loss_coef", "moe_z_loss_coef")
# The rest define the function the parameters compute: inference and fine-tuning must
# use a checkpoint's own values (see `contradictions`).
NON_FUNCTIONAL_KNOBS = LAYOUT_KNOBS + PRECISION_KNOBS + TRAINING_KNOBS


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Architecture of a t5x_lite model.

  Attributes:
    architecture: "encoder_decoder", "causal_decoder" or "prefix_decoder".
    vocab_size: size of the (shared) token vocabulary.
    d_model: width of the residual stream.
    num_encoder_layers: encoder depth (encoder_decoder only).
    num_decoder_layers: decoder depth.
    num_heads: query heads.
    num_kv_heads: key/value heads; None means num_heads (MHA), 1 is MQA,
      anything dividing num_heads is GQA.
    head_dim: width of one head; None means d_model // num_heads.
    d_ff: hidden width of the feed-forward block.
    activation: "relu", "gelu" (exact), "gelu_tanh" or "silu".
    gated: GLU variant (GeGLU with gelu, SwiGLU with silu): act(x W0) * (x W1).
    norm: "rms" (RMSNorm) or "layer" (LayerNorm).
    norm_bias: give LayerNorm a learned bias (ignored by RMSNorm).
    norm_position: "pre" (norm inside the residual branch, final norm at the
      top of each stack) or "post" (norm after the residual add).
    norm_epsilon: added to the variance in every norm.
    use_bias: biases on every dense projection (GPT-2 style).
    position_encoding: "t5_relative" (bucketed bias shared per stack), "rope",
      "learned" (absolute table of max_length rows), "sinusoidal" or "none".
    relative_attention_num_buckets / relative_attention_max_distance: T5 bias.
    rope_theta: RoPE base frequency.
    max_length: longest sequence for absolute position tables; also the
      default sequence length for FLOP counting.
    scale_attention_logits: divide attention logits by sqrt(head_dim). T5
      folds that factor into the query initialisation instead.
    tie_embeddings: compute logits with the input embedding matrix.
    scale_decoder_outputs: multiply the decoder output by d_model**-0.5 before
      the logits projection. None (default) scales exactly when embeddings
      are tied, as T5 does; GPT-2 and tied Llama models set False.
    embedding_init_std: stddev of the token embedding initialiser.
    dropout_rate: on embeddings, residual branches and the MLP hidden layer.
    dtype: activation/compute dtype; param_dtype: storage dtype of weights.
    scan_layers: store layers stacked on a leading "layers" axis and run them
      with jax.lax.scan (fast compiles for deep models).
    remat_policy: "none", "full" (recompute everything), "dots" (save matmul
      outputs) or "dots_no_batch" (save weight matmuls only).
    attention_impl: "einsum" (our einsum/softmax path), "xla" or "cudnn"
      (jax.nn.dot_product_attention); None picks the fastest measured for the
      backend: einsum on CPU, cuDNN flash attention on GPU for 16-bit dtypes, xla
      otherwise (layers.dot_product_attention).
    pipeline_microbatches: microbatches the batch is split into when the mesh has a
      "stage" axis larger than 1 (pipeline parallelism, models/pipeline.py; >= stages).
    pipeline_repeats: layer groups per stage (1: GPipe; more: the circular schedule).
    parametrization: "standard" or "mup" (the maximal-update parametrization, under
      which learning rates tuned at mup_base_d_model transfer to any width; the
      per-tensor rules are in models/mup.py).
    mup_base_d_model: the width the hyperparameters were tuned at (μP only; <= d_model).
    mup_base_head_dim: the head_dim at which μP's attention scale equals the standard
      1/sqrt(head_dim) (μP only; None: the model's own head_dim).
    head: "lm" (next-token logits); "reward": a reward model, which adds a scalar
      projection of the decoder's final hidden state (`Transformer.rewards`) beside the
      logits, its reward for a completion the one at the completion's last token; or
      "value": a policy with a value head on the same trunk (PPO's critic: the scalar at
      each position estimates the return from there, `Transformer.logits_and_values`).
    num_experts: 0 (dense) or E: the feed-forward block of the MoE layers becomes E
      experts of the configured activation behind a learned router (models/moe.py).
    moe_top_k: experts each token is sent to (k).
    moe_router: "mixtral" (the k chosen probabilities renormalised to sum to 1:
      softmax over the top-k logits) or "switch" (the chosen probabilities of the softmax
      over all experts, as they are).
    moe_capacity_factor: each expert takes at most ceil(factor x tokens x k / E) tokens
      of a sequence, the rest of its assignments are dropped (the token passes through
      the residual); None: dropless, no assignment is ever dropped.
    moe_encoder_interval / moe_decoder_interval: every k-th layer of that stack is an
      MoE layer (layers k-1, 2k-1, ...; 1: all, 2: every other one as Switch; 0: none).
    moe_aux_loss_coef: weight of the Switch load-balancing loss (mean over MoE layers).
    moe_z_loss_coef: weight of ST-MoE's router z-loss (mean over MoE layers).
    moe_shared_experts: experts every token goes through besides the routed ones
      (DeepSeekMoE), each of the routed experts' width.
    moe_granularity: G of fine-grained experts (Krajewski et al. 2024): each of the
      num_experts x G routed experts is d_ff / G wide and tokens go to moe_top_k x G of
      them, so the active parameters stay those of G = 1.
  """

  architecture: str = "causal_decoder"
  vocab_size: int = 32128
  d_model: int = 512
  num_encoder_layers: int = 0
  num_decoder_layers: int = 6
  num_heads: int = 8
  num_kv_heads: Optional[int] = None
  head_dim: Optional[int] = None
  d_ff: int = 2048
  activation: str = "gelu_tanh"
  gated: bool = False
  norm: str = "rms"
  norm_bias: bool = False
  norm_position: str = "pre"
  norm_epsilon: float = 1e-6
  use_bias: bool = False
  position_encoding: str = "rope"
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  rope_theta: float = 10_000.0
  max_length: int = 512
  scale_attention_logits: bool = True
  tie_embeddings: bool = False
  scale_decoder_outputs: Optional[bool] = None
  embedding_init_std: float = 1.0
  dropout_rate: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = False
  remat_policy: str = "none"
  attention_impl: Optional[str] = None
  pipeline_microbatches: int = 1
  pipeline_repeats: int = 1
  parametrization: str = "standard"
  mup_base_d_model: Optional[int] = None
  mup_base_head_dim: Optional[int] = None
  head: str = "lm"
  num_experts: int = 0
  moe_top_k: int = 2
  moe_router: str = "mixtral"
  moe_capacity_factor: Optional[float] = 1.25
  moe_encoder_interval: int = 1
  moe_decoder_interval: int = 1
  moe_aux_loss_coef: float = 0.01
  moe_z_loss_coef: float = 0.001
  moe_shared_experts: int = 0
  moe_granularity: int = 1

  def __post_init__(self):
    self.validate()

  @property
  def kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def resolved_head_dim(self) -> int:
    return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

  @property
  def scales_decoder_outputs(self) -> bool:
    if self.scale_decoder_outputs is None:
      return self.tie_embeddings
    return self.scale_decoder_outputs

  @property
  def architecture_spec(self) -> architectures.Architecture:
    """The rules of this architecture (models/architectures.py)."""
    return architectures.get(self.architecture)

  @property
  def is_encoder_decoder(self) -> bool:
    return self.architecture_spec.has_encoder

  @property
  def routed_experts(self) -> int:
    """The router's choices: num_experts x moe_granularity (0 for a dense model)."""
    return self.num_experts * self.moe_granularity

  @property
  def experts_per_token(self) -> int:
    """Routed experts each token goes to: moe_top_k x moe_granularity."""
    return self.moe_top_k * self.moe_granularity

  @property
  def expert_expansion(self) -> float:
    """E of the experts scaling law: the routed expert weights a layer holds over those one
    token uses, num_experts / moe_top_k (granularity cancels); 1 for a dense model."""
    return self.num_experts / self.moe_top_k if self.num_experts else 1.0

  @property
  def expert_d_ff(self) -> int:
    """Hidden width of one routed (or shared) expert: d_ff / moe_granularity."""
    return self.d_ff // self.moe_granularity

  def moe_interval(self, stack: str) -> int:
    """Every how many layers `stack` ("encoder" or "decoder") has an MoE layer; 0: none."""
    if not self.num_experts:
      return 0
    return self.moe_encoder_interval if stack == "encoder" else self.moe_decoder_interval

  def is_moe_layer(self, stack: str, index: int) -> bool:
    """Whether layer `index` of `stack` routes its feed-forward block to experts."""
    interval = self.moe_interval(stack)
    return interval > 0 and (index + 1) % interval == 0

  def moe_layers(self, stack: str) -> int:
    """How many of `stack`'s layers are MoE layers."""
    layers = self.num_encoder_layers if stack == "encoder" else self.num_decoder_layers
    interval = self.moe_interval(stack)
    return layers // interval if interval else 0

  def replace(self, **changes) -> "TransformerConfig":
    return dataclasses.replace(self, **changes)

  def validate(self) -> None:
    """Raises ConfigError naming the first knob that cannot be honoured."""
    check_field_types(self, "TransformerConfig")
    choices = {
        "architecture": ARCHITECTURES,
        "activation": ACTIVATIONS,
        "norm": NORMS,
        "norm_position": NORM_POSITIONS,
        "position_encoding": POSITION_ENCODINGS,
        "remat_policy": REMAT_POLICIES,
        "attention_impl": ATTENTION_IMPLEMENTATIONS,
        "dtype": DTYPES,
        "param_dtype": DTYPES,
        "head": HEADS,
        "moe_router": MOE_ROUTERS,
    }
    for name, allowed in choices.items():
      value = getattr(self, name)
      if value not in allowed:
        raise ConfigError(
            f"TransformerConfig.{name}={value!r} is not supported; choose one of {allowed}.")
    positive = ["vocab_size", "d_model", "num_decoder_layers", "num_heads", "d_ff", "max_length",
                "pipeline_microbatches", "pipeline_repeats"]
    if self.is_encoder_decoder:
      positive.append("num_encoder_layers")
    for name in positive:
      if getattr(self, name) <= 0:
        raise ConfigError(f"TransformerConfig.{name} must be positive, got {getattr(self, name)}.")
    if not self.is_encoder_decoder and self.num_encoder_layers:
      raise ConfigError(
          f"TransformerConfig.num_encoder_layers={self.num_encoder_layers} only applies to "
          f"architecture='encoder_decoder', not {self.architecture!r}; set it to 0.")
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ConfigError(
          f"TransformerConfig.d_model={self.d_model} is not divisible by num_heads="
          f"{self.num_heads}; set head_dim explicitly.")
    if self.kv_heads <= 0 or self.num_heads % self.kv_heads:
      raise ConfigError(
          f"TransformerConfig.num_kv_heads={self.num_kv_heads} must divide num_heads="
          f"{self.num_heads} (MHA: None, GQA: a divisor, MQA: 1).")
    if self.position_encoding == "rope" and self.resolved_head_dim % 2:
      raise ConfigError(
          f"RoPE needs an even head_dim, got {self.resolved_head_dim}; change head_dim "
          "or TransformerConfig.position_encoding.")
    problem = mup.check(self)
    if problem:
      raise ConfigError(problem)
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ConfigError(
          f"TransformerConfig.dropout_rate must be in [0, 1), got {self.dropout_rate}.")
    self._validate_moe()

  def _validate_moe(self) -> None:
    if self.num_experts < 0:
      raise ConfigError(f"TransformerConfig.num_experts must be 0 (dense) or positive, got "
                        f"{self.num_experts}.")
    if not self.num_experts:
      return
    for name in ("moe_top_k", "moe_granularity"):
      if getattr(self, name) <= 0:
        raise ConfigError(f"TransformerConfig.{name} must be positive, got "
                          f"{getattr(self, name)}.")
    for name in ("moe_encoder_interval", "moe_decoder_interval", "moe_shared_experts"):
      if getattr(self, name) < 0:
        raise ConfigError(f"TransformerConfig.{name} must be 0 or positive, got "
                          f"{getattr(self, name)}.")
    if self.moe_top_k > self.num_experts:
      raise ConfigError(f"TransformerConfig.moe_top_k={self.moe_top_k} is more than the "
                        f"num_experts={self.num_experts} a token can be sent to; use at most "
                        f"{self.num_experts}.")
    if self.moe_capacity_factor is not None and self.moe_capacity_factor <= 0:
      raise ConfigError(f"TransformerConfig.moe_capacity_factor must be positive, or None "
                        f"for dropless routing; got {self.moe_capacity_factor}.")
    if self.d_ff % self.moe_granularity:
      raise ConfigError(f"TransformerConfig.d_ff={self.d_ff} does not split into "
                        f"moe_granularity={self.moe_granularity} experts of equal width; "
                        "choose a divisor of d_ff.")
    if self.moe_aux_loss_coef < 0 or self.moe_z_loss_coef < 0:
      raise ConfigError("TransformerConfig.moe_aux_loss_coef and moe_z_loss_coef must be "
                        "0 or positive.")
    if self.scan_layers:
      for stack in ("encoder", "decoder"):
        interval = self.moe_interval(stack)
        layers = self.num_encoder_layers if stack == "encoder" else self.num_decoder_layers
        if interval > 1 and layers % interval:
          raise ConfigError(
              f"the scanned layout (scan_layers) runs the {stack}'s layers in groups of its "
              f"MoE interval moe_{stack}_interval={interval}, which does not divide its "
              f"{layers} layers; choose a divisor or scan_layers = False.")
    if not (self.moe_decoder_interval or (self.is_encoder_decoder and
                                          self.moe_encoder_interval)):
      raise ConfigError(f"TransformerConfig.num_experts={self.num_experts} but no stack has "
                        "MoE layers (moe_decoder_interval = 0"
                        f"{' and moe_encoder_interval = 0' if self.is_encoder_decoder else ''})"
                        "; set an interval or num_experts = 0.")


def contradictions(recorded: "TransformerConfig", values: Mapping[str, object],
                   allowed: Iterable[str] = ()) -> dict[str, tuple[object, object]]:
  """{"TransformerConfig.knob": (recorded, given)} for the `values` (knob -> value: a
  config's fields or just the bound ones) that change what the recorded model's
  parameters compute: every knob but NON_FUNCTIONAL_KNOBS and those `allowed` (gin
  names, as train.allow_changes lists them). The one rule for using a checkpoint's
  model with other settings (fine-tuning, infer, evaluate)."""
  free = set(NON_FUNCTIONAL_KNOBS) | {knob.removeprefix("TransformerConfig.")
                                      for knob in allowed}
  return {f"TransformerConfig.{knob}": (getattr(recorded, knob), value)
          for knob, value in values.items()
          if knob not in free and getattr(recorded, knob) != value}
