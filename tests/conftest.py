"""Shared test settings: headless rendering, no hub access, small thread counts."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP spin-waiting makes
# two threads several times slower than one.
os.environ.setdefault("OMP_NUM_THREADS", "1")
