# Set-up on a fresh machine: `make demo` (the main job) or `make test` (the test suite).
# Each creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1

.PHONY: demo demo-robustness test test-fast test-oldest lint benchmark clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

# The demo over 2 and 1 threads and 3 training seeds: its metrics' range (not part of `make test`; about 35 minutes
# on 2 cores: the 2-thread runs one after another, then the three 1-thread runs together).
demo-robustness: $(STAMP)
	$(PY) scripts/demo_robustness.py --threads 2 1 --seeds 0 1 2 --jobs 3

# The web app's test drives Debian's headless Chromium (a browser download does not work offline).
BROWSER := /usr/bin/chromedriver
$(BROWSER):
	command -v chromedriver >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

# The OpenVINO tests run in a process of their own: one whole-suite process that ran them segfaulted later, in
# test_pipeline (not reproduced with those modules alone; see the README's Limitations).
test: $(STAMP) $(BROWSER)
	$(PY) -m ruff check src tests scripts benchmarks app.py
	$(PY) -m pytest tests --ignore=tests/test_openvino.py
	$(PY) -m pytest tests/test_openvino.py

# The suite without the tests marked slow (tests/conftest.py says which kinds), for a quick loop while editing.
test-fast: $(STAMP)
	$(PY) -m pytest tests -m "not slow"

# The Auto classes, pipeline and trust_remote_code tests against the oldest transformers the package declares.
OLDEST := .venv-oldest
test-oldest:
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q -e ".[dev]" "transformers==5.23.*"
	$(OLDEST)/bin/python -m pytest tests/test_pipeline.py tests/test_install.py

lint: $(STAMP)
	$(PY) -m ruff check src tests scripts benchmarks app.py
	$(PY) -m ruff format --check src tests scripts benchmarks app.py

benchmark: $(STAMP)
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) $(OLDEST) build *.egg-info src/*.egg-info
