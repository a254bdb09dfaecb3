# The two set-up commands of the README. Both install what they need from this repository.
PY ?= python3

# Debian 12 and Ubuntu 24.04, ROS 2 Jazzy's platforms, refuse `pip install` into their own python3
# (PEP 668: "externally-managed-environment"). With such a Python the package goes into .venv, made from
# it with its packages visible (a ROS 2 install's rclpy and colcon, as ROS 2's "Using Python Packages"
# guide does); with any other (a venv, conda, pyenv) into $(PY) itself, as before.
VENV := .venv
RUN_PY := $(shell $(PY) -c 'import os, sys, sysconfig; managed = sys.prefix == sys.base_prefix and os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")); print("$(VENV)/bin/python" if managed else sys.executable)' 2>/dev/null)
ifeq ($(RUN_PY),)
$(error $(PY) does not run: give a Python >= 3.10 as `make demo PY=/path/to/python3`)
endif
# the venv's commands (panoptic-node, panoptic_node) come first on PATH for the tests that start them
RUN_PATH := PATH=$(abspath $(dir $(RUN_PY))):$$PATH
# written last, so that a venv left half made (no ensurepip: Debian and Ubuntu ship venv apart) is not taken
# for one; a .venv make did not make (yours, or that one) is never changed or removed
VENV_MADE := $(VENV)/COLCON_IGNORE
NEEDS_VENV := $(if $(filter $(VENV)/bin/python,$(RUN_PY)),$(VENV_MADE))

.PHONY: demo test install-test

$(VENV_MADE):
	@if [ -e $(VENV) ]; then echo "make: $(VENV) exists but make did not finish making it (no $(VENV_MADE)): remove it, or give its Python as PY=$(VENV)/bin/python" >&2; exit 1; fi
	$(PY) -m venv --system-site-packages $(VENV)
	touch $@   # colcon, in a workspace holding this folder, does not look inside the venv
	@echo "$(PY) is externally managed (PEP 668): the package goes into $(VENV) (source $(VENV)/bin/activate for panoptic-node)"

demo: | $(NEEDS_VENV)
	$(RUN_PY) -m pip install -q -e '.[cpu]'
	$(RUN_PATH) $(RUN_PY) -m panoptic_node.cli demo --overwrite   # a rerun replaces the demo's own outputs (never anything else)

# test-only vision_msgs, built against the ROS 2 wheels where no ROS 2 is installed (test/ros_msgs/build.py)
TEST_MSGS := $(CURDIR)/build/test_msgs/install

install-test: | $(NEEDS_VENV)
	$(RUN_PY) -m pip install -q -e '.[cpu,test,fleet]'
	# panopticapi-lite pins numpy<2, which is stale: its code runs on numpy 2
	$(RUN_PY) -m pip install -q --no-deps panopticapi-lite
	# no ROS 2 here (CI): rclpy and the message packages from PyPI, vision_msgs built for the tests
	$(RUN_PY) -c "import rclpy" 2>/dev/null || $(RUN_PY) -m pip install -q -e '.[ros-wheels]'
	$(RUN_PY) -c "import vision_msgs" 2>/dev/null || $(RUN_PY) test/ros_msgs/build.py

test: install-test
	LD_LIBRARY_PATH=$(TEST_MSGS)/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH} \
	PYTHONPATH=$(TEST_MSGS)/lib/python$${PYTHONPATH:+:$$PYTHONPATH} \
	$(RUN_PATH) $(RUN_PY) -m pytest -q -n 2 --dist loadfile --durations=25 test   # two workers, a file each at a time (its module fixtures made once); the slowest tests named in every log: the suite must stay under 15 min
