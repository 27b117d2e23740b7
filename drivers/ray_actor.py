"""A driver as a Ray actor, on whichever node of the cluster the kernel placed it.

The kernel (kernel/raydrivers.py) asks Ray for one of these per GPU of a node, or one on a node
without GPUs, and builds it from this module by name, as it starts a local driver with
`python -m llmos.drivers.host`. run() is the driver host's own loop (host.serve), connected to
the kernel's driver socket over tcp with the CurveZMQ key pair the kernel issued this actor;
it returns when the kernel says stop, and dies with its process or node (the kernel's crash).

The kernel names the device in its own numbering (cuda:3, cpu:2): that is the routing id its
key was issued for. On its node, Ray shows the actor only the GPU it was given, as cuda:0.
"""

from __future__ import annotations

from llmos.specs.channel import device_kind


class DriverActor:
    def __init__(self, device: str, connect: str, keys: tuple[str, str, str], dtype: str = "auto"):
        """keys: this driver's public and secret key and the kernel's public key (z85)."""
        self.device = device
        self.connect = connect
        self.keys = tuple(keys)
        self.dtype = dtype

    def local_device(self) -> str:
        return "cuda:0" if device_kind(self.device) == "cuda" else "cpu"

    def run(self) -> str:
        """Serve the kernel until it says stop."""
        from .host import serve

        serve(self.connect, self.device, self.dtype, curve=self.keys, local_device=self.local_device())
        return f"driver for {self.device} stopped"
