"""Package metadata for t5x_lite."""

from setuptools import find_packages, setup

setup(
    name="t5x_lite",
    version="0.1.0",
    description="A small, fast, readable JAX codebase for language-model pretraining research "
                "with a built-in scaling-law toolkit.",
    packages=find_packages(include=["t5x_lite", "t5x_lite.*"]),
    package_data={"t5x_lite": ["data/multiple_choice/*.jsonl", "data/*.json",
                               "inference/harness_tasks/*.yaml", "pods/gpu_targets/*.txtpb"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "seqio==0.0.20",
        "tensorflow-datasets>=4.9.10,<5",
        "gin-config>=0.5.0",
        "numpy>=2.0",
        "scipy>=1.13",
        "matplotlib>=3.8",
        "sentencepiece>=0.2.0",
        "tensorboard>=2.21",  # tf.summary needs it; tensorflow no longer installs it
        "qwix>=0.1.8,<0.2",  # quantization (t5x_lite/quantization.py)
        # Curation (data/curation): datatrove's filters, deduplication and executors; spacy
        # is its English word tokenizer (a blank pipeline, no model download); orjson its
        # JSONL writer.
        "datatrove>=0.10.1,<0.11",
        "spacy>=3.8,<4",
        "orjson>=3.10",
    ],
    extras_require={
        # nbclient, nbformat, ipykernel: CI executes the colab/ notebooks in small mode.
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "nbclient>=0.10",
                "nbformat>=5.10", "ipykernel>=6.29"],
        # Weight import/export and its parity tests. The Makefile installs the
        # CPU wheel of torch 2.13.0 first so this never pulls a CUDA build.
        "hf": ["torch>=2.4", "transformers>=5.23,<6", "safetensors>=0.4"],
        # The lm-evaluation-harness model and command (inference/harness.py, t5x_lite.lm_eval).
        "eval": ["lm-eval>=0.4.13,<0.5"],
        # The peers `make bench` measures against besides PyTorch (tools/benchmark_*.py):
        # Hugging Face TRL's DPOTrainer.
        "bench": ["trl>=1.16,<2"],
        # Compile checks of pods (t5x_lite.compile_check) from a CPU machine: libtpu as
        # jax[tpu]==0.10.2 pins it, JAX's CUDA plugin without any CUDA runtime, and
        # ptxas (nvcc's wheel) to assemble the GPU programs. No accelerator is used.
        "pods": ["libtpu==0.0.42.1", "jax-cuda12-plugin==0.10.2", "jax-cuda12-pjrt==0.10.2",
                 "nvidia-cuda-nvcc-cu12>=12.6,<13"],
    },
)
