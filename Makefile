# The two commands: `make demo` (the main job end to end on synthetic faces) and `make test` (the pytest suite).
# Both build .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test lint docs venv clean-venv gpu-check

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m tools.demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

# On a machine with a GPU: MFU of the ViT and IResNet-100 steps, 50-step runs, device views vs CPU -> one JSON.
gpu-check: $(STAMP)
	$(PY) -m tools.gpu_check $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean-venv:
	rm -rf $(VENV)

# The documentation site (docs/ + mkdocs.yml) into site/, offline; --strict: a broken link or page is an error.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site
