# The two commands of the README. Each creates .venv when missing (scripts/venv.sh).
.PHONY: demo test test-fast lint venv

venv:
	@bash scripts/venv.sh

demo: venv
	MUJOCO_GL=egl .venv/bin/robodual demo --out demo_out

test: venv
	.venv/bin/ruff check .
	MUJOCO_GL=egl .venv/bin/python -m pytest -q -x --timeout=900 --durations=15 tests

# the suite without tests marked slow (end-to-end runs, kill -9 and resume, benchmarks): a quick check while working
test-fast: venv
	.venv/bin/ruff check .
	MUJOCO_GL=egl .venv/bin/python -m pytest -q -x --timeout=900 -m "not slow" tests

lint: venv
	.venv/bin/ruff check .
