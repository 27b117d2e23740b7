"""The one way the kernel's tables reach drivers: send one a message, look at its handle.

The tables are built before the supervisor exists (it binds the drivers' socket when the kernel
starts), so they are handed this port instead, and the kernel plugs the supervisor into it at
start. Before that, or for a device it does not supervise, a send is refused (False), as a send
to a child being restarted is: the caller already handles that case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmos.specs.channel import DriverMessage

if TYPE_CHECKING:
    from .supervisor import DriverHandle, Supervisor


class DriverPort:
    def __init__(self) -> None:
        self._supervisor: "Supervisor | None" = None

    def attach(self, supervisor: "Supervisor") -> None:
        self._supervisor = supervisor

    @property
    def drivers(self) -> dict[str, "DriverHandle"]:
        """Every supervised driver by device (empty before the kernel starts)."""
        return self._supervisor.drivers if self._supervisor is not None else {}

    def get(self, device: str) -> "DriverHandle | None":
        return self.drivers.get(device)

    def up(self, device: str) -> "DriverHandle | None":
        """The device's driver if it is up and has said what it can do (its Hello); else None."""
        drv = self.drivers.get(device)
        return drv if drv is not None and drv.state == "up" and drv.hello is not None else None

    def send(self, device: str, msg: DriverMessage) -> bool:
        """Send without waiting; False if no driver is there to take it now."""
        return self._supervisor is not None and self._supervisor.send(device, msg)
