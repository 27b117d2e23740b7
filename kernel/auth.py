"""Transport authentication: who is at the other end of a connection, proved before any frame.

- tcp:// is CurveZMQ or nothing. The ZAP handler (pyzmq's asyncio authenticator, started
  before bind) admits only public keys in the principal table, and stamps each message with
  the key the handshake proved as ZeroMQ's User-Id. Whose key that is gets looked up in the
  current table for every frame, so a key rotated or removed stops working on the connections it
  already opened too: their frames name no principal, and the dispatcher refuses them all.
  A kernel told to serve tcp without keys refuses to boot.
- ipc:// is the operator's: the socket file is made 0600 (by the umask at bind) inside a 0700
  folder, so only the uid that booted the kernel can connect, and that uid is `operator`.

Either way the kernel reads the principal off the connection (`principal_of`), never a frame.

Drivers on a Ray cluster connect to the kernel's driver socket over tcp, CurveZMQ too, in a ZAP
domain of their own (DRIVER_ZAP_DOMAIN): each driver actor gets a key pair of its own at launch,
for one device, and the handler admits only those keys on that domain, so a client key never
passes as a driver's, nor a driver key as a client's. The User-Id it stamps is the key itself:
the supervisor takes a device's messages only from the launch that serves it now.
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
DRIVER_ZAP_DOMAIN = "llmos-driver"


class AuthError(RuntimeError):
    """The socket cannot be served safely; the message says how to set it up."""


class PrincipalAuthenticator(AsyncioAuthenticator):
    """Admits CURVE clients whose key is a principal's, and names the connection after it."""

    def __init__(self, ctx: zmq.asyncio.Context, table: PrincipalTable, on_denied,
                 drivers: "DriverKeys | None" = None):
        super().__init__(ctx)
        self.table = table
        self.on_denied = on_denied
        self.drivers = drivers

    def start(self) -> None:
        super().start()
        self.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)
        if self.drivers is not None:
            self.configure_curve_callback(DRIVER_ZAP_DOMAIN, credentials_provider=self.drivers)

    def callback(self, domain: str, z85_key: bytes) -> bool:
        """The credentials check: is this key a principal's?"""
        if self.table.by_key(z85_key.decode()) is not None:
            return True
        self.on_denied(z85_key.decode())
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The proved key itself, never a name: a name would outlive a rotation on a live connection.
        (Called only for a key its domain's callback admitted; a driver's key names its launch.)"""
        return z85.encode(client_public_key).decode()


class DriverKeys:
    """The driver socket's server key pair, and one client key pair per remote driver, valid
    while that driver runs: its public key names the one device it may serve."""

    def __init__(self, on_denied=lambda key: None):
        public, secret = zmq.curve_keypair()
        self.server_public, self.server_secret = public.decode(), secret.decode()
        self._device_by_key: dict[str, str] = {}
        self.on_denied = on_denied

    def issue(self, device: str) -> tuple[str, str]:
        """A fresh (public, secret) pair for the driver about to serve `device`; its older ones stop working."""
        self.revoke(device)
        public, secret = zmq.curve_keypair()
        self._device_by_key[public.decode()] = device
        return public.decode(), secret.decode()

    def revoke(self, device: str) -> None:
        for key in [k for k, d in self._device_by_key.items() if d == device]:
            del self._device_by_key[key]

    def forget(self, public_key: str) -> None:
        """The driver holding this key ended: the key admits nobody from now on."""
        self._device_by_key.pop(public_key, None)

    def device_of(self, public_key: str) -> str | None:
        return self._device_by_key.get(public_key)

    def callback(self, domain: str, z85_key: bytes) -> bool:
        """The ZAP check on the driver domain: is this a key the kernel gave a driver it launched?"""
        if self.device_of(z85_key.decode()) is not None:
            return True
        self.on_denied(z85_key.decode())
        return False

    def secure(self, sock: zmq.Socket) -> None:
        """Make `sock` (before a tcp bind) admit only the drivers' keys."""
        sock.curve_server = True
        sock.curve_secretkey = self.server_secret.encode()
        sock.curve_publickey = self.server_public.encode()
        sock.zap_domain = DRIVER_ZAP_DOMAIN.encode()


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


def principal_of(frame: zmq.Frame, url: str, table: PrincipalTable) -> str:
    """The principal a received message came from: whose the key its connection proved is now.
    '' when that key is no principal's any more (rotated or removed since the handshake)."""
    if url.startswith("ipc://"):
        return OPERATOR
    principal = table.by_key(frame.get("User-Id") or "")
    return principal.name if principal is not None else ""


class RevokedConnections:
    """Connections still open on a key that was revoked: each is reported once (to the audit log),
    however many frames it sends; the memory of which were reported is bounded."""

    def __init__(self, on_revoked, limit: int = 4096):
        self.on_revoked = on_revoked        # (connection, public key)
        self.limit = limit
        self._reported: dict[bytes, None] = {}    # insertion-ordered: the oldest is forgotten first

    def refused(self, connection: bytes, public_key: str) -> None:
        if connection in self._reported:
            return
        if len(self._reported) >= self.limit:
            del self._reported[next(iter(self._reported))]
        self._reported[connection] = None
        self.on_revoked(connection, public_key)


def proved_key(frame: zmq.Frame) -> str:
    """The CurveZMQ key a remote driver's connection proved (its User-Id); '' over ipc."""
    try:
        return frame.get("User-Id") or ""
    except zmq.ZMQError:      # no User-Id: it came over the ipc socket
        return ""
