"""Hugging Face weights in and out: T5 (v1.0, v1.1), GPT-2, Llama and Mixtral.

`load(path)` reads a model directory (config.json + *.safetensors; pickled
PyTorch files are refused) and returns a t5x_lite `Transformer` whose
`model(batch)` reproduces the reference logits. `export(model, path)` writes
T5, Llama and Mixtral models back in the Hugging Face layout.

Each family is a table of (our parameter path, HF tensor name, transform)
rows; a transform maps the HF tensor to ours and its inverse maps back, so
import and export share one description of the layout. A path ending in an expert
index e names expert e's slice of our stacked [E, ...] expert kernel (Mixtral stores
one tensor per expert).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable, Optional

import numpy as np
from flax import nnx

from t5x_lite.common.errors import UserError
from t5x_lite.models.configs import TransformerConfig
from t5x_lite.models.params import FlatParams, abstract_model, flat_params, model_from_params
from t5x_lite.models.transformer import Transformer

ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "silu": "silu", "swish": "silu"}
_PREFIXES = ("transformer.", "model.")


class UnsupportedModelError(UserError, ValueError):
  """A Hugging Face model, config field or weight file that t5x_lite cannot import exactly;
  the message names the field or tensor and the file."""


class _ConfigFields(dict):
  """config.json's fields; a missing one is an error naming it and the file."""

  def __init__(self, fields: dict, path: str):
    super().__init__(fields)
    self.path = path

  def __missing__(self, field: str):
    raise UnsupportedModelError(f"{self.path} has no field {field!r}, which a "
                                f"{self.get('model_type')} model needs.")

  def get(self, field, default=None):  # dict.get bypasses __missing__, as it should
    return super().get(field, default)


# Tensors some files carry that are buffers or copies, not parameters of the model.
_IGNORED_TENSORS = (r"\.attn\.(masked_)?bias$", r"rotary_emb\.inv_freq$",
                    r"^(encoder|decoder)\.embed_tokens\.weight$")


@dataclasses.dataclass(frozen=True)
class Transform:
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


COPY = Transform(lambda w: w, lambda w: w)
TRANSPOSE = Transform(lambda w: w.T, lambda w: w.T)  # torch Linear (out, in) <-> (in, out)


def heads_in(heads: int, head_dim: int) -> Transform:
  """torch Linear (heads*head_dim, d) <-> our query/key/value kernel (d, heads, head_dim)."""
  return Transform(lambda w: w.T.reshape(w.shape[1], heads, head_dim),
                   lambda k: k.reshape(k.shape[0], heads * head_dim).T)


def heads_out(heads: int, head_dim: int) -> Transform:
  """torch Linear (d, heads*head_dim) <-> our output kernel (heads, head_dim, d)."""
  return Transform(lambda w: w.T.reshape(heads, head_dim, w.shape[0]),
                   lambda k: k.reshape(heads * head_dim, k.shape[-1]).T)


