"""Drivers on a Ray cluster (`llmos boot --ray ADDRESS`): where they go, how they start, nodes
that come and go. The driver protocol is unchanged; only the way to the driver differs.

At boot the kernel joins the cluster (ray.init) and, for each alive node, asks Ray for one driver
actor per GPU (`num_gpus`), or one CPU driver on a node without GPUs (`num_cpus`), pinned to that
node (NodeAffinitySchedulingStrategy, hard). Their device names continue the local numbering
(cuda:N, cpu:N), and `devices` shows each one's node. Each actor runs the driver host
(drivers/ray_actor.py, built on its node by module name: the kernel never imports drivers/) and
connects to the kernel's driver socket over tcp, CurveZMQ, with a key pair issued for that launch
and that device alone (kernel/auth.py DriverKeys).

To the supervisor an actor is a child like a local process (ActorLauncher, ActorChild): its exit is
the end of its run() ObjectRef (a dead actor, process or node raises: a crash), kill is ray.kill,
restarts take the same back-off. A watcher polls ray.nodes(): a new alive node adds devices; a dead
one takes its devices down at once, as crashes first, so what ran there resumes on a replica.

Ray is imported here only, and this module only when the kernel is booted with --ray.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from typing import TYPE_CHECKING, Callable

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from llmos.specs.channel import device_kind

from . import logs
from .auth import DriverKeys
from .config import split_listen
from .devices import DeviceLimit
from .supervisor import ChildGone, DriverHandle

if TYPE_CHECKING:
    from .config import Settings
    from .devices import Devices
    from .supervisor import Supervisor

log = logs.get("llmos.ray")

NODE_POLL_S = 3.0
NAMESPACE = "llmos"
DRIVER_ACTOR_MODULE = "llmos.drivers.ray_actor"      # its DriverActor is what runs on the node


class DriverHost:
    """The Ray actor class: on its node, it builds the driver's DriverActor by module name."""

    def __init__(self, **kwargs):
        self.actor = importlib.import_module(DRIVER_ACTOR_MODULE).DriverActor(**kwargs)

    def run(self) -> str:
        return self.actor.run()


class ActorChild:
    """A driver actor as the supervisor's Child: it has ended when its run() has (code 0), or when
    Ray says it cannot (code 1: the actor, its process or its node died, or it could not be placed)."""

    pid = None       # its process is on another machine: `devices` shows the pid its driver says

    def __init__(self, actor, device: str, on_end):
        self.actor = actor
        self.device = device
        self.returncode: int | None = None
        self._ended = asyncio.ensure_future(self._run(actor.run.remote(), on_end))

    async def _run(self, ref, on_end) -> int:
        try:
            await asyncio.wrap_future(ref.future())
            self.returncode = 0
        except Exception as exc:      # RayActorError and its kinds
            self.returncode = 1
            log.warning("ray.actor_ended", device=self.device, error=str(exc).strip().splitlines()[0][:300])
        finally:
            self.kill()               # a returned actor would keep holding its GPU or CPUs
            on_end()
        return self.returncode

    async def wait(self) -> int:
        return await asyncio.shield(self._ended)

    def kill(self) -> None:
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception:             # gone already, or Ray is shutting down
            pass


class ActorLauncher:
    """Launches one device's driver actor, pinned to one node."""

    def __init__(self, drivers: "RayDrivers", node: str, num_gpus: float):
        self.drivers = drivers
        self.node = node
        self.num_gpus = num_gpus
        self.launches = 0

    async def launch(self, drv: DriverHandle) -> ActorChild:
        cluster = self.drivers
        if self.node in cluster.dead:
            raise ChildGone(f"its node {self.node} left the Ray cluster")
        public, secret = cluster.keys.issue(drv.device)
        drv.proof = public
        self.launches += 1
        actor = cluster.actor_class.options(
            num_cpus=cluster.settings.num_cpus_per_driver, num_gpus=self.num_gpus, max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(self.node, soft=False),
            name=f"llmos-{os.getpid()}-{drv.device}-{self.launches}", namespace=NAMESPACE,
        ).remote(device=drv.device, connect=cluster.connect, keys=(public, secret, cluster.keys.server_public),
                 dtype=cluster.dtype)
        return ActorChild(actor, drv.device, lambda: cluster.keys.forget(public))


