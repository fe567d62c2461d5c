# The two commands of the README. Each creates .venv when missing (scripts/venv.sh).
.PHONY: demo test lint venv

venv:
	@bash scripts/venv.sh

demo: venv
	MUJOCO_GL=egl .venv/bin/robodual demo --out demo_out

test: venv
	.venv/bin/ruff check .
	MUJOCO_GL=egl .venv/bin/python -m pytest -q -x --timeout=900 tests

lint: venv
	.venv/bin/ruff check .
