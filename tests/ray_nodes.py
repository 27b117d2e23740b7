"""A Ray cluster of real nodes for tests: each node is its own `ray start --block` process tree, started
in a session of its own (setsid) under `timeout` (so none outlives a crashed test run), on a loopback
address of its own (Ray advertises the machine's routable address unless told one), with the resources
it is given; a node is stopped by killing its process group, as a machine that dies. Everything it
made goes with the cluster: processes and Ray's temp folder.

    nodes = RayNodes()
    head = nodes.start_head("127.0.0.2", num_cpus=1)
    ray.init(address=nodes.address, _node_ip_address="127.0.0.2")
    worker = nodes.add_node("127.0.0.3", num_cpus=1, resources={"llmos-worker": 1})
    nodes.remove_node(worker)
    nodes.shutdown()
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

from llmos.userland.testing import free_tcp_port

LIFETIME_S = 1800        # `timeout` ends a node a test run forgot
START_TIMEOUT_S = 120
# A killed node sends no goodbye: the head notices it by its missed health checks, within about 2 s here
# (Ray's defaults take half a minute, longer than the streams the tests cut short).
FAST_HEALTH_CHECKS = {"RAY_health_check_initial_delay_ms": "0", "RAY_health_check_period_ms": "500",
                      "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@dataclass
class RayNode:
    ip: str
    proc: subprocess.Popen
    log: str

    @property
    def node_id(self) -> str:
        """Ray's id of this node (the driver process must have called ray.init)."""
        import ray
        for node in ray.nodes():
            if node["Alive"] and node["NodeManagerAddress"] == self.ip:
                return node["NodeID"]
        raise LookupError(f"no live Ray node at {self.ip}")


class RayNodes:
    def __init__(self):
        # short: Ray's unix sockets live under it, and their paths must stay under 108 bytes
        self.temp_dir = tempfile.mkdtemp(prefix="rn-", dir="/tmp")
        self.address = ""
        self.head: RayNode | None = None
        self.worker_nodes: list[RayNode] = []

    def start_head(self, ip: str, num_cpus: int = 1) -> RayNode:
        port = free_tcp_port()
        self.head = self._start(ip, num_cpus, {}, ["--head", f"--port={port}", "--include-dashboard=false",
                                                     f"--temp-dir={self.temp_dir}", "--disable-usage-stats"])
        self.address = f"{ip}:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(ip, port):
            self._check(self.head, deadline)
            time.sleep(0.2)
        return self.head

    def add_node(self, ip: str, num_cpus: int = 1, resources: dict | None = None) -> RayNode:
        """A node joining the head; returns once the cluster counts it alive (ask after ray.init)."""
        node = self._start(ip, num_cpus, resources or {}, [f"--address={self.address}"])
        self.worker_nodes.append(node)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._alive(ip):
            self._check(node, deadline)
            time.sleep(0.5)
        return node

    def remove_node(self, node: RayNode) -> None:
        """The node dies at once: its whole process tree is killed."""
        _kill_group(node.proc)
        self.worker_nodes.remove(node)

    def shutdown(self) -> None:
        for node in [*self.worker_nodes, *([self.head] if self.head else [])]:
            _kill_group(node.proc)
        self.worker_nodes, self.head = [], None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _start(self, ip: str, num_cpus: int, resources: dict, args: list[str]) -> RayNode:
        log = os.path.join(self.temp_dir, f"node-{ip}.log")
        command = ["setsid", "timeout", "--signal=KILL", str(LIFETIME_S), shutil.which("ray") or "ray", "start",
                   "--block", f"--node-ip-address={ip}", f"--num-cpus={num_cpus}", "--num-gpus=0",
                   f"--resources={json.dumps(resources)}", *args]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **FAST_HEALTH_CHECKS}
        with open(log, "ab") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        return RayNode(ip, proc, log)

    @staticmethod
    def _alive(ip: str) -> bool:
        import ray
        return any(n["Alive"] and n["NodeManagerAddress"] == ip for n in ray.nodes())

    @staticmethod
    def _check(node: RayNode, deadline: float) -> None:
        if node.proc.poll() is not None or time.monotonic() > deadline:
            with open(node.log, errors="replace") as f:
                tail = f.read()[-3000:]
            _kill_group(node.proc)
            raise RuntimeError(f"Ray node {node.ip} did not start:\n{tail}")


def _accepts(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


def _kill_group(proc: subprocess.Popen) -> None:
    """setsid made the node a session and group of its own: killing the group takes every process."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
