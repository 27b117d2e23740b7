"""Audit lines forwarded to the local syslog ([audit] syslog), for operators who need a copy off the box.

Someone who can write the state dir can cut the audit log and its head file back together (see
specs/auditlog.py); a copy the syslog daemon has already sent elsewhere is out of their reach. The
forwarding must never hurt the kernel: the socket is non-blocking (a stalled syslog daemon would
otherwise stall the kernel's one event loop), and a line syslog cannot take is dropped and counted
in the kernel's log, never raised.
"""

from __future__ import annotations

import logging
from logging.handlers import SysLogHandler

from . import logs

log = logs.get("llmos.audit")

DEFAULT_SYSLOG = "/dev/log"          # `[audit] syslog = true`
DEFAULT_FACILITY = "authpriv"        # where syslog keeps what is about authority
FACILITIES = SysLogHandler.facility_names
IDENT = "llmos-audit: "


class _QuietSysLogHandler(SysLogHandler):
    """SysLogHandler whose socket never blocks, and whose failures are counted rather than printed."""

    dropped = 0

    def _connect_unixsocket(self, address):      # also called to reconnect after a failed send
        super()._connect_unixsocket(address)
        self.socket.setblocking(False)

    def handleError(self, record) -> None:
        self.dropped += 1


class SyslogSink:
    def __init__(self, address: str, facility: str = DEFAULT_FACILITY):
        self.address = address
        self.reported = 0
        self.handler: _QuietSysLogHandler | None = None
        try:
            self.handler = _QuietSysLogHandler(address=address, facility=FACILITIES[facility])
            self.handler.ident = IDENT
        except Exception as exc:
            log.warning("audit.syslog_failed", address=address, error=str(exc))

    def send(self, line: str) -> None:
        if self.handler is None:
            return
        try:
            self.handler.emit(logging.LogRecord("llmos.audit", logging.INFO, __file__, 0, line, None, None))
        except Exception:
            self.handler.dropped += 1
        if self.handler.dropped > self.reported:      # the first drop, then every thousandth
            if self.reported == 0 or self.handler.dropped - self.reported >= 1000:
                log.warning("audit.syslog_dropped", address=self.address, dropped=self.handler.dropped)
                self.reported = self.handler.dropped

    def close(self) -> None:
        if self.handler is not None:
            try:
                self.handler.close()
            except Exception:
                pass
