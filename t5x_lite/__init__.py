"""t5x_lite: a small, fast, readable JAX codebase for language-model pretraining research."""

__version__ = "0.1.0"