class RayDrivers:
    """The kernel's side of a Ray cluster: joins it, places driver actors on its nodes, watches them."""

    def __init__(self, settings: "Settings", supervisor: "Supervisor", devices: "Devices", keys: DriverKeys,
                 spawn: Callable[..., asyncio.Task]):
        self.settings = settings.ray
        self.dtype = settings.dtype             # what drivers compute in, as the local ones do
        self.supervisor = supervisor
        self.devices = devices
        self.spawn = spawn
        self.keys = keys
        self.actor_class = None
        self.connect = ""                       # where actors reach the driver socket
        self.placed: dict[str, list[str]] = {}  # node id -> its devices
        self.dead: set[str] = set()             # nodes Ray reported dead

    async def join(self) -> None:
        """ray.init off the loop's thread: in the main thread it would take SIGTERM from the kernel."""
        await asyncio.to_thread(ray.init, address=self.settings.address, namespace=NAMESPACE,
                                logging_level=logging.WARNING, **self._node_ip())
        self.actor_class = ray.remote(DriverHost)
        log.info("ray.joined", address=self.settings.address)

    def _node_ip(self) -> dict:
        """The kernel joins the cluster at the address it listens on, when `[ray] listen` names one: Ray
        otherwise takes the machine's routable address, which a cluster on loopback (127.0.0.2 and up,
        as the tests run it) does not know."""
        host = split_listen(self.settings.listen)[0] if self.settings.listen else ""
        return {"_node_ip_address": host} if host and host not in ("0.0.0.0", "::", "*", "localhost") else {}

    async def start(self) -> None:
        """Open the tcp driver socket, place drivers on every alive node, then watch for changes."""
        host, port = split_listen(self.settings.listen) if self.settings.listen else (None, 0)
        host = host or ray.util.get_node_ip_address()
        bound = self.supervisor.listen_tcp(f"tcp://{_url_host(host)}:{port or '*'}", self.keys.secure)
        advertised = ray.util.get_node_ip_address() if host in ("0.0.0.0", "::", "*") else host
        self.connect = f"tcp://{_url_host(advertised)}:{bound.rsplit(':', 1)[1]}"
        log.info("ray.driver_socket", bound=bound, connect=self.connect)
        await self.reconcile(await asyncio.to_thread(ray.nodes))
        self.spawn(self._watch(), "ray-nodes")

    async def reconcile(self, nodes: list[dict]) -> None:
        """Devices for nodes new and alive; down for nodes that died."""
        for node in nodes:
            node_id = node["NodeID"]
            if not node.get("Alive"):
                if node_id in self.placed and node_id not in self.dead:
                    await self._lost(node_id)
                continue
            if node_id not in self.placed:
                await self._place(node_id, node.get("Resources", {}))

    async def _place(self, node: str, resources: dict) -> None:
        s = self.settings
        gpus = int(resources.get("GPU", 0) // s.num_gpus_per_driver)
        if gpus:
            kinds, num_gpus = ["cuda"] * gpus, s.num_gpus_per_driver
        elif resources.get("CPU", 0) >= s.num_cpus_per_driver:
            kinds, num_gpus = ["cpu"], 0
        else:
            kinds, num_gpus = [], 0        # a node with no room for a driver (a head kept free)
        self.placed[node] = []
        launcher = ActorLauncher(self, node, num_gpus)
        for kind in kinds:
            device = self._next_name(kind)
            try:
                self.devices.add(device, node=node)
            except DeviceLimit as exc:
                log.error("ray.device_refused", node=node, reason=str(exc))
                return
            self.placed[node].append(device)
            log.info("ray.device_placed", device=device, node=node)
            await self.supervisor.add(device, launcher)

    async def _lost(self, node: str) -> None:
        self.dead.add(node)
        for device in self.placed[node]:
            log.warning("ray.node_lost", node=node, device=device)
            await self.supervisor.lost(device, f"its node {node} left the Ray cluster")

    def _next_name(self, kind: str) -> str:
        """The next free index of the kind after every device so far (local `cpu` counts as cpu:0)."""
        taken = [int(d.partition(":")[2] or 0) for d in self.devices.names if device_kind(d) == kind]
        return f"{kind}:{max(taken) + 1 if taken else 0}"

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(NODE_POLL_S)
            try:
                nodes = await asyncio.to_thread(ray.nodes)
            except Exception as exc:       # the head is unreachable for now: keep what runs
                log.warning("ray.nodes_failed", error=str(exc))
                continue
            await self.reconcile(nodes)

    def close(self) -> None:
        """After the supervisor stopped the actors: leave the cluster."""
        if ray.is_initialized():
            ray.shutdown()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
