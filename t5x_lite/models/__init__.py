"""Flax NNX transformer models: one config, three architectures."""

from t5x_lite.models.configs import TransformerConfig
from t5x_lite.models.transformer import Transformer, create_model, forward

__all__ = ["TransformerConfig", "Transformer", "create_model", "forward"]
