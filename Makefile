# Set-up and the two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# State (search database, Chroma index, caches, reports) lives outside the source tree.
export KEVOLVE_HOME ?= $(HOME)/.local/share/kevolve
export PREFECT_HOME ?= $(KEVOLVE_HOME)/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export HF_HUB_OFFLINE = 1

.PHONY: demo test ui clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch before anything that depends on it: a bare requirement would pull a multi-GB CUDA
	@# build onto a machine with no GPU. With a GPU, any torch the range admits.
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/python -m pip install -q "torch>=2.5"; \
	else \
		$(BIN)/python -m pip install -q torch==2.13.0; \
	fi
	$(BIN)/python -m pip install -q -e ".[test,embeddings,dask]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kevolve specs validate specs/
	$(BIN)/kevolve hw detect
	$(BIN)/kevolve hw show
	@# A short real search; with no LLM answering it uses the offline synthesizer and says so.
	$(BIN)/kevolve tune softmax --budget 8

test: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
