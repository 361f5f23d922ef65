# Two commands do everything on a fresh machine: `make repro` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup repro test test-fast demo search report compare lint format bench
setup: $(STAMP)

# The stamp's name is the checksum of requirements.txt: set-up reruns when its content changes, never for
# its mtime alone (a fresh clone renews every mtime). pip is pinned too, so set-up changes nothing else.
PIP := pip==26.3
$(STAMP):
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet $(PIP)
	$(VENV)/bin/python -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-*
	touch $@

repro: setup
	dvc repro

test: setup
	ruff check .
	ruff format --check .
	actionlint
	python -m pytest

# The bottom of the pyramid (tests/unit): functions on their own.
test-fast: setup
	python -m pytest tests/unit

# configs/$(SCENARIO).yaml (demo: generated 96 px images, a random VGG16) as an experiment; params.yaml stays.
# The flags are read first: a scenario that does not exist stops here, not in a run of the default params.
# The name reaches the shell as one quoted word from the environment, never as text of the recipe, and only a
# name tools.scenarios accepts (letters, digits, - and _; a file in configs/) reaches eval.
SCENARIO ?= demo
export SCENARIO
demo: setup
	flags="$$(python -m tools.scenarios -- "$$SCENARIO")" && \
	eval dvc exp run --temp --name "$$SCENARIO-$$(date +%Y%m%d-%H%M%S)" "$$flags"
	dvc exp show --no-pager --md -n 1 --drop '.*' --keep 'Experiment|^(baseline|head|frozen|finetuned)\.(accuracy|roc_auc)$$|^metrics/digits/[a-z_]+\.json:accuracy$$'

# A search with Optuna over configs/search/$(SEARCH).yaml, each trial an experiment (docs/experiments-and-scaling.md):
# SEARCH_ARGS="--trials 40", "--storage grpc://host:13000 --push origin" to join a study of several machines.
# The name reaches the shell as one quoted word from the environment, never as text of the recipe.
SEARCH ?= digits
export SEARCH
search: setup
	python -m tools.search $(SEARCH_ARGS) -- "$$SEARCH"

lint: setup
	ruff check .
	ruff format --check .
	actionlint

format: setup
	ruff format .
	ruff check --fix .

BASE ?= main
report: setup
	python -m tools.report --base $(BASE) --out report.md --force
	dvc plots diff $(BASE) --out dvc_plots

# The study across experiments in one table: changed params, each model's accuracy [95 % CI] / AUC, digits.
compare: setup
	python -m tools.compare $(COMPARE_ARGS)

# Speed of each step on this machine; BENCH_ARGS="--scenario full" estimates the 25,000-image run.
bench: setup
	python -m tools.bench --force $(BENCH_ARGS)
