"""A light client for ``robodual serve`` that mirrors the local policy interface (no torch needed).

    from robodual_core.client import RemotePolicy
    policy = RemotePolicy("ws://127.0.0.1:8000", token="...")
    policy.reset()
    action = policy.step({"rgb_static": image, "proprio": state}, "open the drawer")

Evaluation code runs against a local or a remote policy unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robodual_core.errors import RobodualError, require
from robodual_core.wire import pack, unpack


class RemotePolicy:
    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0, max_size: int = 64 * 2**20):
        require("websockets", "pip install 'robodual-core[serve]'")
        from websockets.sync.client import connect

        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            self._conn = connect(url, additional_headers=headers, open_timeout=timeout, max_size=max_size,
                                 compression=None, proxy=None)
            self._ws = self._conn.__enter__()
        except Exception as exc:
            raise RobodualError(f"cannot connect to policy server {url}: {exc}") from None
        self.timeout = timeout
        self.metadata = self._receive()
        if self.metadata.get("type") != "metadata":
            raise RobodualError(f"policy server {url} sent {self.metadata.get('type')!r} instead of its metadata")
        self.last_timing: dict[str, float] = {}

    def _receive(self) -> dict[str, Any]:
        return unpack(self._ws.recv(timeout=self.timeout))

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        self._ws.send(pack(message))
        reply = self._receive()
        if reply.get("type") == "error":
            raise RobodualError(f"policy server: {reply.get('error')}")
        return reply

    def reset(self) -> None:
        self._request({"type": "reset"})

    def step(self, observation: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        reply = self._request({"type": "step", "observation": {k: np.asarray(v) for k, v in observation.items()},
                               "instruction": instruction})
        self.last_timing = reply.get("timing", {})
        return np.asarray(reply["action"])

    def close(self) -> None:
        self._conn.__exit__(None, None, None)

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
