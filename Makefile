# sn_detection: `make demo` trains the SN Mask R-CNN demo, `make test` runs the test suite.
# Both run `make setup` first, which creates .venv/ and installs everything (idempotent).

PYTHON_BOOTSTRAP ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sn_detection-setup
# what the environment is built from: a change to any of these re-runs setup (the Makefile too:
# its recipe installs packages that requirements.txt cannot pin)
SETUP_INPUTS := Makefile requirements.txt setup.py scripts/install_detectron2.py $(wildcard sn_detection/csrc/*)

.PHONY: setup demo test bench clean-venv

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -r requirements.txt
# panopticapi (PQ of Panoptic FPN: detectron2's COCOPanopticEvaluator imports it), packaged as
# panopticapi-lite. Without its dependencies: it declares numpy<2 and scikit-image, while the
# modules detectron2 uses (evaluation, utils) import only numpy and PIL, and work on numpy 2.
# Not in requirements.txt: pip takes --no-deps only for a whole install, not per requirement.
	$(PY) -m pip install --no-deps panopticapi-lite==0.2.0
	$(PY) scripts/install_detectron2.py
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	$(PY) -m sn_detection.collect_env
	touch $(STAMP)

# Train Mask R-CNN with SN from scratch on the embedded shapes dataset (CPU), then print COCO AP.
demo: setup
	$(PY) tools/train_net.py --config-file configs/quick_schedules/mask_rcnn_sn_demo.yaml \
		OUTPUT_DIR output/demo

# Lint and format check (ruff.toml: detectron2's 100 columns, isort), then the test suite on every
# core (pytest-xdist; each test process uses one torch thread, tests/conftest.py).
test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n auto tests

bench: setup
	$(PY) benchmarks/bench_norm.py

clean-venv:
	rm -rf $(VENV)
