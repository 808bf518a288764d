# One command to install and run the demo, one to install and run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# llama-cpp-python ships only as source: build the wheel once (about 10 minutes on 2 cores)
# and keep it here, so later installs take seconds.
WHEELS ?= $(HOME)/.cache/labelrank-wheels
LLAMA_CPP := llama-cpp-python==0.3.36

.PHONY: install demo test test-slow lint llm-install test-llm serve-local test-browser

$(BIN)/labelrank: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so the CPU build on disk is used instead of the CUDA one.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,tune,plots,ray]'
	touch $(BIN)/labelrank

install: $(BIN)/labelrank

demo: install
	$(BIN)/labelrank demo

test: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

# Minutes-long tests: real multi-process servers, kill -9 during indexing, schema fuzzing.
test-slow: install
	$(BIN)/python -m pytest -m slow

# The web console in Debian's chromium (apt-get install chromium; .ci/run installs it), against
# a real `labelrank serve`; screenshots of every page land in LABELRANK_SCREENSHOTS.
LABELRANK_SCREENSHOTS ?= /tmp/labelrank-screenshots
test-browser: install
	LABELRANK_SCREENSHOTS=$(LABELRANK_SCREENSHOTS) $(BIN)/python -m pytest -m browser
	@echo "screenshots: $(LABELRANK_SCREENSHOTS)"

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

llm-install: install
	mkdir -p $(WHEELS)
	ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
		$(BIN)/pip wheel --no-deps '$(LLAMA_CPP)' -w $(WHEELS)
	$(BIN)/pip install -q --find-links $(WHEELS) -e '.[llm]'

test-llm: llm-install
	$(BIN)/python -m pytest -m llm

serve-local: llm-install
	$(BIN)/labelrank llm serve-local
