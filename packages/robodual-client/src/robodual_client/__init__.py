"""robodual's robot-side client: :class:`RemotePolicy` and the wire protocol (numpy, msgpack, websockets)."""

from __future__ import annotations

from robodual_client.errors import ClientError, ConnectError, ServerError, WireError
from robodual_client.policy import RemotePolicy
from robodual_client.wire import PROTOCOL_VERSION, check_action, check_observation, pack, unpack

__version__ = "0.1.0"

__all__ = ["PROTOCOL_VERSION", "ClientError", "ConnectError", "RemotePolicy", "ServerError", "WireError",
           "check_action", "check_observation", "pack", "unpack"]
