# aver: two commands do all the set-up on a fresh clone — `make demo` and `make test`.
# Both create .venv with everything they need (torch, the extraction stack, test tools).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.aver-installed

# Public interface (see README.md). Names differ from the CLI flags they feed where a flag
# name would mislead: FOLD_FILES (VAVL partition CSVs) is not FOLDS (fold numbers for cv).
DATASET    ?= synthetic
DATA       ?=
CACHE      ?= caches
PRESET     ?= paper
DEVICE     ?= cpu
LABELS     ?=
FOLD_FILES ?=
WORKERS    ?= 0
FOLD       ?= 1
FOLDS      ?=
RUNS       ?= runs
MODEL      ?= de3
VARIANT    ?=
TABLE      ?=
VARIANTS   ?=
SEEDS      ?=
SCHEDULER  ?=
EXTRA      ?=

AVER := $(VENV)/bin/aver

TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: venv demo test test-browser docs extract train cv sweep lint bench gpu-check gpu-wheels clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned to the builds this project is tested with (served from local disk here).
	$(PIP) install --quiet $(TORCH_PINS)
	$(PIP) install --quiet -e '.[extract,dev]' $(TORCH_PINS)
	# facenet-pytorch's metadata pins torch<2.3, numpy<2 and Pillow<10.3; it works with current
	# releases, so it is installed without its declared dependencies.
	$(PIP) install --quiet --no-deps facenet-pytorch==2.6.0
	# setuptools leaves an egg-info in the tree; it would shadow the installed metadata (entry points)
	# for commands run from the repository root
	rm -rf aver.egg-info
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(AVER) demo --cache $(CACHE) --runs $(RUNS) --device $(DEVICE) --model $(MODEL)

extract: $(STAMP)
	$(AVER) extract --dataset $(DATASET) --cache $(CACHE) --preset $(PRESET) \
	  --device $(DEVICE) --workers $(WORKERS) \
	  $(if $(DATA),--data $(DATA)) $(if $(LABELS),--labels $(LABELS)) \
	  $(if $(FOLD_FILES),--fold-files '$(FOLD_FILES)') $(EXTRA)

STORE := $(CACHE)/$(DATASET).zarr

# run folders: aver's default under RUNS (RUNS/<dataset>/[<model>/]<variant>[/fold<k>]; `aver train --help`)
train: $(STAMP)
	$(AVER) train --cache $(STORE) --fold $(FOLD) --model $(MODEL) $(if $(VARIANT),--variant $(VARIANT)) \
	  --preset $(PRESET) --device $(DEVICE) --runs $(RUNS) $(EXTRA)

cv: $(STAMP)
	$(AVER) cv --cache $(STORE) --model $(MODEL) $(if $(VARIANT),--variant $(VARIANT)) --preset $(PRESET) \
	  --device $(DEVICE) --runs $(RUNS) $(if $(FOLDS),--folds $(FOLDS)) --workers $(WORKERS) $(EXTRA)

# a paper's table (TABLE=de3:2) or VARIANTS=a,b of MODEL, × FOLDS × SEEDS, with paired statistics;
# WORKERS=N: a local Dask cluster, SCHEDULER=tcp://host:8786: a running one (`aver sweep --help`)
sweep: $(STAMP)
	$(AVER) sweep --cache $(STORE) $(if $(TABLE),--table $(TABLE),--model $(MODEL) --variants $(VARIANTS)) \
	  --preset $(PRESET) --device $(DEVICE) --runs $(RUNS) $(if $(FOLDS),--folds $(FOLDS)) \
	  $(if $(SEEDS),--seeds $(SEEDS)) $(if $(SCHEDULER),--scheduler $(SCHEDULER),--workers $(WORKERS)) $(EXTRA)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -ra $(PYTEST_ARGS)

# the page of `aver qa` as a browser shows it: installs Chromium from the system packages when missing
test-browser: $(STAMP)
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q && \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y chromium; }
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -ra -m browser $(PYTEST_ARGS)

# docs/qa.png: the page of `aver qa` on the synthetic cache (tiny preset), screenshot by a headless
# Chromium (installed from the system packages when missing)
docs: $(STAMP)
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -q && \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y chromium; }
	HF_HUB_OFFLINE=1 $(PY) docs/make_qa_png.py --out docs/qa.png

lint: $(STAMP)
	$(VENV)/bin/ruff check aver extract train tests bench docs
	$(VENV)/bin/ruff format --check aver extract train tests bench docs

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/extract.py
	HF_HUB_OFFLINE=1 $(PY) bench/train.py --clips 1440

# A GPU's first minutes (bench/gpu_check.py): environment, pytest -m gpu, every benchmark with its own
# budget, tables in $$OUT (or bench/out). DRY=1: the same on the CPU with tiny sizes (< 2 min).
# Runs under the machine's python3: a bare GPU image with torch builds .venv-gpu from it and the
# wheels in .whl/ (make gpu-wheels, here, 41 MiB) when no .venv is there.
gpu-check:
	python3 bench/gpu_check.py $(if $(DRY),--dry)

# the packages a GPU image with torch, transformers, timm and OpenCV lacks, as wheels for its
# Python 3.12, pinned to this venv's versions; carried to a machine with no package index
GPU_WHEELS := zarr numcodecs donfig google-crc32c dask distributed partd locket tblib tornado zict \
  tensorboardX av
gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  --platform manylinux1_x86_64 -d .whl facenet-pytorch==2.6.0 \
	  $$($(PIP) freeze | grep -i -E '^($(shell echo $(GPU_WHEELS) | tr ' ' '|'))==')
	du -sh .whl

clean:
	rm -rf $(VENV) caches data runs .pytest_cache
