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

PREFECT_PORT ?= 4200
POOL ?= kevolve-gpu

.PHONY: demo test ui deploy worker clean-venv

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

# The Prefect server and its UI on this machine (SQLite under $(PREFECT_HOME)); flows, workers
# and `kevolve model register` reach it at PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api.
ui: $(STAMP)
	@echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  (export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api)"
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

# prefect.yaml's deployments on the server at PREFECT_API_URL, with their process work pool.
deploy: $(STAMP)
	$(BIN)/prefect work-pool inspect $(POOL) >/dev/null 2>&1 || $(BIN)/prefect work-pool create $(POOL) --type process
	$(BIN)/prefect --no-prompt deploy --all

# One per GPU host: runs the flows the deployments schedule (CUDA_VISIBLE_DEVICES reaches them).
worker: $(STAMP)
	$(BIN)/prefect worker start --pool $(POOL)

clean-venv:
	rm -rf $(VENV)
