"""Compatibility: the wire protocol lives in the torch-free ``robodual-client`` package."""

from __future__ import annotations

from robodual_client.wire import (
    MAX_DIMS,
    PROTOCOL_VERSION,
    WireError,
    check_action,
    check_observation,
    check_protocol,
    pack,
    unpack,
)

__all__ = ["MAX_DIMS", "PROTOCOL_VERSION", "WireError", "check_action", "check_observation", "check_protocol",
           "pack", "unpack"]
