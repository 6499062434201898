# sslbook: two commands do everything.
#   make book   install into .venv (once) and build the book into _build/html
#   make test   install into .venv (once), lint (ruff), build the book, run every test and every notebook (smoke)
#   make execute  re-run every notebook top to bottom in the `cpu` profile and store its outputs
#   (a draft replaces its chapter with `scripts/execute_notebooks.py --promote drafts/<part>/<page>.ipynb`)
#   (drafts/, when present, holds pages not yet executed in the cpu profile: CI runs them in smoke, the book leaves them out)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED_CIFAR := ../shared/data/cifar10/materialize.py

# Where datasets live; the package reads the same variable (default ~/.cache/sslbook/data).
export SSLBOOK_DATA ?= $(CURDIR)/data
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: install data book lint test unit notebooks execute experiments bench zoo clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (sslbook)" > /dev/null
	touch $(STAMP)

# The offline CIFAR-10 copy, when this checkout sits beside ../shared (CI, the developers' machines).
# Run every time (idempotent, ~10 s): the script rewrites an older copy (e.g. a class-sorted test split).
# Elsewhere the loaders download CIFAR-10 with torchvision on first use.
data: $(STAMP)
	@if [ -f "$(SHARED_CIFAR)" ]; then $(PY) $(SHARED_CIFAR) "$(SSLBOOK_DATA)"; fi

book: $(STAMP)
	$(VENV)/bin/jupyter-book build . --builder html -W --keep-going

unit: data
	SSLBOOK_PROFILE=smoke $(PY) -m pytest tests -q -ra

notebooks: data
	SSLBOOK_PROFILE=smoke $(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -p no:cacheprovider chapters $(wildcard drafts) -q -ra

# ruff (settings in pyproject.toml): lint errors, then whether `ruff format` would change a file.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint data book
	SSLBOOK_REQUIRE_BOOK=1 SSLBOOK_PROFILE=smoke $(PY) -m pytest tests -q -ra
	SSLBOOK_PROFILE=smoke $(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -p no:cacheprovider chapters $(wildcard drafts) -q -ra

execute: data
	SSLBOOK_PROFILE=cpu $(PY) scripts/execute_notebooks.py chapters

# The book's experiments (benchmarks/book_experiments.py): epoch-budgeted, two-seed sweeps whose results files the
# chapters read (E="moco-queue simsiam-stopgrad" for some; default all). Run alone on the machine.
E ?= all
experiments: data
	$(PY) benchmarks/book_experiments.py $(E)

# The performance suite (benchmarks/): installs the benchmark extra (lightly, kornia) without letting it
# change the installed torch/torchvision, runs every benchmark (~55 min on 2 CPU cores: augmentation,
# training-step variants, sslbook vs lightly on five methods with BENCH_MINUTES per arm, SimCLR for 10
# minutes) and regenerates benchmarks/README.md from the results files.
BENCH_MINUTES ?= 2
bench: data
	$(PY) -m pip freeze | grep -iE '^(torch|torchvision)==' > $(VENV)/bench-constraints.txt
	$(PY) -m pip install --quiet -r requirements-bench.txt -c $(VENV)/bench-constraints.txt
	$(PY) benchmarks/augment_throughput.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/vs_lightly.py --minutes $(BENCH_MINUTES)
	$(PY) benchmarks/simclr_cpu.py --minutes 10
	$(PY) benchmarks/report.py

# The model zoo (zoo/README.md): train, resume or reuse entries, e.g. `make zoo ZOO="simclr moco_v2"`.
# Each entry trains in the cpu profile for its epoch budget (sslbook/zoo.py); run it alone on the machine.
ZOO ?= all
zoo: data
	$(PY) -m sslbook zoo $(ZOO) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(FORCE),--force)

clean:
	rm -rf _build