def _activation(name: str, field: str) -> str:
  if name not in ACTIVATIONS:
    raise UnsupportedModelError(f"config.json {field}={name!r} is not supported; t5x_lite "
                                f"supports {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def _require(hf: dict, field: str, allowed, default=None) -> None:
  value = hf.get(field, default)
  if value not in allowed:
    raise UnsupportedModelError(
        f"config.json {field}={value!r} cannot be reproduced by t5x_lite (supported: "
        f"{allowed}).")


# ----------------------------------------------------------------------------- configs


def _t5_config(hf: dict) -> TransformerConfig:
  proj = hf.get("feed_forward_proj", "relu")
  parts = proj.split("-")
  gated = parts[0] == "gated"
  if len(parts) > 2 or (len(parts) == 2 and not gated):
    raise UnsupportedModelError(f"config.json feed_forward_proj={proj!r} is not 'ACT' or "
                                "'gated-ACT'.")
  act = "gelu_new" if proj == "gated-gelu" else parts[-1]
  # transformers 5 records the output scaling separately; older configs
  # signal it through tie_word_embeddings (v1.0 tied and scaled, v1.1 not).
  scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
  return TransformerConfig(
      architecture="encoder_decoder", vocab_size=hf["vocab_size"], d_model=hf["d_model"],
      num_encoder_layers=hf["num_layers"],
      num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
      num_heads=hf["num_heads"], head_dim=hf["d_kv"], d_ff=hf["d_ff"],
      activation=_activation(act, "feed_forward_proj"), gated=gated, norm="rms",
      norm_epsilon=hf.get("layer_norm_epsilon", 1e-6), position_encoding="t5_relative",
      relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
      scale_attention_logits=False, scale_decoder_outputs=bool(scale))


def _gpt2_config(hf: dict) -> TransformerConfig:
  _require(hf, "scale_attn_by_inverse_layer_idx", (False, None))
  _require(hf, "add_cross_attention", (False, None))
  d = hf["n_embd"]
  return TransformerConfig(
      architecture="causal_decoder", vocab_size=hf["vocab_size"], d_model=d,
      num_decoder_layers=hf["n_layer"], num_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d,
      activation=_activation(hf.get("activation_function", "gelu_new"), "activation_function"),
      norm="layer", norm_bias=True, norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
      use_bias=True, position_encoding="learned", max_length=hf["n_positions"],
      scale_attention_logits=hf.get("scale_attn_weights", True), scale_decoder_outputs=False)


def _mixtral_config(hf: dict) -> TransformerConfig:
  """Mixtral: Llama's decoder with every feed-forward block top-k routed over
  num_local_experts SwiGLU experts, gates renormalised over the k, nothing dropped."""
  if hf.get("sliding_window") is not None:
    raise UnsupportedModelError(f"config.json sliding_window={hf.get('sliding_window')} "
                                "(sliding-window attention) is not supported; only full "
                                "attention (sliding_window null) is.")
  return _llama_config(hf).replace(
      num_experts=hf["num_local_experts"], moe_top_k=hf["num_experts_per_tok"],
      moe_router="mixtral", moe_capacity_factor=None, moe_decoder_interval=1,
      moe_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)), moe_z_loss_coef=0.0)


def _llama_config(hf: dict) -> TransformerConfig:
  _require(hf, "attention_bias", (False, None))
  _require(hf, "mlp_bias", (False, None))
  _require(hf, "pretraining_tp", (1, None))
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise UnsupportedModelError(f"config.json rope_type={rope_type!r} (RoPE scaling) is not "
                                "supported; only 'default' RoPE is.")
  theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
  heads = hf["num_attention_heads"]
  return TransformerConfig(
      architecture="causal_decoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
      num_decoder_layers=hf["num_hidden_layers"], num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, d_ff=hf["intermediate_size"],
      activation=_activation(hf.get("hidden_act", "silu"), "hidden_act"), gated=True,
      norm="rms", norm_epsilon=hf.get("rms_norm_eps", 1e-6), position_encoding="rope",
      rope_theta=float(theta), max_length=hf.get("max_position_embeddings", 2048),
      scale_decoder_outputs=False)


# ----------------------------------------------------------------------------- layouts


