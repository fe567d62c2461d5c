"""Compatibility: the client lives in the torch-free ``robodual-client`` package.

    from robodual_client import RemotePolicy   # on a robot: pip install robodual-client
"""

from __future__ import annotations

from robodual_client import ClientError, ConnectError, RemotePolicy, ServerError, WireError

__all__ = ["ClientError", "ConnectError", "RemotePolicy", "ServerError", "WireError"]
