# The two set-up commands of the README. Both install what they need from this repository.
PY ?= python3

.PHONY: demo test install-test

demo:
	$(PY) -m pip install -q -e '.[cpu]'
	panoptic-node demo --overwrite   # a rerun replaces the demo's own outputs (never anything else)

install-test:
	$(PY) -m pip install -q -e '.[cpu,test]'
	# panopticapi-lite pins numpy<2, which is stale: its code runs on numpy 2
	$(PY) -m pip install -q --no-deps panopticapi-lite

test: install-test
	$(PY) -m pytest -q test