def _t5_rows(config: TransformerConfig):
  h, hd = config.num_heads, config.resolved_head_dim
  rows = [(("token_embedding", "embedding"), "shared.weight", COPY)]
  for stack, num_layers in (("encoder", config.num_encoder_layers),
                            ("decoder", config.num_decoder_layers)):
    rows.append(((stack, "relative_bias", "embedding", "embedding"),
                 f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight", COPY))
    rows.append(((stack, "final_norm", "scale"), f"{stack}.final_layer_norm.weight", COPY))
    for i in range(num_layers):
      ours, theirs = (stack, "layers", i), f"{stack}.block.{i}.layer"
      attentions = [("self_attention", f"{theirs}.0", "SelfAttention")]
      if stack == "decoder":
        attentions.append(("cross_attention", f"{theirs}.1", "EncDecAttention"))
      for name, sub, module in attentions:
        rows.append((ours + (f"{name}_norm", "scale"), f"{sub}.layer_norm.weight", COPY))
        for proj, hf_proj in (("query", "q"), ("key", "k"), ("value", "v")):
          rows.append((ours + (name, proj, "kernel"), f"{sub}.{module}.{hf_proj}.weight",
                       heads_in(h, hd)))
        rows.append((ours + (name, "out", "kernel"), f"{sub}.{module}.o.weight",
                     heads_out(h, hd)))
      mlp = f"{theirs}.{len(attentions)}"
      rows.append((ours + ("mlp_norm", "scale"), f"{mlp}.layer_norm.weight", COPY))
      wi = (("wi_0", "wi_0"), ("wi_1", "wi_1")) if config.gated else (("wi_0", "wi"),)
      for name, hf_name in wi + (("wo", "wo"),):
        rows.append((ours + ("mlp", name, "kernel"), f"{mlp}.DenseReluDense.{hf_name}.weight",
                     TRANSPOSE))
  return rows


def _llama_rows(config: TransformerConfig):
  h, kv, hd = config.num_heads, config.kv_heads, config.resolved_head_dim
  rows = [(("token_embedding", "embedding"), "embed_tokens.weight", COPY),
          (("decoder", "final_norm", "scale"), "norm.weight", COPY)]
  for i in range(config.num_decoder_layers):
    ours, theirs = ("decoder", "layers", i), f"layers.{i}"
    rows += [
        (ours + ("self_attention_norm", "scale"), f"{theirs}.input_layernorm.weight", COPY),
        (ours + ("mlp_norm", "scale"), f"{theirs}.post_attention_layernorm.weight", COPY),
        (ours + ("self_attention", "query", "kernel"), f"{theirs}.self_attn.q_proj.weight",
         heads_in(h, hd)),
        (ours + ("self_attention", "key", "kernel"), f"{theirs}.self_attn.k_proj.weight",
         heads_in(kv, hd)),
        (ours + ("self_attention", "value", "kernel"), f"{theirs}.self_attn.v_proj.weight",
         heads_in(kv, hd)),
        (ours + ("self_attention", "out", "kernel"), f"{theirs}.self_attn.o_proj.weight",
         heads_out(h, hd)),
    ]
    if config.num_experts:  # Mixtral
      moe = f"{theirs}.block_sparse_moe"
      rows.append((ours + ("mlp", "router", "kernel"), f"{moe}.gate.weight", TRANSPOSE))
      for e in range(config.num_experts):
        rows += [(ours + ("mlp", name, "kernel", e), f"{moe}.experts.{e}.{hf_name}.weight",
                  TRANSPOSE) for name, hf_name in (("wi_0", "w1"), ("wi_1", "w3"), ("wo", "w2"))]
    else:
      rows += [
          (ours + ("mlp", "wi_0", "kernel"), f"{theirs}.mlp.gate_proj.weight", TRANSPOSE),
          (ours + ("mlp", "wi_1", "kernel"), f"{theirs}.mlp.up_proj.weight", TRANSPOSE),
          (ours + ("mlp", "wo", "kernel"), f"{theirs}.mlp.down_proj.weight", TRANSPOSE),
      ]
  return rows


def _stack_experts(flat: FlatParams) -> FlatParams:
  """Rows of one expert each (paths ending in its index) stacked into [E, ...] kernels."""
  out: FlatParams = {}
  experts: dict[tuple, dict[int, np.ndarray]] = {}
  for path, value in flat.items():
    if isinstance(path[-1], int):
      experts.setdefault(path[:-1], {})[path[-1]] = value
    else:
      out[path] = value
  for path, by_expert in experts.items():
    out[path] = np.stack([by_expert[e] for e in range(len(by_expert))])
  return out


def _our_tensor(flat: FlatParams, path: tuple) -> np.ndarray:
  """Our parameter at a row's path (one expert's slice for paths ending in its index)."""
  return flat[path[:-1]][path[-1]] if isinstance(path[-1], int) else flat[path]


def _gpt2_params(config: TransformerConfig, weights: "_UsedTensors") -> FlatParams:
  """GPT-2 stores Conv1D weights as (in, out) and fuses q, k, v into c_attn."""
  d, h, hd = config.d_model, config.num_heads, config.resolved_head_dim
  flat: FlatParams = {("token_embedding", "embedding"): weights["wte.weight"],
                      ("decoder", "absolute_positions", "table", "embedding"):
                          weights["wpe.weight"],
                      ("decoder", "final_norm", "scale"): weights["ln_f.weight"],
                      ("decoder", "final_norm", "bias"): weights["ln_f.bias"]}
  for i in range(config.num_decoder_layers):
    ours, theirs = ("decoder", "layers", i), f"h.{i}"
    for norm, hf_norm in (("self_attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
      flat[ours + (norm, "scale")] = weights[f"{theirs}.{hf_norm}.weight"]
      flat[ours + (norm, "bias")] = weights[f"{theirs}.{hf_norm}.bias"]
    qkv_kernel = np.split(weights[f"{theirs}.attn.c_attn.weight"], 3, axis=1)
    qkv_bias = np.split(weights[f"{theirs}.attn.c_attn.bias"], 3)
    for name, kernel, bias in zip(("query", "key", "value"), qkv_kernel, qkv_bias):
      flat[ours + ("self_attention", name, "kernel")] = kernel.reshape(d, h, hd)
      flat[ours + ("self_attention", name, "bias")] = bias.reshape(h, hd)
    flat[ours + ("self_attention", "out", "kernel")] = (
        weights[f"{theirs}.attn.c_proj.weight"].reshape(h, hd, d))
    flat[ours + ("self_attention", "out", "bias")] = weights[f"{theirs}.attn.c_proj.bias"]
    for name, hf_name in (("wi_0", "c_fc"), ("wo", "c_proj")):
      flat[ours + ("mlp", name, "kernel")] = weights[f"{theirs}.mlp.{hf_name}.weight"]
      flat[ours + ("mlp", name, "bias")] = weights[f"{theirs}.mlp.{hf_name}.bias"]
  return flat


FAMILIES = {"t5": (_t5_config, _t5_rows), "gpt2": (_gpt2_config, None),
            "llama": (_llama_config, _llama_rows), "mixtral": (_mixtral_config, _llama_rows)}
_EMBEDDING_KEYS = {"t5": "shared.weight", "gpt2": "wte.weight", "llama": "embed_tokens.weight",
                   "mixtral": "embed_tokens.weight"}


# ----------------------------------------------------------------------------- files


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a model directory (single file or sharded index), prefixes
  such as "transformer." or "model." removed."""
  from safetensors import safe_open  # the `hf` extra

  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  elif os.path.exists(os.path.join(path, "model.safetensors")):
    files = ["model.safetensors"]
  else:
    raise UnsupportedModelError(
        f"No model.safetensors (or sharded index) in {path}. t5x_lite never unpickles "
        "pytorch_model.bin; re-save the model with save_pretrained(safe_serialization=True).")
  weights = {}
  for name in files:
    # framework="flax" reads bfloat16 tensors, which plain numpy cannot.
    with safe_open(os.path.join(path, name), framework="flax") as f:
      for key in f.keys():
        short = next((key[len(p):] for p in _PREFIXES if key.startswith(p)), key)
        weights[short] = np.asarray(f.get_tensor(key))
  return weights


def read_config(path: str) -> dict:
  config_path = os.path.join(path, "config.json")
  if not os.path.exists(config_path):
    raise UnsupportedModelError(f"{config_path} not found: pass a Hugging Face model "
                                "directory.")
  try:
    with open(config_path) as f:
      hf = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
    raise UnsupportedModelError(f"{config_path} cannot be read as JSON ({error}).") from None
  if not isinstance(hf, dict):
    raise UnsupportedModelError(f"{config_path} is not a JSON object.")
  hf = _ConfigFields(hf, config_path)
  if hf.get("model_type") not in FAMILIES:
    raise UnsupportedModelError(
        f"Hugging Face model_type {hf.get('model_type')!r} is not supported; t5x_lite imports "
        f"{sorted(FAMILIES)}.")
  return hf


def _tie(hf: dict, used: "_UsedTensors", embedding_key: str, always_tie: bool) -> bool:
  """transformers' rule: tie the output layer to the embedding when the config
  asks to (T5 always does), unless the file holds a different lm_head."""
  head = used["lm_head.weight"] if "lm_head.weight" in used.weights else None
  if always_tie or hf.get("tie_word_embeddings", True):
    return head is None or np.array_equal(head, used[embedding_key])
  if head is None:
    raise UnsupportedModelError(f"{hf.path} says tie_word_embeddings=false but the weights "
                                "have no lm_head.weight.")
  return False


def load(path: str, **config_overrides) -> Transformer:
  """Imports a Hugging Face model directory as a t5x_lite Transformer.

  config_overrides: TransformerConfig fields to change that do not affect the
  weights' meaning, e.g. dtype="bfloat16", scan_layers=True.
  """
  hf = read_config(path)
  family = hf["model_type"]
  make_config, make_rows = FAMILIES[family]
  config = make_config(hf)
  weights = read_safetensors(path)
  used = _UsedTensors(weights, path)
  tied = _tie(hf, used, _EMBEDDING_KEYS[family], always_tie=family == "t5")
  config = config.replace(tie_embeddings=tied, **config_overrides)
  sources: dict = {}  # our path -> the HF tensor it came from, for error messages
  if make_rows is None:
    try:
      flat = _gpt2_params(config, used)
    except ValueError as error:  # a fused q/k/v or output tensor of the wrong size
      raise UnsupportedModelError(f"{path}: GPT-2 tensors do not fit config.json ("
                                  f"{_shape_fields(hf)}): {error}") from None
  else:
    flat, sources = {}, {}
    for ours, theirs, transform in make_rows(config):
      tensor, sources[ours] = used[theirs], theirs
      try:
        flat[ours] = transform.to_ours(tensor)
      except ValueError:  # numpy cannot reshape it into heads x head_dim
        flat[ours] = tensor
    flat = _stack_experts(flat)
    sources = {path[:-1] if isinstance(path[-1], int) else path: name
               for path, name in sources.items()}
  if not tied:
    flat[("logits_dense", "kernel")] = used["lm_head.weight"].T
  _check_shapes(config, flat, sources, hf, path)
  unused = [name for name in weights if name not in used.names
            and not any(re.search(pattern, name) for pattern in _IGNORED_TENSORS)]
  if unused:
    raise UnsupportedModelError(
        f"{path}: {len(unused)} tensors are not used by config.json ({_shape_fields(hf)}), "
        f"e.g. {sorted(unused)[:4]}; the config describes a smaller model than the weights "
        "(fix num_hidden_layers / num_layers / n_layer).")
  return model_from_params(config, flat)  # casts every tensor to the config's param_dtype


class _UsedTensors:
  """The weight file's tensors, recording which ones the import reads; a missing one is
  an error naming it (the config describes a larger model than the weights)."""

  def __init__(self, weights: dict[str, np.ndarray], path: str):
    self.weights, self.path, self.names = weights, path, set()

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self.weights:
      raise UnsupportedModelError(f"{self.path}: tensor {name!r} is missing from the weights; "
                                  "config.json describes a larger model than they hold.")
    self.names.add(name)
    return self.weights[name]


def _shape_fields(hf: dict) -> str:
  fields = ("num_hidden_layers", "num_layers", "num_decoder_layers", "n_layer", "hidden_size",
            "d_model", "n_embd", "num_attention_heads", "num_heads", "n_head",
            "num_key_value_heads", "head_dim", "d_kv", "intermediate_size", "d_ff")
  return ", ".join(f"{field}={hf[field]}" for field in fields if hf.get(field) is not None)


def _check_shapes(config: TransformerConfig, flat: FlatParams, sources: dict, hf: dict,
                  path: str) -> None:
  """Every imported tensor has the shape the config gives it (before anything is built)."""
  expected = {path_: var.get_value().shape for path_, var in nnx.to_flat_state(nnx.state(
      abstract_model(config.replace(scan_layers=False)), nnx.Param))}
  for ours, value in flat.items():
    if ours in expected and tuple(value.shape) != tuple(expected[ours]):
      name = "/".join(map(str, ours))
      tensor = f"tensor {sources[ours]} (our {name})" if ours in sources else f"the {name} weights"
      raise UnsupportedModelError(
          f"{path}: {tensor} has shape {tuple(value.shape)} but config.json "
          f"({_shape_fields(hf)}) gives {tuple(expected[ours])}; the config does not describe "
          "these weights.")


def export(model: Transformer, path: str, *, model_type: Optional[str] = None) -> None:
  """Writes a T5 (model_type "t5"), Llama ("llama") or Mixtral ("mixtral") model in the
  Hugging Face layout: config.json + model.safetensors, loadable by transformers.
  Mixtral routes without a capacity limit, as our dropless mode does."""
  from safetensors.numpy import save_file

  config = model.config
  model_type = model_type or ("t5" if config.is_encoder_decoder else
                              "mixtral" if config.num_experts else "llama")
  if model_type == "t5":
    hf = _t5_hf_config(config)
  elif model_type == "llama":
    hf = _llama_hf_config(config)
  elif model_type == "mixtral":
    hf = _mixtral_hf_config(config)
  else:
    raise UnsupportedModelError(f"export supports model_type 't5', 'llama' and 'mixtral', "
                                f"not {model_type!r}.")
  if _meaning(FAMILIES[model_type][0](hf)) != _meaning(config):
    raise UnsupportedModelError(f"This model's config has knobs a {model_type} checkpoint "
                                "cannot express; it cannot be exported exactly.")
  flat = flat_params(model)
  prefix = "" if model_type == "t5" else "model."
  tensors = {prefix + theirs: np.ascontiguousarray(transform.to_hf(_our_tensor(flat, ours)))
             for ours, theirs, transform in FAMILIES[model_type][1](config)}
  if not config.tie_embeddings:
    tensors["lm_head.weight"] = np.ascontiguousarray(flat[("logits_dense", "kernel")].T)
  tensors = {k: v.astype(np.float32) for k, v in tensors.items()}
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)


# Knobs that do not change what the weights compute (or are written separately).
_NOT_ARCHITECTURE = ("dropout_rate", "dtype", "param_dtype", "scan_layers", "remat_policy",
                     "attention_impl", "embedding_init_std", "max_length", "tie_embeddings",
                     "scale_decoder_outputs", "moe_aux_loss_coef", "moe_z_loss_coef",
                     "moe_capacity_factor", "moe_encoder_interval")


def _meaning(config: TransformerConfig) -> dict:
  fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _NOT_ARCHITECTURE}
  fields["num_kv_heads"] = config.kv_heads
  fields["head_dim"] = config.resolved_head_dim
  fields["scales_decoder_outputs"] = config.scales_decoder_outputs
  return fields


def _hf_activation(config: TransformerConfig) -> str:
  return {"gelu_tanh": "gelu_new"}.get(config.activation, config.activation)


def _t5_hf_config(config: TransformerConfig) -> dict:
  act = _hf_activation(config)
  proj = ("gated-gelu" if act == "gelu_new" else f"gated-{act}") if config.gated else act
  return {"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
          "vocab_size": config.vocab_size, "d_model": config.d_model,
          "d_kv": config.resolved_head_dim, "d_ff": config.d_ff,
          "num_layers": config.num_encoder_layers,
          "num_decoder_layers": config.num_decoder_layers, "num_heads": config.num_heads,
          "relative_attention_num_buckets": config.relative_attention_num_buckets,
          "relative_attention_max_distance": config.relative_attention_max_distance,
          "layer_norm_epsilon": config.norm_epsilon, "feed_forward_proj": proj,
          "tie_word_embeddings": config.tie_embeddings,
          "scale_decoder_outputs": config.scales_decoder_outputs,
          "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


def _llama_hf_config(config: TransformerConfig) -> dict:
  return {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
          "vocab_size": config.vocab_size, "hidden_size": config.d_model,
          "intermediate_size": config.d_ff, "num_hidden_layers": config.num_decoder_layers,
          "num_attention_heads": config.num_heads, "num_key_value_heads": config.kv_heads,
          "head_dim": config.resolved_head_dim, "hidden_act": _hf_activation(config),
          "rms_norm_eps": config.norm_epsilon, "max_position_embeddings": config.max_length,
          "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
          "tie_word_embeddings": config.tie_embeddings, "attention_bias": False,
          "mlp_bias": False}


def _mixtral_hf_config(config: TransformerConfig) -> dict:
  return {**_llama_hf_config(config), "model_type": "mixtral",
          "architectures": ["MixtralForCausalLM"], "num_local_experts": config.num_experts,
          "num_experts_per_tok": config.moe_top_k, "sliding_window": None,
          "router_aux_loss_coef": config.moe_aux_loss_coef, "router_jitter_noise": 0.0,
          "output_router_logits": False}
