"""The client's errors: each says in one line what was expected and what was found.

This module imports nothing, so a command line can test ``isinstance(exc, ClientError)`` for free.
"""

from __future__ import annotations


class ClientError(Exception):
    """A robodual client error: a bad message, a refused connection or an error reply of the server."""


class WireError(ClientError):
    """A message that does not follow the protocol; the text names the key and what is wrong."""


class ServerError(ClientError):
    """The policy server answered a request with an error reply."""


class ConnectError(ClientError):
    """The policy server cannot be reached, refused the connection or closed it."""
