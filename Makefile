# Two entry points: `make run` (the main job) and `make test`. Both set up `.venv` first.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LEMON_CONFIGS := /usr/lib/*/cmake/lemon/lemonConfig.cmake /usr/lib/cmake/lemon/lemonConfig.cmake \
                 /usr/local/lib/cmake/lemon/lemonConfig.cmake $(CONDA_PREFIX)/lib/cmake/lemon/lemonConfig.cmake
# `make setup NO_EMD=1` (after `make clean`): the extension without exact EMD, LEMON neither installed nor used
# (Sinkhorn, MESH and the fused CPU loops only; kernels.emd and --variant sa-emd then say how to add it).
NO_EMD ?=
BUILD_FLAGS := $(if $(NO_EMD),-Cbuild-dir=build/no-emd -Ccmake.define.CMAKE_DISABLE_FIND_PACKAGE_lemon=ON)

.PHONY: setup run test bench system-deps clean

setup: $(STAMP)

# System packages: LEMON for exact EMD (where it cannot be installed the extension is built without it),
# python3-venv on Debian/Ubuntu.
system-deps:
	@if [ -z "$(NO_EMD)" ] && ! ls $(LEMON_CONFIGS) >/dev/null 2>&1 && [ -z "$$LEMON_DIR" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq liblemon-dev; \
	  elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq liblemon-dev; \
	  else \
	    echo "warning: the LEMON graph library is missing, so exact EMD (kernels.emd, --variant sa-emd) is left" \
	         "out. To have it, install LEMON with 'apt-get install liblemon-dev' (Debian/Ubuntu) or" \
	         "'conda install -c conda-forge lemon', or set LEMON_DIR, then 'make clean setup'." >&2; \
	  fi; \
	fi
	@if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	  else echo "error: $(PYTHON) cannot create virtual environments; install python3-venv" >&2; exit 1; fi; \
	fi

$(STAMP): pyproject.toml CMakeLists.txt $(wildcard emd_cpp/CMakeLists.txt emd_cpp/*.cpp emd_cpp/*.hpp)
	@$(MAKE) --no-print-directory system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]' $(BUILD_FLAGS)
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m tasks.random_objects --sigma 0.01

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pytest --benchmark-only

clean:
	rm -rf build $(VENV) emd_cpp/*.so
