# The two set-up commands of the README. Both install what they need from this repository.
PY ?= python3

.PHONY: demo test install-test

demo:
	$(PY) -m pip install -q -e '.[cpu]'
	panoptic-node demo --overwrite   # a rerun replaces the demo's own outputs (never anything else)

# test-only vision_msgs, built against the ROS 2 wheels where no ROS 2 is installed (test/ros_msgs/build.py)
TEST_MSGS := $(CURDIR)/build/test_msgs/install

install-test:
	$(PY) -m pip install -q -e '.[cpu,test,fleet]'
	# panopticapi-lite pins numpy<2, which is stale: its code runs on numpy 2
	$(PY) -m pip install -q --no-deps panopticapi-lite
	# no ROS 2 here (CI): rclpy and the message packages from PyPI, vision_msgs built for the tests
	$(PY) -c "import rclpy" 2>/dev/null || $(PY) -m pip install -q -e '.[ros-wheels]'
	$(PY) -c "import vision_msgs" 2>/dev/null || $(PY) test/ros_msgs/build.py

test: install-test
	LD_LIBRARY_PATH=$(TEST_MSGS)/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH} \
	PYTHONPATH=$(TEST_MSGS)/lib/python$${PYTHONPATH:+:$$PYTHONPATH} \
	$(PY) -m pytest -q test
