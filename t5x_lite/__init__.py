"""t5x_lite: a small, fast, readable JAX codebase for language-model pretraining research."""

from t5x_lite.common import platforms

__version__ = "0.1.0"

# Before anything starts a JAX backend: the CPU alone where no accelerator exists
# (common/platforms.py says why).
platforms.cpu_only_without_accelerators()
