"""A robot installs only robodual-client: a clean venv (no system site-packages, no torch, no robodual-core)
drives a policy served by `robodual serve` from the main environment.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "packages" / "robodual-client"

# `robodual serve` exactly as the CLI runs it; only loading a checkpoint is replaced by a small stateful policy
SERVE = textwrap.dedent("""
    import sys
    import time
    import numpy as np
    import robodual_cli.commands.serve as serve_cmd

    class Session:
        def __init__(self):
            self.t = 0

        def reset(self):
            self.t = 0

        def step(self, observation, instruction):
            self.t += 1
            if instruction == "slow":  # answers after the client gave up: its reply arrives late
                time.sleep(1.5)
            return observation["proprio"] * 2 + self.t + len(instruction)

    class Policy:
        observation_spec = {"rgb_static": ((8, 8, 3), "uint8"), "proprio": ((4,), "float32")}
        action_dim, action_horizon, control_rate_hz = 4, 1, 10.0

        def new_session(self):
            return Session()

    serve_cmd._load = lambda *args: Policy()  # (path, kind, mode, unnorm_key)
    from robodual_cli.app import main
    main(sys.argv[1:])
""")

DRIVE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from robodual_client import ClientError, RemotePolicy

    url = sys.argv[1]
    out = {"torch": "torch" in sys.modules, "core": "robodual_core" in sys.modules}
    with RemotePolicy(url, token="robot-token") as policy:
        out["spec"] = policy.metadata["observation_spec"]
        policy.reset()
        obs = {"rgb_static": np.zeros((8, 8, 3), np.uint8), "proprio": np.arange(4, dtype=np.float32)}
        out["actions"] = [policy.step(obs, "go").tolist() for _ in range(3)]
        obs["proprio"][1] = np.nan
        try:
            policy.step(obs, "go")
        except ClientError as exc:
            out["nan"] = str(exc)
        obs["proprio"][1] = 1.0
        policy.timeout = 0.5
        try:
            policy.step(obs, "slow")
        except ClientError as exc:
            out["timeout"] = str(exc)
        policy.timeout = 30
        out["after_timeout"] = policy.step(obs, "go").tolist()  # its own action, not the late one
        out["dropped"] = policy.dropped_replies
    try:
        RemotePolicy(url, token="wrong")
    except ClientError as exc:
        out["wrong_token"] = str(exc)
    for mod in ("torch", "robodual_core"):
        try:
            __import__(mod)
            out[mod + "_importable"] = True
        except ImportError:
            out[mod + "_importable"] = False
    print(json.dumps(out))
""")


def test_the_client_package_imports_no_other_robodual_package():
    bad = []
    for path in (CLIENT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bad += [f"{path.name} imports {n}" for n in names
                    if n.split(".")[0] in ("torch", "zarr", "diffusers") or
                    (n.startswith("robodual_") and not n.startswith("robodual_client"))]
    assert not bad
    deps = re.search(r"dependencies = \[(.*?)\]", (CLIENT / "pyproject.toml").read_text(), re.S).group(1)
    assert sorted(re.findall(r'"([a-z]+)', deps)) == ["msgpack", "numpy", "websockets"]


@pytest.mark.slow
def test_a_clean_venv_with_only_the_client_drives_robodual_serve(tmp_path, clean_venv):
    env_dir = tmp_path / "robot-venv"
    py = clean_venv(env_dir)
    # a normal install: numpy, msgpack and websockets come from the machine's (offline) pip index
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", str(CLIENT)], capture_output=True, text=True,
                             timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    pip_list = subprocess.run([str(py), "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
    installed = {p["name"].lower() for p in json.loads(pip_list.stdout)}
    assert {"robodual-client", "numpy", "msgpack", "websockets"} <= installed
    assert not installed & {"torch", "robodual-core", "zarr", "diffusers"}, installed

    env = {**os.environ, "ROBODUAL_SERVE_TOKEN": "robot-token", "COLUMNS": "300"}
    server = subprocess.Popen([sys.executable, "-c", SERVE, "serve", "--policy", str(tmp_path / "run"),
                               "--port", "0", "--max-connections", "4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline()
        match = re.search(r"on ws://127\.0\.0\.1:(\d+) ", line)
        assert match, (line, server.stderr.read() if server.poll() is not None else "")
        port = int(match.group(1))
        assert port != 0 and f"http://127.0.0.1:{port}/healthz" in line  # --port 0 names the bound port
        drive = subprocess.run([str(py), "-c", DRIVE, f"ws://127.0.0.1:{port}"], capture_output=True, text=True,
                               timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        assert drive.returncode == 0, drive.stderr[-2000:]
        out = json.loads(drive.stdout)
    finally:
        server.terminate()
        server.wait(30)
    assert out["spec"]["proprio"] == {"shape": [4], "dtype": "float32"}
    assert out["actions"] == [[2 * i + t + 2 for i in range(4)] for t in (1, 2, 3)]
    assert "observation['proprio'] contains 1 NaN" in out["nan"]
    assert "HTTP 401" in out["wrong_token"]
    assert "sent no reply within 0.5 s (its late reply will be dropped)" in out["timeout"]
    assert out["after_timeout"] == [2 * i + 5 + 2 for i in range(4)] and out["dropped"] == 1
    assert not out["torch"] and not out["core"] and not out["torch_importable"] and not out["robodual_core_importable"]
