"""Device-memory accounting: pure bookkeeping of what each device holds, no torch.

Every byte the kernel lets onto a device is recorded here first, so admission (`can_fit`)
is decided before a driver allocates anything and nothing runs out of memory mid-way.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DeviceAccount:
    name: str
    kind: str                     # "cpu" | "cuda"
    total_bytes: int              # the budget the kernel manages on this device
    models: dict[str, int] = field(default_factory=dict)        # model -> weights + its KV pool
    reservations: dict[int, tuple[int, int]] = field(default_factory=dict)  # handle -> (pid, bytes)

    @property
    def models_bytes(self) -> int:
        return sum(self.models.values())

    @property
    def reserved_bytes(self) -> int:
        return sum(b for _, b in self.reservations.values())

    @property
    def used_bytes(self) -> int:
        return self.models_bytes + self.reserved_bytes

    @property
    def free_bytes(self) -> int:
        return self.total_bytes - self.used_bytes

    def can_fit(self, nbytes: int) -> bool:
        return nbytes <= self.free_bytes


class DeviceMemory:
    """All devices' accounts, and reservation handles unique across devices."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceAccount] = {}
        self._next_handle = 1

    def add_device(self, name: str, kind: str, total_bytes: int) -> DeviceAccount:
        account = self.devices.get(name)
        if account is None:
            account = self.devices[name] = DeviceAccount(name, kind, total_bytes)
        else:
            account.total_bytes = total_bytes
        return account

    def charge_model(self, device: str, model: str, nbytes: int) -> None:
        self.devices[device].models[model] = nbytes

    def release_model(self, device: str, model: str) -> None:
        account = self.devices.get(device)     # none yet if its driver never came up
        if account is not None:
            account.models.pop(model, None)

    def reserve(self, device: str, pid: int, nbytes: int) -> int:
        handle = self._next_handle
        self._next_handle += 1
        self.devices[device].reservations[handle] = (pid, nbytes)
        return handle

    def release(self, device: str, handle: int) -> int:
        _, nbytes = self.devices[device].reservations.pop(handle)
        return nbytes
