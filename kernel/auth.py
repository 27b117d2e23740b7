"""Transport authentication: who is at the other end of a connection, proved before any frame.

- tcp:// is CurveZMQ or nothing. The ZAP handler (pyzmq's asyncio authenticator, started
  before bind) admits only public keys in the principal table, and stamps each message with
  its principal's name as ZeroMQ's User-Id. A kernel told to serve tcp without keys refuses
  to boot.
- ipc:// is the operator's: the socket file is made 0600 (by the umask at bind) inside a 0700
  folder, so only the uid that booted the kernel can connect, and that uid is `operator`.

Either way the kernel reads the principal off the connection (`principal_of`), never a frame.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from . import logs
from .principals import OPERATOR, PrincipalTable

log = logs.get("llmos.auth")

ZAP_DOMAIN = "llmos"


class AuthError(RuntimeError):
    """The socket cannot be served safely; the message says how to set it up."""


class PrincipalAuthenticator(AsyncioAuthenticator):
    """Admits CURVE clients whose key is a principal's, and names the connection after it."""

    def __init__(self, ctx: zmq.asyncio.Context, table: PrincipalTable, on_denied):
        super().__init__(ctx)
        self.table = table
        self.on_denied = on_denied

    def start(self) -> None:
        super().start()
        self.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)

    def callback(self, domain: str, z85_key: bytes) -> bool:
        """The credentials check: is this key a principal's?"""
        if self.table.by_key(z85_key.decode()) is not None:
            return True
        self.on_denied(z85_key.decode())
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        principal = self.table.by_key(z85.encode(client_public_key).decode())
        return principal.name if principal else ""


def secure(sock: zmq.Socket, url: str, table: PrincipalTable) -> None:
    """Make `sock` (a ROUTER not yet bound) serve only proven principals at `url`."""
    if url.startswith("tcp://"):
        sock.curve_server = True
        sock.curve_secretkey = table.kernel_secret.encode()
        sock.curve_publickey = table.kernel_public.encode()
        sock.zap_domain = ZAP_DOMAIN.encode()
    elif url.startswith("ipc://"):
        folder = Path(url[len("ipc://"):]).parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = stat.S_IMODE(folder.stat().st_mode)
        if folder.stat().st_uid != os.getuid() or mode & 0o077:
            raise AuthError(f"the socket's folder {folder} is {oct(mode)} and owned by uid {folder.stat().st_uid}: "
                            f"other users could connect as the operator. Use a folder of your own that is 0700 "
                            f"(chmod 700 {folder}), or the default socket")
    else:
        raise AuthError(f"cannot serve '{url}': use ipc://PATH (this machine's operator) or tcp://HOST:PORT (CurveZMQ)")


def principal_of(frame: zmq.Frame, url: str) -> str:
    """The principal a received message came from, as the transport proved it."""
    if url.startswith("ipc://"):
        return OPERATOR
    return frame.get("User-Id") or ""
